//! Turning a sampled episode into model inputs on the host: the photos, the generated images
//! each support photo draws, and the random draws of its support augmentation and Block Dropout.
//!
//! Every draw comes from a ChaCha8 stream selected by the episode index, so an episode gets the
//! same generated images, Mixup weight, noise and masks however often and in whatever order it
//! is prepared. A resumed run and every model scored on an episode therefore get the same draws.

use crate::data::{GeneratedImages, ImageStore, write_normalized_chw};
use crate::episodes::Episode;
use crate::model::{BlockDropoutConfig, EpisodeAugment, EpisodeInput, SupportAugment};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Separates the draws of this module from the episode sampler's, which uses the same seed.
const DRAW_SALT: u64 = 0x6d65_7461_6972_6e65;

/// The recipe for building a model's episodes.
#[derive(Clone, Debug)]
pub struct SupportPlan {
    /// The support augmentation.
    pub augment: SupportAugment,
    /// Extra entries per support image.
    pub copies: usize,
    /// The backbone's embedding size (the size of the `gaussian` noise rows).
    pub embedding_dim: usize,
    /// Block Dropout, in training only.
    pub block_dropout: Option<BlockDropoutConfig>,
    /// Seed of the draws.
    pub seed: u64,
}

/// An episode's inputs as host values, ready to go to a device.
#[derive(Clone, Debug)]
pub struct PreparedEpisode {
    /// The sampled episode.
    pub episode: Episode,
    /// `[n_support, 3, side, side]` normalised CHW values.
    pub support: Vec<f32>,
    /// `[n_query, 3, side, side]`.
    pub query: Vec<f32>,
    /// `[n_support * copies, 3, side, side]`, when the augmentation reads generated images.
    pub generated: Option<Vec<f32>>,
    /// The index of the generated image drawn for each of those rows.
    pub generated_choice: Vec<usize>,
    /// The support augmentation with its draws.
    pub augment: EpisodeAugment,
    /// Image side in pixels.
    pub side: usize,
}

impl SupportPlan {
    /// Returns the plan of a plain ProtoNet episode: no augmentation, no Block Dropout.
    pub fn plain(seed: u64) -> SupportPlan {
        SupportPlan {
            augment: SupportAugment::None,
            copies: 0,
            embedding_dim: 0,
            block_dropout: None,
            seed,
        }
    }

    /// Builds the inputs of episode number `index`.
    ///
    /// # Panics
    /// When the augmentation reads generated images and `generated` is `None`, or a photo has
    /// fewer generated images than `copies` (both are checked when the data is loaded).
    pub fn prepare(
        &self,
        episode: Episode,
        index: u64,
        photos: &ImageStore,
        generated: Option<&GeneratedImages>,
    ) -> PreparedEpisode {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ DRAW_SALT);
        rng.set_stream(index);
        let side = photos.size.pixels() as usize;
        let per_image = photos.size.num_values();
        let n_support = episode.support.len();
        let n_query = episode.query.len();

        let write = |indices: &[usize], flips: &[bool]| {
            let mut values = vec![0.0f32; indices.len() * per_image];
            for (slot, (&image, &flip)) in indices.iter().zip(flips).enumerate() {
                let out = &mut values[slot * per_image..(slot + 1) * per_image];
                write_normalized_chw(photos.pixels(image), side, flip, out);
            }
            values
        };
        let support = write(&episode.support, &episode.flips[..n_support]);
        let query = write(&episode.query, &episode.flips[n_support..]);

        let mut generated_values = None;
        let mut generated_choice = Vec::new();
        if self.augment.needs_generated() {
            let store = generated.expect("this support augmentation needs generated images");
            let mut values = vec![0.0f32; n_support * self.copies * per_image];
            let mut slot = 0;
            for (i, &image) in episode.support.iter().enumerate() {
                let available = store.count(image);
                let picked = rand::seq::index::sample(&mut rng, available, self.copies);
                for k in picked.iter() {
                    // A mirrored photo gets mirrored generated images, so that fusion mixes
                    // aligned pixels.
                    let out = &mut values[slot * per_image..(slot + 1) * per_image];
                    write_normalized_chw(store.pixels(image, k), side, episode.flips[i], out);
                    generated_choice.push(k);
                    slot += 1;
                }
            }
            generated_values = Some(values);
        }

        let mixup_lambda = if self.augment == SupportAugment::Mixup {
            rng.random::<f32>()
        } else {
            0.0
        };
        let gaussian_noise = (self.augment == SupportAugment::Gaussian).then(|| {
            (0..n_support * self.copies * self.embedding_dim)
                .map(|_| standard_normal(&mut rng))
                .collect()
        });
        let block_dropout = self.block_dropout.as_ref().map(|config| {
            let extra = n_support * self.augment.extra_images_per_support(self.copies);
            let count = n_support + extra + n_query;
            let masks = config.sample(count, side, side, &mut || rng.random::<f64>());
            (masks.masks, masks.scales)
        });

        PreparedEpisode {
            episode,
            support,
            query,
            generated: generated_values,
            generated_choice,
            augment: EpisodeAugment {
                kind: self.augment,
                copies: self.copies,
                mixup_lambda,
                gaussian_noise,
                block_dropout,
            },
            side,
        }
    }
}

impl PreparedEpisode {
    /// Copies the images to `device` as the model's input.
    pub fn input(&self, n_way: usize, device: &Device) -> EpisodeInput {
        let side = self.side;
        let tensor = |values: &[f32]| {
            let count = values.len() / (3 * side * side);
            Tensor::<4>::from_data(
                TensorData::new(values.to_vec(), [count, 3, side, side]),
                device,
            )
        };
        EpisodeInput {
            support: tensor(&self.support),
            query: tensor(&self.query),
            generated: self.generated.as_deref().map(tensor),
            n_way,
        }
    }
}

/// Draws a standard normal number (Box-Muller).
fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageSize;
    use crate::episodes::{EpisodeSampler, EpisodeShape};

    #[test]
    fn draws_depend_only_on_the_episode_index() {
        let store = ImageStore::from_parts_for_tests(
            ImageSize::S84,
            (0..5).map(|i| format!("{i:03}.Bird")).collect(),
            (0..5).map(|c| (c * 4..c * 4 + 4).collect()).collect(),
        );
        let shape = EpisodeShape {
            n_way: 3,
            n_shot: 1,
            n_query: 2,
        };
        let sampler = EpisodeSampler::new(&store, crate::data::Split::Base, shape, 4).unwrap();
        let plan = SupportPlan {
            augment: SupportAugment::Gaussian,
            copies: 2,
            embedding_dim: 6,
            block_dropout: Some(BlockDropoutConfig {
                enabled: true,
                p: 1.0,
                ..BlockDropoutConfig::default()
            }),
            seed: 4,
        };
        let a = plan.prepare(sampler.episode(7, true), 7, &store, None);
        let _ = plan.prepare(sampler.episode(8, true), 8, &store, None);
        let b = plan.prepare(sampler.episode(7, true), 7, &store, None);
        assert_eq!(a.augment.gaussian_noise, b.augment.gaussian_noise);
        assert_eq!(a.augment.block_dropout, b.augment.block_dropout);
        let noise = a.augment.gaussian_noise.unwrap();
        assert_eq!(noise.len(), 3 * 2 * 6);
        let (masks, scales) = a.augment.block_dropout.unwrap();
        // 3 support images and 6 queries; gaussian adds no images.
        assert_eq!(scales.len(), 9);
        assert_eq!(masks.len(), 81);
    }
}
