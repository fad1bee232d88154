//! 2-D convolution with a faster CPU path.
//!
//! On Burn's flex (CPU) backend, [`conv2d`] runs the im2col + GEMM kernels of this crate for the
//! forward pass and for both gradients. Burn 0.22.1's own flex path computes the weight
//! gradient as a convolution whose kernel is the whole output gradient and the input gradient
//! as a transposed convolution, which made a Conv4 training step several times slower than the
//! forward pass. On every other backend (wgpu included) the operation is Burn's own convolution,
//! unchanged. Convolutions with dilation, groups or unequal strides or paddings always take
//! Burn's path.

use crate::ops::cpu_conv::{self, ConvGeometry};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;

/// Applies `conv` to `input` through the operations of [`Conv2dOps`].
///
/// # Shapes
/// - `input`: `[batch, in_channels, height, width]`
/// - output: `[batch, out_channels, out_height, out_width]`
pub fn conv2d(input: Tensor<4>, conv: &Conv2d) -> Tensor<4> {
    let in_channels = input.dims()[1];
    let padding = match &conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right)
            if top == left && top == bottom && top == right =>
        {
            Some(*top)
        }
        PaddingConfig2d::Valid => Some(0),
        _ => None,
    };
    let plain = conv.stride[0] == conv.stride[1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.weight.dims()[1] == in_channels;
    let (Some(padding), true) = (padding, plain) else {
        return conv.forward(input);
    };
    conv2d_weights(
        input,
        conv.weight.val(),
        conv.bias.as_ref().map(|bias| bias.val()),
        conv.stride[0],
        padding,
    )
}

/// Convolves `input` with `weight` (PyTorch layout), adds `bias`, with square `stride` and zero
/// `padding` on every side.
///
/// # Shapes
/// - `input`: `[batch, in_channels, height, width]`
/// - `weight`: `[out_channels, in_channels, kernel_height, kernel_width]`
/// - `bias`: `[out_channels]`
/// - output: `[batch, out_channels, out_height, out_width]`
pub fn conv2d_weights(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &weight.device()));
    let output = <Dispatch as Conv2dOps>::conv2d_forward(
        input.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        stride,
        padding,
    );
    Tensor::from_dispatch(output)
}

fn options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1)
}

/// Convolution forward pass and gradients as one backend extension, so that each backend can
/// supply its own kernels. The default bodies are Burn's own operations.
#[backend_extension(
    Flex,
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu"),
    Autodiff: cfg(feature = "train")
)]
pub trait Conv2dOps: Backend {
    /// Computes `conv(input, weight) + bias` with square `stride` and zero `padding`.
    #[fusion(default)]
    fn conv2d_forward(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d(input, weight, Some(bias), options(stride, padding))
    }

    /// Computes the gradient with respect to `input` (only its shape is read).
    #[fusion(default)]
    fn conv2d_input_grad(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(input, weight, output_grad, options(stride, padding))
    }

    /// Computes the gradient with respect to `weight` (only its shape is read).
    #[fusion(default)]
    fn conv2d_weight_grad(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(input, weight, output_grad, options(stride, padding))
    }
}

#[cfg(feature = "wgpu")]
impl Conv2dOps for burn::backend::wgpu::CubeBackend {}

