//! Decoded, cropped photos kept in memory (and optionally on disk), so that epochs never decode
//! a JPEG twice.

use super::cub::{DataError, Dataset};
use super::preprocess::{ImageSize, load_photo};
use crate::hash::Fnv64;
use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How to load a dataset's photos.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Leave out missing or undecodable images (and report them) instead of failing.
    pub skip_bad_images: bool,
    /// Folder for the decoded-image cache; `None` keeps the images in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Number of decoding threads; 0 takes the number of available cores.
    pub threads: usize,
}

/// An image left out because it could not be used.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SkippedImage {
    pub path: PathBuf,
    pub reason: String,
}

/// The outcome of loading besides the images.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub skipped: Vec<SkippedImage>,
    /// Whether the pixels came from the disk cache instead of the photo files.
    pub from_cache: bool,
}

/// Cropped RGB photos of a set of classes, each `side x side x 3` bytes in HWC order.
#[derive(Clone, Debug)]
pub struct ImageStore {
    pub size: ImageSize,
    /// Class folder names, in dataset order.
    pub class_names: Vec<String>,
    /// For each class, the indices of its images in this store.
    pub class_images: Vec<Vec<usize>>,
    /// The source file of each image.
    pub paths: Vec<PathBuf>,
    pixels: Vec<u8>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheIndex {
    key: String,
    /// For each source image in dataset order, its index in the pixel file or `None` if skipped.
    slots: Vec<Option<usize>>,
    skipped: Vec<SkippedImage>,
}

impl ImageStore {
    /// Decodes and crops every image of `dataset`, using `options.threads` threads, and calls
    /// `progress` with the number of images finished since its last call.
    ///
    /// # Errors
    /// A missing or undecodable image, unless `options.skip_bad_images` is set; an unreadable
    /// cache file.
    pub fn load(
        dataset: &Dataset,
        size: ImageSize,
        options: &LoadOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(ImageStore, LoadReport), DataError> {
        let sources: Vec<&Path> = dataset
            .classes
            .iter()
            .flat_map(|class| class.images.iter().map(PathBuf::as_path))
            .collect();
        let bytes_per_image = size.num_values();
        let key = cache_key(&sources, size);

        let cached = match &options.cache_dir {
            Some(dir) => read_cache(dir, &key, bytes_per_image)?,
            None => None,
        };
        let from_cache = cached.is_some();
        let (slots, skipped, pixels) = match cached {
            Some(cached) => {
                progress(sources.len() as u64);
                cached
            }
            None => {
                let (slots, skipped, pixels) = decode_all(&sources, size, options, progress)?;
                if let Some(dir) = &options.cache_dir {
                    // The cache only saves decoding time, so a folder that cannot be written
                    // costs a warning, not the run.
                    if let Err(error) = write_cache(dir, &key, &slots, &skipped, &pixels) {
                        log::warn!(
                            "{error}; continuing without the image cache (choose a writable --cache-dir, or --no-cache)"
                        );
                    }
                }
                (slots, skipped, pixels)
            }
        };
        if !skipped.is_empty() && !options.skip_bad_images {
            return Err(bad_images_error(&skipped));
        }

        let mut class_images = Vec::with_capacity(dataset.classes.len());
        let mut paths = Vec::new();
        let mut source_index = 0;
        for class in &dataset.classes {
            let mut indices = Vec::new();
            for path in &class.images {
                if let Some(slot) = slots[source_index] {
                    debug_assert_eq!(slot, paths.len());
                    indices.push(slot);
                    paths.push(path.clone());
                }
                source_index += 1;
            }
            class_images.push(indices);
        }

        let store = ImageStore {
            size,
            class_names: dataset.classes.iter().map(|c| c.name.clone()).collect(),
            class_images,
            paths,
            pixels,
        };
        Ok((
            store,
            LoadReport {
                skipped,
                from_cache,
            },
        ))
    }

    /// Returns a fingerprint of the class names and photo file names (not their folders, so a
    /// moved dataset keeps its fingerprint).
    pub fn fingerprint(&self) -> String {
        let mut hasher = Fnv64::default();
        for (name, images) in self.class_names.iter().zip(&self.class_images) {
            hasher.write(name.as_bytes());
            hasher.write_u8(0);
            for &index in images {
                let file = self.paths[index].file_name().unwrap_or_default();
                hasher.write(file.as_encoded_bytes());
                hasher.write_u8(0);
            }
        }
        format!("{:016x}", hasher.finish())
    }

    /// Returns the HWC bytes of image `index`.
    pub fn pixels(&self, index: usize) -> &[u8] {
        let length = self.size.num_values();
        &self.pixels[index * length..(index + 1) * length]
    }

    /// Returns the number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Returns whether the store contains no image.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

type Decoded = (Vec<Option<usize>>, Vec<SkippedImage>, Vec<u8>);

fn decode_all(
    sources: &[&Path],
    size: ImageSize,
    options: &LoadOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Decoded, DataError> {
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Vec<u8>, DataError>>>> =
        Mutex::new((0..sources.len()).map(|_| None).collect());

    std::thread::scope(|scope| {
        for _ in 0..threads.min(sources.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= sources.len() {
                        break;
                    }
                    let result = load_photo(sources[index], size).map(|image| image.into_raw());
                    results.lock().expect("decoder thread panicked")[index] = Some(result);
                    progress(1);
                }
            });
        }
    });

