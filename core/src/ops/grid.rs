//! Operations on a 3x3 grid of image blocks: grid fusion and Block Dropout.
//!
//! An image of height H is cut into 3 block rows of ceil(H/3) pixels, the last row shorter
//! (75, 75 and 74 at 224; 28 each at 84); columns likewise. A per-image 3x3 table, stored
//! row-major as 9 values, is upsampled to pixels by nearest neighbour over these blocks.
//!
//! Both operations go through the backend extension [`GridOps`]: on wgpu they run the
//! hand-written WGSL kernels of the `metairnet-shaders` crate, on the CPU (flex) backend they are
//! composed of tensor operations, and on autodiff their backward passes are written out, so a
//! training step on wgpu runs the kernels for the gradients too.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::{FloatDType, IndexingUpdateOp};

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
/// channels, and is 0 for an empty block.
///
/// # Shapes
/// - `original`, `generated`: `[batch, channels, height, width]`
/// - `weights`: `[batch, 9]`, row-major over the grid
/// - output: `[batch, channels, height, width]`
pub fn grid_fusion(original: Tensor<4>, generated: Tensor<4>, weights: Tensor<2>) -> Tensor<4> {
    let output = <Dispatch as GridOps>::grid_fusion_forward(
        original.into_dispatch(),
        generated.into_dispatch(),
        weights.into_dispatch(),
    );
    Tensor::from_dispatch(output)
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
    let output = <Dispatch as GridOps>::block_dropout_forward(
        images.into_dispatch(),
        masks.detach().into_dispatch(),
        scales.detach().into_dispatch(),
    );
    Tensor::from_dispatch(output)
}

/// Grid fusion and Block Dropout, forward and backward, as one backend extension so that each
/// backend can supply its own kernels. The default bodies are composed of backend tensor
/// operations and compute what [`grid_fusion_reference`] and [`block_dropout_reference`] do.
///
/// Block Dropout has no backward method: its gradient `dy * M * scale` is
/// [`GridOps::block_dropout_forward`] applied to the output gradient.
#[backend_extension(
    Flex,
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu"),
    Autodiff: cfg(feature = "train")
)]
pub trait GridOps: Backend {
    /// Computes `W * original + (1 - W) * generated` with W the upsampled `weights` `[batch, 9]`.
    #[fusion(dtype = original, shape = original)]
    fn grid_fusion_forward(
        original: FloatTensor<Self>,
        generated: FloatTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        primitive::grid_fusion::<Self>(original, generated, weights)
    }

    /// Computes the gradients of grid fusion with respect to `original` and `generated`:
    /// `(W * output_grad, (1 - W) * output_grad)`.
    #[fusion(meta = |_weights: &burn::backend::fusion::custom::TensorSpec,
                     output_grad: &burn::backend::fusion::custom::TensorSpec| {
        (output_grad.clone(), output_grad.clone())
    })]
    fn grid_fusion_images_grad(
        weights: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        primitive::grid_fusion_images_grad::<Self>(weights, output_grad)
    }

    /// Computes the gradient of grid fusion with respect to `weights` (only its shape is read):
    /// the sum of `output_grad * (original - generated)` over the channels and the pixels of each
    /// block.
    #[fusion(dtype = weights, shape = weights)]
    fn grid_fusion_weights_grad(
        original: FloatTensor<Self>,
        generated: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        primitive::grid_fusion_weights_grad::<Self>(original, generated, weights, output_grad)
    }

    /// Computes `images * M * scales` with M the upsampled `masks` `[batch, 9]`.
    #[fusion(dtype = images, shape = images)]
    fn block_dropout_forward(
        images: FloatTensor<Self>,
        masks: FloatTensor<Self>,
        scales: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        primitive::block_dropout::<Self>(images, masks, scales)
    }
}

impl GridOps for Flex {}

/// [`grid_fusion`] composed of plain tensor operations, with Burn's own autodiff: the reference
/// that the kernels and the backward pass of [`GridOps`] are tested against.
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