/// The flex backend runs f32 tensors through the kernels of `cpu_conv`; other float types take
/// Burn's path.
impl Conv2dOps for Flex {
    fn conv2d_forward(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        if input.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return Self::conv2d(input, weight, Some(bias), options(stride, padding));
        }
        let (input, weight, bias) = (
            input.to_contiguous(),
            weight.to_contiguous(),
            bias.to_contiguous(),
        );
        let g = geometry(&input, &weight, stride, padding);
        let output = cpu_conv::forward(&g, f32s(&input), f32s(&weight), f32s(&bias));
        flex_tensor(
            output,
            [g.batch, g.out_channels, g.out_height(), g.out_width()],
        )
    }

    fn conv2d_input_grad(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        if output_grad.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return Self::conv2d_x_backward(input, weight, output_grad, options(stride, padding));
        }
        let (weight, output_grad) = (weight.to_contiguous(), output_grad.to_contiguous());
        let g = geometry(&input, &weight, stride, padding);
        let grad = cpu_conv::input_grad(&g, f32s(&weight), f32s(&output_grad));
        flex_tensor(grad, [g.batch, g.in_channels, g.in_height, g.in_width])
    }

    fn conv2d_weight_grad(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        if output_grad.dtype() != DType::F32 || input.dtype() != DType::F32 {
            return Self::conv2d_weight_backward(
                input,
                weight,
                output_grad,
                options(stride, padding),
            );
        }
        let (input, output_grad) = (input.to_contiguous(), output_grad.to_contiguous());
        let g = geometry(&input, &weight, stride, padding);
        let grad = cpu_conv::weight_grad(&g, f32s(&input), f32s(&output_grad));
        flex_tensor(
            grad,
            [
                g.out_channels,
                g.in_channels,
                g.kernel_height,
                g.kernel_width,
            ],
        )
    }
}

fn geometry(
    input: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
    stride: usize,
    padding: usize,
) -> ConvGeometry {
    let [batch, in_channels, in_height, in_width] = input.shape().dims();
    let [out_channels, _, kernel_height, kernel_width] = weight.shape().dims();
    ConvGeometry {
        batch,
        in_channels,
        in_height,
        in_width,
        out_channels,
        kernel_height,
        kernel_width,
        stride,
        padding,
    }
}

/// Returns the values of a contiguous f32 flex tensor; the caller checks the dtype and calls
/// `to_contiguous` first.
fn f32s(tensor: &FloatTensor<Flex>) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("convolution operands are contiguous f32")
}

fn flex_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FloatTensor<Flex> {
    FloatTensor::<Flex>::from_data(TensorData::new(values, shape))
}

