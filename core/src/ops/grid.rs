//! Operations on a 3x3 grid of image blocks: grid fusion and Block Dropout.
//!
//! An image of height H is cut into 3 block rows of ceil(H/3) pixels, the last row shorter
//! (75, 75 and 74 at 224; 28 each at 84); columns likewise. A per-image 3x3 table, stored
//! row-major as 9 values, is upsampled to pixels by nearest neighbour over these blocks.

use burn::prelude::*;

/// Returns, for each of `length` pixels along one axis, the grid row (or column) it falls in.
pub fn block_indices(length: usize) -> Vec<i64> {
    let block = length.div_ceil(3).max(1);
    (0..length).map(|i| (i / block).min(2) as i64).collect()
}

/// Upsamples per-image 3x3 tables to pixels by nearest neighbour over the grid blocks.
///
/// # Shapes
/// - `table`: `[batch, 9]`, row-major
/// - output: `[batch, 1, height, width]`
pub fn upsample_grid(table: Tensor<2>, height: usize, width: usize) -> Tensor<4> {
    let [batch, _] = table.dims();
    let device = table.device();
    let rows = block_indices(height);
    let columns = block_indices(width);
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [height]), &device);
    let columns = Tensor::<1, Int>::from_data(TensorData::new(columns, [width]), &device);
    table
        .reshape([batch, 3, 3])
        .select(1, rows)
        .select(2, columns)
        .reshape([batch, 1, height, width])
}

/// Fuses `original` and `generated` images with per-image 3x3 weights:
/// `out = W * original + (1 - W) * generated`, with W the weights upsampled to pixels. The
/// weights are not clamped, so they may leave [0, 1].
///
/// Gradients flow to all three inputs; the gradient of a weight sums over its block and the
/// channels.
///
/// # Shapes
/// - `original`, `generated`: `[batch, channels, height, width]`
/// - `weights`: `[batch, 9]`, row-major over the grid
/// - output: `[batch, channels, height, width]`
pub fn grid_fusion(original: Tensor<4>, generated: Tensor<4>, weights: Tensor<2>) -> Tensor<4> {
    grid_fusion_reference(original, generated, weights)
}

/// Multiplies each image by its upsampled 0/1 block mask and its scale: `x * M * scale`.
///
/// The gradient flows to `images` only; masks and scales are constants.
///
/// # Shapes
/// - `images`: `[batch, channels, height, width]`
/// - `masks`: `[batch, 9]`, row-major over the grid, entries 0 or 1
/// - `scales`: `[batch]`
/// - output: `[batch, channels, height, width]`
pub fn block_dropout(images: Tensor<4>, masks: Tensor<2>, scales: Tensor<1>) -> Tensor<4> {
    block_dropout_reference(images, masks, scales)
}

/// [`grid_fusion`] composed of plain tensor operations: the CPU path and the reference for the
/// kernels.
pub fn grid_fusion_reference(
    original: Tensor<4>,
    generated: Tensor<4>,
    weights: Tensor<2>,
) -> Tensor<4> {
    let [_, _, height, width] = original.dims();
    let w = upsample_grid(weights, height, width);
    // W*x + (1-W)*g = g + W*(x-g): one product fewer.
    generated.clone() + w * (original - generated)
}

/// [`block_dropout`] composed of plain tensor operations: the CPU path and the reference for
/// the kernels.
pub fn block_dropout_reference(images: Tensor<4>, masks: Tensor<2>, scales: Tensor<1>) -> Tensor<4> {
    let [batch, _, height, width] = images.dims();
    let factor = masks.detach() * scales.detach().reshape([batch, 1]);
    images * upsample_grid(factor, height, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_ceil_rule() {
        let rows = block_indices(224);
        let counts: Vec<usize> = (0..3)
            .map(|b| rows.iter().filter(|&&r| r == b).count())
            .collect();
        assert_eq!(counts, vec![75, 75, 74]);
        let rows = block_indices(84);
        let counts: Vec<usize> = (0..3)
            .map(|b| rows.iter().filter(|&&r| r == b).count())
            .collect();
        assert_eq!(counts, vec![28, 28, 28]);
        // 7 pixels: blocks of 3, 3 and 1.
        assert_eq!(block_indices(7), vec![0, 0, 0, 1, 1, 1, 2]);
    }

    #[test]
    fn fusion_mixes_per_block() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let original = Tensor::<4>::ones([1, 1, 4, 4], &device);
        let generated = Tensor::<4>::zeros([1, 1, 4, 4], &device);
        let weights = Tensor::<2>::from_floats(
            [[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]],
            &device,
        );
        let fused = grid_fusion(original, generated, weights)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // Side 4: blocks of 2, 2 and 0 pixels, so the last grid row and column are never used.
        #[rustfmt::skip]
        let expected = [
            0.0, 0.0, 0.1, 0.1,
            0.0, 0.0, 0.1, 0.1,
            0.3, 0.3, 0.4, 0.4,
            0.3, 0.3, 0.4, 0.4,
        ];
        for (a, b) in fused.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{fused:?}");
        }
    }
}
