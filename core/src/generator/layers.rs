//! The layers of BigGAN's generator, in the parameter layout of BigGAN-PyTorch so that its
//! checkpoints load by name.
//!
//! Spectral normalisation divides a weight by its largest singular value, estimated by one step
//! of power iteration from a stored left singular vector `u0`. The stored vector is not updated:
//! the generator is only ever used with BigGAN-PyTorch's evaluation-mode semantics, in which
//! the estimate is recomputed from `u0` on every call. Gradients flow through the weight in the
//! singular value, and not through the power-iteration vectors.

use crate::ops::conv2d_weights;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::softmax;

/// Initialisation of new layers: N(0, 0.02), as BigGAN-PyTorch's "N02" initialisation. Trained
/// generators always come from a checkpoint; random weights only serve reduced test and demo
/// configurations.
fn normal(shape: impl Into<Shape>, device: &Device) -> Tensor<1> {
    let shape = shape.into();
    let count = shape.num_elements();
    Tensor::<1>::random(
        [count],
        burn::tensor::Distribution::Normal(0.0, 0.02),
        device,
    )
}

/// Wraps a stored tensor that is never trained (singular vectors, BatchNorm statistics).
fn buffer<const D: usize>(tensor: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(tensor).set_require_grad(false)
}

/// Returns a random `[1, size]` vector of unit norm, the starting left singular vector of a new
/// layer.
fn random_unit_row(size: usize, eps: f64, device: &Device) -> Tensor<2> {
    let row = Tensor::<2>::random(
        [1, size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    );
    normalize_rows(row, eps)
}

/// Returns `x / max(||x||, eps)` for each row of `x`.
fn normalize_rows(x: Tensor<2>, eps: f64) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(eps);
    x / norm
}

/// Returns the largest singular value of `weight` viewed as `[rows, columns]`, from one power
/// iteration that starts at the stored left singular vector `u` (`[1, rows]`).
fn singular_value(weight: Tensor<2>, u: Tensor<2>, eps: f64) -> Tensor<2> {
    let fixed = weight.clone().detach();
    let v = normalize_rows(u.matmul(fixed.clone()), eps);
    let u = normalize_rows(v.clone().matmul(fixed.transpose()), eps);
    v.matmul(weight.transpose()).matmul(u.transpose())
}

/// A linear layer with spectral normalisation; `weight` is `[out, in]` as in PyTorch.
#[derive(Module, Debug)]
pub struct SnLinear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub u0: Param<Tensor<2>>,
    #[module(skip)]
    eps: f64,
}

impl SnLinear {
    /// Creates a layer with N(0, 0.02) weights, zero bias and a unit-norm `u0`.
    pub fn new(inputs: usize, outputs: usize, bias: bool, eps: f64, device: &Device) -> Self {
        let u0 = random_unit_row(outputs, eps, device);
        SnLinear {
            weight: Param::from_tensor(
                normal([outputs, inputs], device).reshape([outputs, inputs]),
            ),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([outputs], device))),
            u0: buffer(u0),
            eps,
        }
    }

    /// Returns the spectrally normalised weight, `[out, in]`.
    pub fn normalized_weight(&self) -> Tensor<2> {
        let weight = self.weight.val();
        let sigma = singular_value(weight.clone(), self.u0.val(), self.eps);
        weight / sigma
    }

    /// # Shapes
    /// - `input`: `[batch, in]`
    /// - output: `[batch, out]`
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let output = input.matmul(self.normalized_weight().transpose());
        match &self.bias {
            Some(bias) => output + bias.val().unsqueeze_dim(0),
            None => output,
        }
    }
}

/// A 2-D convolution with spectral normalisation, stride 1 and "same" zero padding; `weight` is
/// `[out, in, k, k]` as in PyTorch.
#[derive(Module, Debug)]
pub struct SnConv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub u0: Param<Tensor<2>>,
    #[module(skip)]
    eps: f64,
}