/// [`block_dropout`] composed of plain tensor operations, with Burn's own autodiff: the
/// reference that the kernels and the backward pass of [`GridOps`] are tested against.
pub fn block_dropout_reference(
    images: Tensor<4>,
    masks: Tensor<2>,
    scales: Tensor<1>,
) -> Tensor<4> {
    let [batch, _, height, width] = images.dims();
    let factor = masks.detach() * scales.detach().reshape([batch, 1]);
    images * upsample_grid(factor, height, width)
}

/// The default bodies of [`GridOps`]: the tensor-op references written with backend operations,
/// so that they run on any backend's primitives.
pub(super) mod primitive {
    use super::*;

    /// Upsamples `table` `[batch, 9]` to `[batch, 1, height, width]`.
    fn upsample<B: Backend>(table: FloatTensor<B>, height: usize, width: usize) -> FloatTensor<B> {
        let batch = table.shape()[0];
        let device = table.device();
        let rows = indices::<B>(height, &device);
        let columns = indices::<B>(width, &device);
        let table = B::float_reshape(table, Shape::new([batch, 3, 3]));
        let table = B::float_select(table, 1, rows);
        let table = B::float_select(table, 2, columns);
        B::float_reshape(table, Shape::new([batch, 1, height, width]))
    }

    /// Returns the block of each pixel along an axis as an i32 index tensor, a dtype that every
    /// backend accepts for `select`.
    fn indices<B: Backend>(length: usize, device: &B::Device) -> IntTensor<B> {
        let values: Vec<i32> = block_indices(length).iter().map(|&i| i as i32).collect();
        B::int_from_data(TensorData::new(values, [length]), device)
    }

    pub(crate) fn grid_fusion<B: Backend>(
        original: FloatTensor<B>,
        generated: FloatTensor<B>,
        weights: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let [_, _, height, width] = original.shape().dims();
        let w = upsample::<B>(weights, height, width);
        let difference = B::float_sub(original, generated.clone());
        B::float_add(generated, B::float_mul(w, difference))
    }

    pub(crate) fn grid_fusion_images_grad<B: Backend>(
        weights: FloatTensor<B>,
        output_grad: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let [_, _, height, width] = output_grad.shape().dims();
        let w = upsample::<B>(weights, height, width);
        let original_grad = B::float_mul(w, output_grad.clone());
        let generated_grad = B::float_sub(output_grad, original_grad.clone());
        (original_grad, generated_grad)
    }

    pub(crate) fn grid_fusion_weights_grad<B: Backend>(
        original: FloatTensor<B>,
        generated: FloatTensor<B>,
        weights: FloatTensor<B>,
        output_grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let [batch, _, height, width] = original.shape().dims();
        let device = original.device();
        let dtype = FloatDType::from(weights.dtype());
        let product = B::float_mul(output_grad, B::float_sub(original, generated));
        let per_pixel = B::float_sum_dim(product, 1); // [batch, 1, height, width]
        let per_pixel = B::float_reshape(per_pixel, Shape::new([batch, height, width]));

        // Add each pixel row into its block row, then each column into its block column. An
        // empty block receives nothing and stays 0.
        let per_row = B::float_zeros(Shape::new([batch, 3, width]), &device, dtype);
        let per_row = B::float_select_assign(
            per_row,
            1,
            indices::<B>(height, &device),
            per_pixel,
            IndexingUpdateOp::Add,
        );
        let per_block = B::float_zeros(Shape::new([batch, 3, 3]), &device, dtype);
        let per_block = B::float_select_assign(
            per_block,
            2,
            indices::<B>(width, &device),
            per_row,
            IndexingUpdateOp::Add,
        );
        B::float_reshape(per_block, Shape::new([batch, 9]))
    }

