//! The Conv4 backbone of few-shot learning: four blocks of 3x3 convolution (padding 1),
//! BatchNorm, ReLU and 2x2 max-pooling, 64 channels each. An 84x84 input gives a 64x5x5 map,
//! flattened to a 1600-d embedding.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d, Relu};
use burn::prelude::*;

/// Builds a [`Conv4`].
#[derive(Config, Debug)]
pub struct Conv4Config {
    /// Channels of every block.
    #[config(default = 64)]
    pub channels: usize,
    /// Number of blocks.
    #[config(default = 4)]
    pub blocks: usize,
}

/// One Conv -> BatchNorm -> ReLU -> MaxPool block.
#[derive(Module, Debug)]
pub struct ConvBlock {
    conv: Conv2d,
    norm: BatchNorm,
    activation: Relu,
    pool: MaxPool2d,
}

impl ConvBlock {
    fn new(in_channels: usize, out_channels: usize, device: &Device) -> Self {
        // Weights ~ N(0, 2 / (3 * 3 * out_channels)), the initialisation of the standard
        // few-shot Conv4; BatchNorm starts at gamma 1, beta 0.
        let initializer = Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        };
        let conv = Conv2dConfig::new([in_channels, out_channels], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_initializer(initializer)
            .init(device);
        ConvBlock {
            conv,
            norm: BatchNormConfig::new(out_channels).init(device),
            activation: Relu::new(),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }

    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = crate::ops::conv2d(input, &self.conv);
        let x = self.norm.forward(x);
        let x = self.activation.forward(x);
        self.pool.forward(x)
    }
}

/// The Conv4 backbone.
#[derive(Module, Debug)]
pub struct Conv4 {
    blocks: Vec<ConvBlock>,
}

impl Conv4Config {
    /// Creates a Conv4 with freshly initialised weights on `device`.
    pub fn init(&self, device: &Device) -> Conv4 {
        let blocks = (0..self.blocks)
            .map(|i| {
                let in_channels = if i == 0 { 3 } else { self.channels };
                ConvBlock::new(in_channels, self.channels, device)
            })
            .collect();
        Conv4 { blocks }
    }
}

impl Conv4Config {
    /// Returns the size in bytes of the largest activation of a forward pass over `images`
    /// images of `side x side` pixels: the f32 output of the first convolution.
    pub fn largest_activation_bytes(&self, images: usize, side: usize) -> u64 {
        (images * self.channels * side * side * 4) as u64
    }
}

impl Conv4 {
    /// Embeds a batch of images.
    ///
    /// BatchNorm uses batch statistics when `images` is on an autodiff device and the module is
    /// in training mode, and running statistics otherwise.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, height, width]`, ImageNet-normalised
    /// - output: `[batch, channels * (height / 16) * (width / 16)]` (1600 at 84x84)
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = images;
        for block in &self.blocks {
            x = block.forward(x);
        }
        x.flatten(1, 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_is_1600_at_84() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let model = Conv4Config::new().init(&device);
        let images = Tensor::<4>::zeros([2, 3, 84, 84], &device);
        assert_eq!(model.forward(images).dims(), [2, 1600]);
    }

    #[test]
    fn parameter_count_matches_standard_conv4() {
        let _rng = crate::test_support::lock_rng();
        // Per block: 3x3 conv weights and bias, BatchNorm gamma and beta: 113,088 trainable
        // values. `num_params` also counts BatchNorm's running mean and variance.
        let first = 3 * 64 * 9 + 64 + 2 * 64;
        let other = 64 * 64 * 9 + 64 + 2 * 64;
        let running_statistics = 4 * 2 * 64;
        let model = Conv4Config::new().init(&Device::flex());
        assert_eq!(first + 3 * other, 113_088);
        assert_eq!(model.num_params(), first + 3 * other + running_statistics);
    }

    /// Autodiff gradients of the ProtoNet loss must match central finite differences of the
    /// same loss, for weights in every block (training-mode BatchNorm included).
    #[test]
    fn gradients_match_finite_differences() {
        let _rng = crate::test_support::lock_rng();
        use crate::model::{protonet_logits, protonet_loss};
        use burn::module::Param;

        let device = Device::flex().autodiff();
        device.seed(11);
        let model = Conv4Config::new().init(&device);
        let (n_way, n_query) = (3, 2);
        let count = n_way + n_way * n_query;
        let pixels: Vec<f32> = (0..count * 3 * 84 * 84)
            .map(|i| (((i * 2_654_435_761usize) >> 9) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let labels: Vec<i64> = (0..n_way * n_query).map(|i| (i / n_query) as i64).collect();
        let loss_of = |model: &Conv4| {
            let images = Tensor::<4>::from_data(
                TensorData::new(pixels.clone(), [count, 3, 84, 84]),
                &device,
            );
            let label_tensor = Tensor::<1, Int>::from_data(
                TensorData::new(labels.clone(), [labels.len()]),
                &device,
            );
            let embeddings = model.forward(images);
            protonet_loss(protonet_logits(embeddings, n_way, n_way), label_tensor)
        };

        let loss = loss_of(&model);
        let gradients = loss.backward();
        for block in 0..4 {
            let weight = model.blocks[block].conv.weight.val();
            let analytic = weight
                .grad(&gradients)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let values = weight.to_data().try_to_vec::<f32>().unwrap();
            // The entry with the largest gradient, where the finite difference is least noisy.
            let index = (0..analytic.len())
                .max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs()))
                .unwrap();
            let epsilon = 1e-3;
            let shifted = |delta: f32| {
                let mut changed = values.clone();
                changed[index] += delta;
                let mut copy = model.clone();
                let tensor =
                    Tensor::<4>::from_data(TensorData::new(changed, weight.dims()), &device);
                copy.blocks[block].conv.weight = Param::from_tensor(tensor);
                loss_of(&copy).into_scalar::<f32>() as f64
            };
            let numeric = (shifted(epsilon) - shifted(-epsilon)) / (2.0 * epsilon as f64);
            let expected = analytic[index] as f64;
            let error = (numeric - expected).abs() / expected.abs().max(1e-6);
            assert!(
                error < 0.05,
                "block {block}: autodiff {expected} vs finite difference {numeric}"
            );
        }
    }
}
