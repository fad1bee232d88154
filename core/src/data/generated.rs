//! The generated images of every photo of an [`ImageStore`], decoded and cropped like the
//! photos themselves, so that episodes can draw them without decoding JPEGs.

use super::cub::DataError;
use super::preprocess::{ImageSize, load_photo};
use super::store::ImageStore;
use crate::generator::store::GeneratedStore;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A photo of the dataset with too few generated images.
#[derive(Debug, thiserror::Error)]
#[error(
    "{photo} has {found} generated images in {store}, fewer than the {needed} that n_aug requires; run `metairnet generate` on this dataset with --out {store}, or lower n_aug (--n-aug)"
)]
pub struct MissingGenerated {
    pub photo: PathBuf,
    pub store: PathBuf,
    pub found: usize,
    pub needed: usize,
}

/// Generated images, `side x side x 3` bytes each, grouped by the store image they belong to.
#[derive(Clone, Debug)]
pub struct GeneratedImages {
    pub size: ImageSize,
    /// First index and count of the generated images of each image of the photo store.
    ranges: Vec<(usize, usize)>,
    pixels: Vec<u8>,
}

impl GeneratedImages {
    /// Decodes the generated images of every photo of `photos`, found in `generated` by the
    /// photo's path relative to `dataset_root`, with `threads` threads (0: all cores).
    /// `store_root` is the store's folder, named in errors, and `progress` receives the number
    /// of images decoded since its last call.
    ///
    /// # Errors
    /// [`DataError::Generated`] for the first photo with fewer than `needed` generated images,
    /// and the decoding errors of [`load_photo`].
    pub fn load(
        photos: &ImageStore,
        dataset_root: &Path,
        generated: &GeneratedStore,
        store_root: &Path,
        needed: usize,
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<GeneratedImages, DataError> {
        let mut ranges = Vec::with_capacity(photos.len());
        let mut files: Vec<&Path> = Vec::new();
        for photo in &photos.paths {
            let relative = photo.strip_prefix(dataset_root).unwrap_or(photo);
            let found = generated.images_for(relative);
            if found.len() < needed {
                return Err(DataError::Generated(MissingGenerated {
                    photo: photo.clone(),
                    store: store_root.to_path_buf(),
                    found: found.len(),
                    needed,
                }));
            }
            ranges.push((files.len(), found.len()));
            files.extend(found.iter().map(PathBuf::as_path));
        }

        let size = photos.size;
        let per_image = size.num_values();
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut pixels = vec![0u8; files.len() * per_image];
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<DataError>> = Mutex::new(None);
        // Chunks of 64 images per claim keep the counter cheap; each thread writes only the
        // slices it claimed.
        const CHUNK: usize = 64;
        let slices: Vec<Mutex<&mut [u8]>> = pixels
            .chunks_mut(CHUNK * per_image)
            .map(Mutex::new)
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..threads.min(slices.len().max(1)) {
                scope.spawn(|| {
                    loop {
                        let chunk = next.fetch_add(1, Ordering::Relaxed);
                        if chunk >= slices.len() {
                            break;
                        }
                        let mut out = slices[chunk].lock().expect("decoder thread panicked");
                        let first = chunk * CHUNK;
                        let count = out.len() / per_image;
                        for (offset, path) in files[first..first + count].iter().enumerate() {
                            match load_photo(path, size) {
                                Ok(image) => out[offset * per_image..(offset + 1) * per_image]
                                    .copy_from_slice(image.as_raw()),
                                Err(error) => {
                                    failure
                                        .lock()
                                        .expect("decoder thread panicked")
                                        .get_or_insert(error);
                                    return;
                                }
                            }
                        }
                        progress(count as u64);
                    }
                });
            }
        });
        drop(slices);
        if let Some(error) = failure.into_inner().expect("decoder thread panicked") {
            return Err(error);
        }
        Ok(GeneratedImages {
            size,
            ranges,
            pixels,
        })
    }

    /// Returns the number of generated images of store image `image`.
    pub fn count(&self, image: usize) -> usize {
        self.ranges[image].1
    }

    /// Returns the HWC bytes of generated image `k` of store image `image`.
    ///
    /// # Panics
    /// When `k >= self.count(image)`.
    pub fn pixels(&self, image: usize, k: usize) -> &[u8] {
        let (first, count) = self.ranges[image];
        assert!(k < count, "image {image} has {count} generated images, not {k}");
        let length = self.size.num_values();
        let index = first + k;
        &self.pixels[index * length..(index + 1) * length]
    }

    /// Returns the number of generated images per photo, for every photo.
    pub fn counts(&self) -> Vec<usize> {
        self.ranges.iter().map(|&(_, count)| count).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, LoadOptions};
    use crate::generator::store::{sample_file_name, sample_folder};
    use image::{Rgb, RgbImage};

    #[test]
    fn generated_images_follow_their_photos() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("data");
        for (class, shade) in [("001.A", 10u8), ("002.B", 200)] {
            std::fs::create_dir_all(images.join(class)).unwrap();
            RgbImage::from_pixel(40, 30, Rgb([shade, 0, 0]))
                .save(images.join(class).join("p.jpg"))
                .unwrap();
        }
        let dataset = Dataset::open(&images).unwrap();
        let (photos, _) =
            ImageStore::load(&dataset, ImageSize::S84, &LoadOptions::default(), &|_| {}).unwrap();
        let out = dir.path().join("generated");
        for (class, shade) in [("001.A", 30u8), ("002.B", 220)] {
            let folder = sample_folder(&out, &Path::new(class).join("p.jpg"));
            std::fs::create_dir_all(&folder).unwrap();
            for k in 0..3 {
                RgbImage::from_pixel(32, 32, Rgb([0, shade, k as u8 * 50]))
                    .save(folder.join(sample_file_name(10, k)))
                    .unwrap();
            }
        }
        let store = GeneratedStore::open(&out).unwrap();
        let generated =
            GeneratedImages::load(&photos, &dataset.root, &store, &out, 2, 1, &|_| {}).unwrap();
        assert_eq!(generated.counts(), vec![3, 3]);
        let second = photos.class_images[1][0];
        let pixel = &generated.pixels(second, 2)[..3];
        assert!(pixel[1] > 200, "green of the second photo's store: {pixel:?}");
        assert!(pixel[2] > 80, "blue of generated image 2: {pixel:?}");

        let error = GeneratedImages::load(&photos, &dataset.root, &store, &out, 5, 1, &|_| {})
            .unwrap_err()
            .to_string();
        assert!(error.contains("has 3 generated images"), "{error}");
        assert!(error.contains("metairnet generate"), "{error}");
    }
}