    pub(crate) fn block_dropout<B: Backend>(
        images: FloatTensor<B>,
        masks: FloatTensor<B>,
        scales: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let [batch, _, height, width] = images.shape().dims();
        let scales = B::float_reshape(scales, Shape::new([batch, 1]));
        let factor = B::float_mul(masks, scales);
        B::float_mul(images, upsample::<B>(factor, height, width))
    }
}

#[cfg(feature = "train")]
mod autodiff {
    use super::GridOps;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend};

    #[derive(Debug)]
    struct GridFusionBackward;

    impl<B: Backend + GridOps> Backward<B, 3> for GridFusionBackward {
        /// Original, generated and weights.
        type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_original, node_generated, node_weights] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (original, generated, weights) = ops.state;

            if let Some(node) = node_weights {
                let weights_grad =
                    B::grid_fusion_weights_grad(original, generated, weights.clone(), grad.clone());
                grads.register::<B>(node.id, weights_grad);
            }
            if node_original.is_some() || node_generated.is_some() {
                let (original_grad, generated_grad) = B::grid_fusion_images_grad(weights, grad);
                if let Some(node) = node_original {
                    grads.register::<B>(node.id, original_grad);
                }
                if let Some(node) = node_generated {
                    grads.register::<B>(node.id, generated_grad);
                }
            }
        }
    }

    #[derive(Debug)]
    struct BlockDropoutBackward;

    impl<B: Backend + GridOps> Backward<B, 1> for BlockDropoutBackward {
        /// Masks and scales.
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_images] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (masks, scales) = ops.state;
            if let Some(node) = node_images {
                grads.register::<B>(node.id, B::block_dropout_forward(grad, masks, scales));
            }
        }
    }

    impl<B: Backend + GridOps, C: CheckpointStrategy> GridOps for Autodiff<B, C> {
        fn grid_fusion_forward(
            original: FloatTensor<Self>,
            generated: FloatTensor<Self>,
            weights: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let prepared = GridFusionBackward
                .prepare::<C>([original.node(), generated.node(), weights.node()])
                .compute_bound()
                .stateful();
            let original = original.into_primitive();
            let generated = generated.into_primitive();
            let weights = weights.into_primitive();
            match prepared {
                OpsKind::Tracked(prep) => {
                    let output = B::grid_fusion_forward(
                        original.clone(),
                        generated.clone(),
                        weights.clone(),
                    );
                    prep.finish((original, generated, weights), output)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::grid_fusion_forward(original, generated, weights))
                }
            }
        }

        fn block_dropout_forward(
            images: FloatTensor<Self>,
            masks: FloatTensor<Self>,
            scales: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            // Masks and scales are constants: only the images' node takes part in the graph.
            let prepared = BlockDropoutBackward
                .prepare::<C>([images.node()])
                .compute_bound()
                .stateful();
            let images = images.into_primitive();
            let masks = masks.into_primitive();
            let scales = scales.into_primitive();
            match prepared {
                OpsKind::Tracked(prep) => {
                    let output = B::block_dropout_forward(images, masks.clone(), scales.clone());
                    prep.finish((masks, scales), output)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::block_dropout_forward(images, masks, scales))
                }
            }
        }
    }
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
        let weights =
            Tensor::<2>::from_floats([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]], &device);
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

    #[test]
    fn block_dropout_masks_and_scales() {
        let device = Device::flex();
        let images = Tensor::<4>::from_floats(
            [[[
                [1.0, 2.0, 3.0, 4.0, 5.0],
                [6.0, 7.0, 8.0, 9.0, 10.0],
                [11.0, 12.0, 13.0, 14.0, 15.0],
            ]]],
            &device,
        );
        let masks =
            Tensor::<2>::from_floats([[1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]], &device);
        let scales = Tensor::<1>::from_floats([2.0], &device);
        let dropped = block_dropout(images, masks, scales)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // Height 3: one pixel row per block row. Width 5: block columns of 2, 2 and 1 pixels.
        #[rustfmt::skip]
        let expected = [
            2.0, 4.0, 0.0, 0.0, 10.0,
            0.0, 0.0, 16.0, 18.0, 20.0,
            22.0, 24.0, 26.0, 28.0, 0.0,
        ];
        assert_eq!(dropped, expected);
    }

    #[test]
    fn upsampling_skips_empty_blocks() {
        // Side 1: one block of 1 pixel and two empty ones, so only weight 0 is used.
        let device = Device::flex();
        let weights =
            Tensor::<2>::from_floats([[0.5, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]], &device);
        let upsampled = upsample_grid(weights, 1, 1)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(upsampled, vec![0.5]);
    }

    /// Random inputs of one test case on `device`, from fixed host values so that two devices get
    /// the same numbers.
    #[cfg(feature = "train")]
    struct Inputs {
        original: TensorData,
        generated: TensorData,
        weights: TensorData,
        cotangent: TensorData,
    }

    #[cfg(feature = "train")]
    fn random_inputs(shape: [usize; 4], seed: u64) -> Inputs {
        let device = Device::flex();
        device.seed(seed);
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let batch = shape[0];
        Inputs {
            original: Tensor::<4>::random(shape, normal, &device).into_data(),
            generated: Tensor::<4>::random(shape, normal, &device).into_data(),
            // Weights outside [0, 1] too: the operation does not clamp them.
            weights: Tensor::<2>::random(
                [batch, 9],
                burn::tensor::Distribution::Uniform(-0.5, 1.5),
                &device,
            )
            .into_data(),
            cotangent: Tensor::<4>::random(shape, normal, &device).into_data(),
        }
    }

    /// Returns `sum(grid_fusion_reference(x, g, w) * cotangent)` on flex.
    #[cfg(feature = "train")]
    fn reference_loss(
        inputs: &Inputs,
        original: &[f32],
        generated: &[f32],
        weights: &[f32],
    ) -> f64 {
        let device = Device::flex();
        let shape = inputs.original.shape().clone();
        let original =
            Tensor::<4>::from_data(TensorData::new(original.to_vec(), shape.clone()), &device);
        let generated = Tensor::<4>::from_data(TensorData::new(generated.to_vec(), shape), &device);
        let weights = Tensor::<2>::from_data(
            TensorData::new(weights.to_vec(), inputs.weights.shape().clone()),
            &device,
        );
        let cotangent = Tensor::<4>::from_data(inputs.cotangent.clone(), &device);
        let out = grid_fusion_reference(original, generated, weights) * cotangent;
        let values = out.into_data().try_to_vec::<f32>().unwrap();
        values.iter().map(|&v| v as f64).sum()
    }

    /// Computes the gradients of `sum(op(x, g, w) * cotangent)` with respect to x, g and w on
    /// flex with autodiff.
    #[cfg(feature = "train")]
    fn fusion_gradients(
        inputs: &Inputs,
        op: fn(Tensor<4>, Tensor<4>, Tensor<2>) -> Tensor<4>,
    ) -> [Vec<f32>; 4] {
        let device = Device::flex().autodiff();
        let original = Tensor::<4>::from_data(inputs.original.clone(), &device).require_grad();
        let generated = Tensor::<4>::from_data(inputs.generated.clone(), &device).require_grad();
        let weights = Tensor::<2>::from_data(inputs.weights.clone(), &device).require_grad();
        let cotangent = Tensor::<4>::from_data(inputs.cotangent.clone(), &device);
        let out = op(original.clone(), generated.clone(), weights.clone());
        let values = out.clone().into_data().try_to_vec::<f32>().unwrap();
        let grads = (out * cotangent).sum().backward();
        let read = |grad: Option<Tensor<4>>| grad.unwrap().into_data().try_to_vec::<f32>().unwrap();
        [
            values,
            read(original.grad(&grads)),
            read(generated.grad(&grads)),
            weights
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        ]
    }

    #[cfg(feature = "train")]
    fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32, what: &str) {
        assert_eq!(actual.len(), expected.len(), "{what}: lengths");
        let scale = expected.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (a - e).abs() <= tolerance * scale,
                "{what}: entry {i} is {a}, expected {e}"
            );
        }
    }

    #[cfg(feature = "train")]
    #[test]
    fn reference_gradients_match_finite_differences() {
        let _rng = crate::test_support::lock_rng();
        // Side 4 has an empty block row and column; 5x7 has blocks of 2, 2, 1 and 3, 3, 1.
        for shape in [[2, 2, 5, 7], [1, 3, 4, 4]] {
            let inputs = random_inputs(shape, 11);
            let [_, original_grad, generated_grad, weights_grad] =
                fusion_gradients(&inputs, grid_fusion_reference);
            let original = inputs.original.try_to_vec::<f32>().unwrap();
            let generated = inputs.generated.try_to_vec::<f32>().unwrap();
            let weights = inputs.weights.try_to_vec::<f32>().unwrap();

            // The loss is linear in each input, so a central difference is exact up to rounding.
            let step = 0.01f32;
            let difference = |which: usize, index: usize| {
                let mut plus = [original.clone(), generated.clone(), weights.clone()];
                let mut minus = plus.clone();
                plus[which][index] += step;
                minus[which][index] -= step;
                let up = reference_loss(&inputs, &plus[0], &plus[1], &plus[2]);
                let down = reference_loss(&inputs, &minus[0], &minus[1], &minus[2]);
                ((up - down) / (2.0 * step as f64)) as f32
            };
            let numeric = |which: usize, count: usize| -> Vec<f32> {
                (0..count).map(|index| difference(which, index)).collect()
            };

            assert_close(
                &original_grad,
                &numeric(0, original.len()),
                2e-3,
                "original gradient",
            );
            assert_close(
                &generated_grad,
                &numeric(1, generated.len()),
                2e-3,
                "generated gradient",
            );
            let numeric_weights = numeric(2, weights.len());
            assert_close(&weights_grad, &numeric_weights, 2e-3, "weights gradient");
            if shape[2] == 4 {
                // Blocks 2, 5, 6, 7 and 8 lie in the empty third row or column.
                for block in [2, 5, 6, 7, 8] {
                    assert_eq!(weights_grad[block], 0.0, "empty block {block}");
                }
            }
        }
    }

    #[cfg(feature = "train")]
    #[test]
    fn fusion_op_matches_reference_on_flex() {
        let _rng = crate::test_support::lock_rng();
        for shape in [[2, 3, 7, 10], [1, 1, 4, 4], [3, 2, 1, 1], [2, 3, 84, 84]] {
            let inputs = random_inputs(shape, 12);
            let ours = fusion_gradients(&inputs, grid_fusion);
            let reference = fusion_gradients(&inputs, grid_fusion_reference);
            let names = [
                "output",
                "original gradient",
                "generated gradient",
                "weights gradient",
            ];
            for ((a, e), name) in ours.iter().zip(&reference).zip(names) {
                assert_close(a, e, 1e-5, &format!("{name} at {shape:?}"));
            }
        }
    }

    #[cfg(feature = "train")]
    #[test]
    fn dropout_op_matches_reference_on_flex() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex().autodiff();
        device.seed(13);
        let shape = [3, 2, 7, 5];
        let images =
            Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
        let masks =
            Tensor::<2>::random([3, 9], burn::tensor::Distribution::Bernoulli(0.5), &device);
        let scales = Tensor::<1>::from_floats([1.5, 2.0, 0.5], &device);
        let cotangent =
            Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device);

        let ours = block_dropout(images.clone(), masks.clone(), scales.clone());
        let reference = block_dropout_reference(images.clone(), masks, scales);
        let ours_grads = (ours.clone() * cotangent.clone()).sum().backward();
        let reference_grads = (reference.clone() * cotangent).sum().backward();

        let read = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(read(ours), read(reference), "output");
        assert_eq!(
            read(images.grad(&ours_grads).unwrap()),
            read(images.grad(&reference_grads).unwrap()),
            "images gradient"
        );
    }
}