impl SnConv2d {
    /// Creates a layer with N(0, 0.02) weights, zero bias and a unit-norm `u0`.
    pub fn new(
        inputs: usize,
        outputs: usize,
        kernel: usize,
        bias: bool,
        eps: f64,
        device: &Device,
    ) -> Self {
        let u0 = random_unit_row(outputs, eps, device);
        let shape = [outputs, inputs, kernel, kernel];
        SnConv2d {
            weight: Param::from_tensor(normal(shape, device).reshape(shape)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([outputs], device))),
            u0: buffer(u0),
            eps,
        }
    }

    /// # Shapes
    /// - `input`: `[batch, in, height, width]`
    /// - output: `[batch, out, height, width]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let weight = self.weight.val();
        let [outputs, inputs, kernel, _] = weight.dims();
        let matrix = weight.clone().reshape([outputs, inputs * kernel * kernel]);
        let sigma = singular_value(matrix, self.u0.val(), self.eps);
        let weight = weight / sigma.reshape([1, 1, 1, 1]);
        conv2d_weights(
            input,
            weight,
            self.bias.as_ref().map(|bias| bias.val()),
            1,
            kernel / 2,
        )
    }
}

/// Normalises `input` with stored statistics, per channel.
fn normalize_channels(input: Tensor<4>, mean: Tensor<1>, var: Tensor<1>, eps: f64) -> Tensor<4> {
    let channels = mean.dims()[0];
    let mean = mean.reshape([1, channels, 1, 1]);
    let std = (var + eps).sqrt().reshape([1, channels, 1, 1]);
    (input - mean) / std
}

/// Class-conditional BatchNorm: normalisation with stored statistics, then a gain `1 + gain(y)`
/// and a bias `bias(y)` computed from the conditioning vector `y` by bias-free spectrally
/// normalised linear maps.
#[derive(Module, Debug)]
pub struct ConditionalBatchNorm {
    pub gain: SnLinear,
    pub bias: SnLinear,
    pub stored_mean: Param<Tensor<1>>,
    pub stored_var: Param<Tensor<1>>,
    #[module(skip)]
    eps: f64,
}

impl ConditionalBatchNorm {
    pub fn new(
        channels: usize,
        condition: usize,
        bn_eps: f64,
        sn_eps: f64,
        device: &Device,
    ) -> Self {
        ConditionalBatchNorm {
            gain: SnLinear::new(condition, channels, false, sn_eps, device),
            bias: SnLinear::new(condition, channels, false, sn_eps, device),
            stored_mean: buffer(Tensor::zeros([channels], device)),
            stored_var: buffer(Tensor::ones([channels], device)),
            eps: bn_eps,
        }
    }

    /// # Shapes
    /// - `input`: `[batch, channels, height, width]`
    /// - `condition`: `[batch, condition]`
    pub fn forward(&self, input: Tensor<4>, condition: Tensor<2>) -> Tensor<4> {
        let [batch, channels, _, _] = input.dims();
        let gain = self.gain.forward(condition.clone()).add_scalar(1.0);
        let bias = self.bias.forward(condition);
        let normalized = normalize_channels(
            input,
            self.stored_mean.val(),
            self.stored_var.val(),
            self.eps,
        );
        normalized * gain.reshape([batch, channels, 1, 1]) + bias.reshape([batch, channels, 1, 1])
    }
}

/// BatchNorm with stored statistics and a learned per-channel gain and bias (BigGAN-PyTorch's
/// unconditional `bn`, used before the output convolution).
#[derive(Module, Debug)]
pub struct StoredBatchNorm {
    pub gain: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub stored_mean: Param<Tensor<1>>,
    pub stored_var: Param<Tensor<1>>,
    #[module(skip)]
    eps: f64,
}