    let results = results.into_inner().expect("decoder thread panicked");
    let mut slots = Vec::with_capacity(sources.len());
    let mut skipped = Vec::new();
    let mut pixels = Vec::with_capacity(sources.len() * size.num_values());
    let mut kept = 0;
    for (path, result) in sources.iter().zip(results) {
        match result.expect("every index is decoded once") {
            Ok(bytes) => {
                pixels.extend_from_slice(&bytes);
                slots.push(Some(kept));
                kept += 1;
            }
            Err(error @ (DataError::MissingImage { .. } | DataError::BadImage { .. })) => {
                let reason = match &error {
                    DataError::BadImage { reason, .. } => reason.clone(),
                    _ => "file not found".to_string(),
                };
                skipped.push(SkippedImage {
                    path: path.to_path_buf(),
                    reason,
                });
                slots.push(None);
            }
            Err(other) => return Err(other),
        }
    }
    Ok((slots, skipped, pixels))
}

fn bad_images_error(skipped: &[SkippedImage]) -> DataError {
    let first = &skipped[0];
    let first = if first.reason == "file not found" {
        DataError::MissingImage {
            path: first.path.clone(),
        }
    } else {
        DataError::BadImage {
            path: first.path.clone(),
            reason: first.reason.clone(),
        }
    };
    if skipped.len() == 1 {
        first
    } else {
        DataError::ManyBadImages {
            count: skipped.len(),
            first: Box::new(first),
        }
    }
}

/// Hashes the image size and each source's path, length and modification time, so that any
/// change to the photos gives a new cache file. The version tag changes with the decoding
/// (v2 turns photos upright by their EXIF orientation).
fn cache_key(sources: &[&Path], size: ImageSize) -> String {
    let mut hasher = Fnv64::default();
    hasher.write(b"metairnet-image-cache-v2");
    hasher.write_u32(size.pixels());
    for path in sources {
        hasher.write(path.as_os_str().as_encoded_bytes());
        if let Ok(metadata) = std::fs::metadata(path) {
            hasher.write_u64(metadata.len());
            if let Ok(modified) = metadata.modified()
                && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
            {
                hasher.write_u128(since.as_nanos());
            }
        }
    }
    format!("{:016x}-{}px", hasher.finish(), size.pixels())
}

fn read_cache(dir: &Path, key: &str, bytes_per_image: usize) -> Result<Option<Decoded>, DataError> {
    let index_path = dir.join(format!("{key}.json"));
    let pixels_path = dir.join(format!("{key}.pixels"));
    if !index_path.is_file() || !pixels_path.is_file() {
        return Ok(None);
    }
    let cache_error = |path: &Path, reason: String| DataError::Cache {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(&index_path)
        .map_err(|e| cache_error(&index_path, e.to_string()))?;
    let index: CacheIndex =
        serde_json::from_str(&text).map_err(|e| cache_error(&index_path, e.to_string()))?;
    let pixels =
        std::fs::read(&pixels_path).map_err(|e| cache_error(&pixels_path, e.to_string()))?;
    let kept = index.slots.iter().filter(|slot| slot.is_some()).count();
    if index.key != key || pixels.len() != kept * bytes_per_image {
        return Err(cache_error(
            &pixels_path,
            format!(
                "expected {} bytes for {kept} images, found {}",
                kept * bytes_per_image,
                pixels.len()
            ),
        ));
    }
    Ok(Some((index.slots, index.skipped, pixels)))
}

/// Writes the cache through temporary files and renames, so a crash never leaves a partial
/// cache entry under the final name.
fn write_cache(
    dir: &Path,
    key: &str,
    slots: &[Option<usize>],
    skipped: &[SkippedImage],
    pixels: &[u8],
) -> Result<(), DataError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |error| DataError::Write { path, error }
    };
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let index = CacheIndex {
        key: key.to_string(),
        slots: slots.to_vec(),
        skipped: skipped.to_vec(),
    };
    let pixels_path = dir.join(format!("{key}.pixels"));
    write_atomically(&pixels_path, pixels).map_err(io_error(&pixels_path))?;
    let index_path = dir.join(format!("{key}.json"));
    let json = serde_json::to_vec(&index).expect("cache index serialises");
    write_atomically(&index_path, &json).map_err(io_error(&index_path))?;
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk and renames it over
/// `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use image::{DynamicImage, Rgb, RgbImage};