#[cfg(feature = "train")]
mod autodiff {
    use super::Conv2dOps;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, TensorMetadata};

    #[derive(Debug)]
    struct Conv2dBackward;

    impl<B: Backend + Conv2dOps> Backward<B, 3> for Conv2dBackward {
        /// Input, weight, stride and padding.
        type State = (FloatTensor<B>, FloatTensor<B>, usize, usize);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_input, node_weight, node_bias] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (input, weight, stride, padding) = ops.state;

            if let Some(node) = node_bias {
                // Sum over batch, height and width: [N, C, H, W] -> [C].
                let channels = grad.shape()[1];
                let summed = B::float_sum_dim(grad.clone(), 3);
                let summed = B::float_sum_dim(summed, 2);
                let summed = B::float_sum_dim(summed, 0);
                let summed = B::float_reshape(summed, [channels].into());
                grads.register::<B>(node.id, summed);
            }
            if let Some(node) = node_weight {
                let weight_grad = B::conv2d_weight_grad(
                    input.clone(),
                    weight.clone(),
                    grad.clone(),
                    stride,
                    padding,
                );
                grads.register::<B>(node.id, weight_grad);
            }
            if let Some(node) = node_input {
                let input_grad = B::conv2d_input_grad(input, weight, grad, stride, padding);
                grads.register::<B>(node.id, input_grad);
            }
        }
    }

    impl<B: Backend + Conv2dOps, C: CheckpointStrategy> Conv2dOps for Autodiff<B, C> {
        fn conv2d_forward(
            input: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            stride: usize,
            padding: usize,
        ) -> FloatTensor<Self> {
            let prepared = Conv2dBackward
                .prepare::<C>([input.node(), weight.node(), bias.node()])
                .compute_bound()
                .stateful();
            let input = input.into_primitive();
            let weight = weight.into_primitive();
            let bias = bias.into_primitive();
            match prepared {
                OpsKind::Tracked(prep) => {
                    let output =
                        B::conv2d_forward(input.clone(), weight.clone(), bias, stride, padding);
                    prep.finish((input, weight, stride, padding), output)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::conv2d_forward(input, weight, bias, stride, padding))
                }
            }
        }
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;

    struct Case {
        batch: usize,
        channels: [usize; 2],
        size: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
    }

    const fn case(
        batch: usize,
        channels: [usize; 2],
        size: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Case {
        Case {
            batch,
            channels,
            size,
            kernel,
            stride,
            padding,
        }
    }

    /// Conv4's blocks, ResNet-18's stem, 3x3 and 1x1 strided convolutions, odd sizes, a batch
    /// of one, and small outputs that put many images into one GEMM.
    const CASES: [Case; 8] = [
        // batch, [in, out] channels, [height, width], kernel, stride, padding
        case(3, [3, 8], [84, 84], 3, 1, 1),
        case(2, [8, 8], [21, 21], 3, 1, 1),
        case(2, [3, 4], [37, 29], 7, 2, 3),
        case(3, [5, 6], [15, 12], 3, 2, 1),
        case(2, [6, 10], [9, 7], 1, 2, 0),
        case(2, [6, 4], [5, 5], 1, 1, 0),
        case(1, [4, 5], [11, 13], 3, 1, 1),
        case(45, [6, 5], [5, 5], 3, 1, 1),
    ];

    fn layer(case: &Case, device: &Device) -> Conv2d {
        Conv2dConfig::new(case.channels, [case.kernel, case.kernel])
            .with_stride([case.stride, case.stride])
            .with_padding(PaddingConfig2d::Explicit(
                case.padding,
                case.padding,
                case.padding,
                case.padding,
            ))
            .init(device)
    }

    fn assert_close(actual: Tensor<4>, expected: Tensor<4>, case_name: &str) {
        let actual = actual.into_data().try_to_vec::<f32>().unwrap();
        let expected = expected.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(actual.len(), expected.len(), "{case_name}: sizes");
        let scale = expected
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(1e-6);
        for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert!(
                (a - e).abs() <= 1e-4 * scale,
                "{case_name}: entry {i} is {a}, Burn's convolution gives {e}"
            );
        }
    }

    #[test]
    fn forward_matches_burn_convolution() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        device.seed(3);
        for case in &CASES {
            let conv = layer(case, &device);
            let input = Tensor::<4>::random(
                [case.batch, case.channels[0], case.size[0], case.size[1]],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let case_name = format!(
                "{}x{} stride {} padding {} on {:?}",
                case.kernel, case.kernel, case.stride, case.padding, case.size
            );
            assert_close(
                conv2d(input.clone(), &conv),
                conv.forward(input),
                &case_name,
            );
        }
    }

    #[test]
    fn gradients_match_burn_convolution() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex().autodiff();
        device.seed(4);
        for case in &CASES {
            let conv = layer(case, &device);
            let input = Tensor::<4>::random(
                [case.batch, case.channels[0], case.size[0], case.size[1]],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            // A loss whose output gradient differs at every position.
            let output_shape = conv.forward(input.clone()).dims();
            let probe = Tensor::<4>::random(
                output_shape,
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let ours = (conv2d(input.clone(), &conv) * probe.clone())
                .sum()
                .backward();
            let burns = (conv.forward(input.clone()) * probe).sum().backward();
            let case_name = format!(
                "{}x{} stride {} padding {} on {:?}",
                case.kernel, case.kernel, case.stride, case.padding, case.size
            );

            assert_close(
                input.grad(&ours).unwrap(),
                input.grad(&burns).unwrap(),
                &format!("input gradient, {case_name}"),
            );
            let weight = conv.weight.val();
            assert_close(
                weight.grad(&ours).unwrap(),
                weight.grad(&burns).unwrap(),
                &format!("weight gradient, {case_name}"),
            );
            let bias = conv.bias.as_ref().unwrap().val();
            let ours_bias = bias
                .grad(&ours)
                .unwrap()
                .reshape([1, 1, 1, case.channels[1]]);
            let burns_bias = bias
                .grad(&burns)
                .unwrap()
                .reshape([1, 1, 1, case.channels[1]]);
            assert_close(
                ours_bias,
                burns_bias,
                &format!("bias gradient, {case_name}"),
            );
        }
    }
}