impl StoredBatchNorm {
    pub fn new(channels: usize, eps: f64, device: &Device) -> Self {
        StoredBatchNorm {
            gain: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            stored_mean: buffer(Tensor::zeros([channels], device)),
            stored_var: buffer(Tensor::ones([channels], device)),
            eps,
        }
    }

    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let channels = input.dims()[1];
        let normalized = normalize_channels(
            input,
            self.stored_mean.val(),
            self.stored_var.val(),
            self.eps,
        );
        normalized * self.gain.val().reshape([1, channels, 1, 1])
            + self.bias.val().reshape([1, channels, 1, 1])
    }
}

/// Self-attention over the positions of a feature map (SAGAN): queries `theta` and keys `phi`
/// with `channels / 8` channels, values `g` with `channels / 2`, keys and values max-pooled
/// 2x2, output projection `o`, added to the input with the learned weight `gamma`.
#[derive(Module, Debug)]
pub struct Attention {
    pub theta: SnConv2d,
    pub phi: SnConv2d,
    pub g: SnConv2d,
    pub o: SnConv2d,
    pub gamma: Param<Tensor<1>>,
}

impl Attention {
    pub fn new(channels: usize, sn_eps: f64, device: &Device) -> Self {
        Attention {
            theta: SnConv2d::new(channels, channels / 8, 1, false, sn_eps, device),
            phi: SnConv2d::new(channels, channels / 8, 1, false, sn_eps, device),
            g: SnConv2d::new(channels, channels / 2, 1, false, sn_eps, device),
            o: SnConv2d::new(channels / 2, channels, 1, false, sn_eps, device),
            gamma: Param::from_tensor(Tensor::zeros([1], device)),
        }
    }

    /// # Shapes
    /// - `input`: `[batch, channels, height, width]`, height and width even
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let [batch, channels, height, width] = input.dims();
        let positions = height * width;
        let theta = self.theta.forward(input.clone());
        let phi = max_pool_2x2(self.phi.forward(input.clone()));
        let g = max_pool_2x2(self.g.forward(input.clone()));

        let theta = theta.reshape([batch, channels / 8, positions]);
        let phi = phi.reshape([batch, channels / 8, positions / 4]);
        let g = g.reshape([batch, channels / 2, positions / 4]);
        // [batch, positions, positions / 4]: for each query position, weights over key positions.
        let beta = softmax(theta.swap_dims(1, 2).matmul(phi), 2);
        let attended = g.matmul(beta.swap_dims(1, 2));
        let attended = attended.reshape([batch, channels / 2, height, width]);

        let output = self.o.forward(attended);
        input + output * self.gamma.val().reshape([1, 1, 1, 1])
    }
}

fn max_pool_2x2(input: Tensor<4>) -> Tensor<4> {
    burn::tensor::module::max_pool2d(
        input,
        burn::tensor::ops::MaxPoolOptions::new([2, 2]).with_stride([2, 2]),
    )
}

/// Doubles height and width by repeating every pixel (nearest-neighbour upsampling).
pub fn upsample_nearest_2x(input: Tensor<4>) -> Tensor<4> {
    let [batch, channels, height, width] = input.dims();
    input
        .reshape([batch, channels, height, 1, width, 1])
        .expand([batch, channels, height, 2, width, 2])
        .reshape([batch, channels, 2 * height, 2 * width])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_value_of_diagonal_matrix() {
        let device = Device::flex();
        let weight = Tensor::<2>::from_floats([[3.0, 0.0], [0.0, 1.0]], &device);
        // A start vector close to the top left singular vector converges in one step.
        let u = Tensor::<2>::from_floats([[0.9, 0.1]], &device);
        let sigma: f32 = singular_value(weight, u, 1e-12).into_scalar();
        assert!(
            (sigma - 3.0).abs() < 0.05,
            "estimated {sigma}, expected about 3"
        );
    }

    #[test]
    fn upsampling_repeats_pixels() {
        let device = Device::flex();
        let input = Tensor::<4>::from_floats([[[[1.0, 2.0], [3.0, 4.0]]]], &device);
        let output = upsample_nearest_2x(input)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(
            output,
            vec![
                1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0
            ]
        );
    }
}