    fn make_dataset(root: &Path) {
        for (class, count) in [("001.A", 3), ("002.B", 2)] {
            let folder = root.join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..count {
                let photo = RgbImage::from_fn(120, 90, |x, y| Rgb([x as u8, y as u8, i * 40]));
                DynamicImage::ImageRgb8(photo)
                    .save(folder.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }

    #[test]
    fn store_loads_and_caches() {
        let data = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        make_dataset(data.path());
        let dataset = Dataset::open(data.path()).unwrap();
        let options = LoadOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            threads: 2,
            ..Default::default()
        };

        let (first, report) =
            ImageStore::load(&dataset, ImageSize::S84, &options, &|_| {}).unwrap();
        assert!(!report.from_cache);
        assert_eq!(first.len(), 5);
        assert_eq!(first.class_images, vec![vec![0, 1, 2], vec![3, 4]]);
        assert_eq!(first.pixels(4).len(), 84 * 84 * 3);

        let (second, report) =
            ImageStore::load(&dataset, ImageSize::S84, &options, &|_| {}).unwrap();
        assert!(report.from_cache);
        assert_eq!(second.pixels(2), first.pixels(2));
    }

    #[test]
    fn bad_file_is_error_or_skipped() {
        let data = tempfile::tempdir().unwrap();
        make_dataset(data.path());
        let bad = data.path().join("001.A/broken.jpg");
        std::fs::write(&bad, b"not a jpeg").unwrap();
        let dataset = Dataset::open(data.path()).unwrap();

        let strict = LoadOptions::default();
        let error = ImageStore::load(&dataset, ImageSize::S84, &strict, &|_| {}).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("broken.jpg"), "{message}");
        assert!(message.contains("--skip-bad-images"), "{message}");

        let lenient = LoadOptions {
            skip_bad_images: true,
            ..Default::default()
        };
        let (store, report) =
            ImageStore::load(&dataset, ImageSize::S84, &lenient, &|_| {}).unwrap();
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].path, bad);
        assert_eq!(store.len(), 5);
        assert_eq!(store.class_images[0].len(), 3);
    }
}

#[cfg(test)]
impl ImageStore {
    /// Builds a store of blank images with the given class layout, for sampler tests.
    pub(crate) fn from_parts_for_tests(
        size: ImageSize,
        class_names: Vec<String>,
        class_images: Vec<Vec<usize>>,
    ) -> ImageStore {
        let count = class_images.iter().map(Vec::len).sum::<usize>();
        ImageStore {
            size,
            class_names,
            class_images,
            paths: (0..count)
                .map(|i| PathBuf::from(format!("{i}.jpg")))
                .collect(),
            pixels: vec![0; count * size.num_values()],
        }
    }
}

#[cfg(test)]
impl ImageStore {
    /// Builds a store from raw HWC pixels, `class_images` naming each image's index, for tests
    /// that train on synthetic photos.
    ///
    /// # Panics
    /// When `pixels` does not hold one `side x side x 3` image per index.
    pub(crate) fn from_pixels_for_tests(
        size: ImageSize,
        class_names: Vec<String>,
        class_images: Vec<Vec<usize>>,
        pixels: Vec<u8>,
    ) -> ImageStore {
        let count = class_images.iter().map(Vec::len).sum::<usize>();
        assert_eq!(
            pixels.len(),
            count * size.num_values(),
            "{count} images of {} pixels need {} bytes",
            size.pixels(),
            count * size.num_values()
        );
        ImageStore {
            pixels,
            ..ImageStore::from_parts_for_tests(size, class_names, class_images)
        }
    }
}
