//! Seeded N-way K-shot Q-query episode sampling.
//!
//! Episode `i` of a sampler is drawn from stream `i` of a ChaCha8 generator seeded with the
//! seed, so it depends on nothing else. The same seed gives the same episodes on every device
//! and in every order, and a resumed run gets exactly the episodes it would have had.

use crate::data::{DataError, ImageStore, Split, write_normalized_chw};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape of an episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpisodeShape {
    /// Classes per episode (N).
    pub n_way: usize,
    /// Support images per class (K).
    pub n_shot: usize,
    /// Query images per class (Q).
    pub n_query: usize,
}

impl Default for EpisodeShape {
    fn default() -> Self {
        EpisodeShape {
            n_way: 5,
            n_shot: 1,
            n_query: 16,
        }
    }
}

impl EpisodeShape {
    /// Returns the number of images in an episode, support and query together.
    pub fn num_images(&self) -> usize {
        self.n_way * (self.n_shot + self.n_query)
    }
}

/// One episode: `n_way` classes of the store and the indices of their images. Indices are in
/// class-major order: all support images of the first class, then of the second, and so on, and
/// the queries likewise.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    pub classes: Vec<usize>,
    pub support: Vec<usize>,
    pub query: Vec<usize>,
    /// Whether each image (support first, then query) is mirrored; all false without
    /// augmentation.
    pub flips: Vec<bool>,
}

impl Episode {
    /// Returns the episode label (0..n_way) of each query.
    pub fn query_labels(&self, shape: &EpisodeShape) -> Vec<i64> {
        (0..self.query.len())
            .map(|i| (i / shape.n_query) as i64)
            .collect()
    }

    /// Writes support then query images as normalised CHW floats, `[n_images, 3, side, side]`.
    pub fn images(&self, store: &ImageStore) -> Vec<f32> {
        let side = store.size.pixels() as usize;
        let per_image = store.size.num_values();
        let indices: Vec<usize> = self.support.iter().chain(&self.query).copied().collect();
        let mut values = vec![0.0f32; indices.len() * per_image];
        for (slot, (&image, &flip)) in indices.iter().zip(&self.flips).enumerate() {
            let out = &mut values[slot * per_image..(slot + 1) * per_image];
            write_normalized_chw(store.pixels(image), side, flip, out);
        }
        values
    }
}

/// Draws episodes from the classes of an [`ImageStore`].
#[derive(Clone, Debug)]
pub struct EpisodeSampler {
    shape: EpisodeShape,
    seed: u64,
    class_images: Vec<Vec<usize>>,
}

impl EpisodeSampler {
    /// Creates a sampler over every class of `store`.
    ///
    /// # Errors
    /// [`DataError::TooFewClasses`] when the store has fewer than `n_way` classes and
    /// [`DataError::TooFewImages`] naming the first class with fewer than `n_shot + n_query`
    /// images.
    pub fn new(
        store: &ImageStore,
        split: Split,
        shape: EpisodeShape,
        seed: u64,
    ) -> Result<Self, DataError> {
        if store.class_images.len() < shape.n_way {
            return Err(DataError::TooFewClasses {
                split,
                found: store.class_images.len(),
                needed: shape.n_way,
            });
        }
        let needed = shape.n_shot + shape.n_query;
        for (name, images) in store.class_names.iter().zip(&store.class_images) {
            if images.len() < needed {
                return Err(DataError::TooFewImages {
                    class: name.clone(),
                    count: images.len(),
                    needed,
                });
            }
        }
        Ok(EpisodeSampler {
            shape,
            seed,
            class_images: store.class_images.clone(),
        })
    }

    /// Returns the episode shape.
    pub fn shape(&self) -> EpisodeShape {
        self.shape
    }

    /// Draws episode `index`; with `augment`, each image is mirrored with probability 0.5.
    pub fn episode(&self, index: u64, augment: bool) -> Episode {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index);

        let shape = self.shape;
        let classes =
            rand::seq::index::sample(&mut rng, self.class_images.len(), shape.n_way).into_vec();
        let mut support = Vec::with_capacity(shape.n_way * shape.n_shot);
        let mut query = Vec::with_capacity(shape.n_way * shape.n_query);
        for &class in &classes {
            let images = &self.class_images[class];
            let picked =
                rand::seq::index::sample(&mut rng, images.len(), shape.n_shot + shape.n_query);
            let mut picked = picked.iter().map(|i| images[i]);
            support.extend(picked.by_ref().take(shape.n_shot));
            query.extend(picked);
        }
        let flips = (0..support.len() + query.len())
            .map(|_| augment && rng.random_bool(0.5))
            .collect();
        Episode {
            classes,
            support,
            query,
            flips,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageSize;

    fn store(counts: &[usize]) -> ImageStore {
        let mut class_images = Vec::new();
        let mut next = 0;
        for &count in counts {
            class_images.push((next..next + count).collect());
            next += count;
        }
        ImageStore::from_parts_for_tests(
            ImageSize::S84,
            counts
                .iter()
                .enumerate()
                .map(|(i, _)| format!("{i:03}.Bird"))
                .collect(),
            class_images,
        )
    }

    #[test]
    fn episode_is_deterministic_and_distinct() {
        let store = store(&[20, 20, 20, 20, 20, 20]);
        let sampler = EpisodeSampler::new(&store, Split::Base, EpisodeShape::default(), 7).unwrap();
        let first = sampler.episode(3, true);
        assert_eq!(first, sampler.episode(3, true));
        assert_ne!(first, sampler.episode(4, true));

        assert_eq!(first.classes.len(), 5);
        assert_eq!(first.support.len(), 5);
        assert_eq!(first.query.len(), 80);
        let mut all: Vec<usize> = first.support.iter().chain(&first.query).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 85, "support and query images must be distinct");
    }

    #[test]
    fn images_follow_class_order() {
        let store = store(&[20, 20, 20, 20, 20]);
        let shape = EpisodeShape {
            n_way: 5,
            n_shot: 2,
            n_query: 3,
        };
        let sampler = EpisodeSampler::new(&store, Split::Base, shape, 1).unwrap();
        let episode = sampler.episode(0, false);
        for (i, &image) in episode.query.iter().enumerate() {
            let class = episode.classes[i / 3];
            assert!(store.class_images[class].contains(&image));
        }
        for (i, &image) in episode.support.iter().enumerate() {
            let class = episode.classes[i / 2];
            assert!(store.class_images[class].contains(&image));
        }
        assert_eq!(
            episode.query_labels(&shape),
            vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
        );
        assert!(episode.flips.iter().all(|f| !f));
    }

    #[test]
    fn small_class_is_named() {
        let store = store(&[20, 20, 12, 20, 20]);
        let error =
            EpisodeSampler::new(&store, Split::Novel, EpisodeShape::default(), 0).unwrap_err();
        assert_eq!(
            error.to_string(),
            "class 002.Bird has 12 images but n_shot + n_query = 17; lower --n-shot or --n-query, add images to that class, or remove its folder"
        );
    }

    #[test]
    fn too_few_classes_is_error() {
        let store = store(&[20, 20, 20]);
        let error =
            EpisodeSampler::new(&store, Split::Val, EpisodeShape::default(), 0).unwrap_err();
        assert!(matches!(
            error,
            DataError::TooFewClasses {
                found: 3,
                needed: 5,
                ..
            }
        ));
    }
}
