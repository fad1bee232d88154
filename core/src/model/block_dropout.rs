//! Block Dropout, this project's definition of the MetaIRNet++ augmentation.
//!
//! Real photos are globally consistent while fused images are not; dropping grid blocks of real
//! photos too makes the two kinds alike. In training only, every image that enters the backbone
//! (support originals, fused images, queries) is, with probability `p`, multiplied by a 0/1
//! mask over the 3x3 grid of [`crate::ops::grid`] and by a scale:
//! - a keep ratio r is drawn from Uniform(lo, hi);
//! - each of the 8 outer blocks is kept with probability r. The centre block is always kept
//!   when `centerness` is on, and otherwise with probability r like the others;
//! - the scale is `1 / r` (variance fix `sample`) or the realised ratio of all pixels to kept
//!   pixels after upsampling the mask (variance fix `mean`).
//!
//! When every block is dropped (possible only without centerness), the image is left unchanged
//! instead, since no scale can restore its mean.

use crate::ops::grid::block_indices;
use serde::{Deserialize, Serialize};

/// The rescaling of the kept pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarianceFix {
    /// Multiply by 1 / r, the expected fraction kept.
    Sample,
    /// Multiply by numel(mask) / sum(mask) of the pixel mask, the fraction actually kept.
    Mean,
}

/// Block Dropout's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockDropoutConfig {
    /// Whether Block Dropout is applied in training.
    pub enabled: bool,
    /// Probability that an image is augmented at all.
    pub p: f64,
    /// Whether the centre block is always kept.
    pub centerness: bool,
    /// The range [lo, hi] of the keep ratio r.
    pub keep_ratio: [f64; 2],
    /// The rescaling of the kept pixels.
    pub variance_fix: VarianceFix,
}

impl Default for BlockDropoutConfig {
    fn default() -> Self {
        BlockDropoutConfig {
            enabled: false,
            p: 0.5,
            centerness: true,
            keep_ratio: [0.5, 1.0],
            variance_fix: VarianceFix::Mean,
        }
    }
}

/// The masks and scales of a batch, ready for [`crate::ops::block_dropout`].
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMasks {
    /// `[batch, 9]` row-major, 0 or 1.
    pub masks: Vec<f32>,
    /// `[batch]`.
    pub scales: Vec<f32>,
}

impl BlockDropoutConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// The field name, the value and the reason of the first invalid setting.
    pub fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        if !(0.0..=1.0).contains(&self.p) {
            return Err(("block_dropout.p", self.p.to_string(), "must be in [0, 1]"));
        }
        let [lo, hi] = self.keep_ratio;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err((
                "block_dropout.keep_ratio",
                format!("[{lo}, {hi}]"),
                "must satisfy 0 < lo <= hi <= 1",
            ));
        }
        Ok(())
    }

    /// Draws masks and scales for `count` images of `height x width` pixels, taking uniform
    /// numbers in [0, 1) from `uniform`.
    pub fn sample(
        &self,
        count: usize,
        height: usize,
        width: usize,
        uniform: &mut impl FnMut() -> f64,
    ) -> BlockMasks {
        let rows = block_sizes(height);
        let columns = block_sizes(width);
        let mut masks = Vec::with_capacity(count * 9);
        let mut scales = Vec::with_capacity(count);
        for _ in 0..count {
            let mut mask = [1.0f32; 9];
            let mut scale = 1.0f32;
            if uniform() < self.p {
                let [lo, hi] = self.keep_ratio;
                let r = lo + (hi - lo) * uniform();
                for (block, value) in mask.iter_mut().enumerate() {
                    let protected = block == 4 && self.centerness;
                    let kept = protected || uniform() < r;
                    *value = if kept { 1.0 } else { 0.0 };
                }
                let kept_pixels: usize = (0..9)
                    .filter(|&block| mask[block] == 1.0)
                    .map(|block| rows[block / 3] * columns[block % 3])
                    .sum();
                if kept_pixels == 0 {
                    mask = [1.0; 9];
                } else {
                    scale = match self.variance_fix {
                        VarianceFix::Sample => (1.0 / r) as f32,
                        VarianceFix::Mean => (height * width) as f32 / kept_pixels as f32,
                    };
                }
            }
            masks.extend_from_slice(&mask);
            scales.push(scale);
        }
        BlockMasks { masks, scales }
    }
}

/// Returns the pixel count of each of the 3 blocks along an axis.
fn block_sizes(length: usize) -> [usize; 3] {
    let mut sizes = [0; 3];
    for block in block_indices(length) {
        sizes[block as usize] += 1;
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator of numbers in [0, 1).
    fn sequence(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn mean_fix_restores_pixel_mean() {
        let config = BlockDropoutConfig {
            enabled: true,
            p: 1.0,
            ..BlockDropoutConfig::default()
        };
        let batch = config.sample(200, 224, 224, &mut sequence(1));
        let rows = block_sizes(224);
        for (mask, scale) in batch.masks.chunks(9).zip(&batch.scales) {
            assert_eq!(mask[4], 1.0, "centerness keeps the centre block");
            let kept: usize = (0..9)
                .filter(|&b| mask[b] == 1.0)
                .map(|b| rows[b / 3] * rows[b % 3])
                .sum();
            let restored = kept as f32 * scale;
            assert!((restored - 224.0 * 224.0).abs() < 1.0, "{restored}");
        }
    }

    #[test]
    fn p_and_keep_ratio_shape_the_masks() {
        let config = BlockDropoutConfig {
            enabled: true,
            p: 0.5,
            centerness: false,
            keep_ratio: [0.5, 0.5],
            variance_fix: VarianceFix::Sample,
        };
        let count = 4000;
        let batch = config.sample(count, 84, 84, &mut sequence(7));
        let untouched = batch.scales.iter().filter(|&&s| s == 1.0).count();
        // About half are left alone (p = 0.5), plus the rare all-dropped masks.
        let fraction = untouched as f64 / count as f64;
        assert!((fraction - 0.5).abs() < 0.04, "{fraction}");
        let augmented: Vec<&[f32]> = batch
            .masks
            .chunks(9)
            .zip(&batch.scales)
            .filter(|(_, s)| **s == 2.0)
            .map(|(m, _)| m)
            .collect();
        let kept = augmented.iter().flat_map(|m| m.iter()).sum::<f32>()
            / (9 * augmented.len()) as f32;
        // With r = 0.5, blocks survive half the time (a little more, since all-dropped masks
        // were reset and left out here).
        assert!((kept - 0.5).abs() < 0.03, "{kept}");
    }

    #[test]
    fn bad_keep_ratio_is_named() {
        let config = BlockDropoutConfig {
            keep_ratio: [0.8, 0.4],
            ..BlockDropoutConfig::default()
        };
        let (field, value, _) = config.check().unwrap_err();
        assert_eq!(field, "block_dropout.keep_ratio");
        assert_eq!(value, "[0.8, 0.4]");
    }
}
