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
        let x = self.conv.forward(input);
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
        let device = Device::flex();
        let model = Conv4Config::new().init(&device);
        let images = Tensor::<4>::zeros([2, 3, 84, 84], &device);
        assert_eq!(model.forward(images).dims(), [2, 1600]);
    }

    #[test]
    fn parameter_count_matches_standard_conv4() {
        // Per block: 3x3 conv weights and bias, BatchNorm gamma and beta: 113,088 trainable
        // values. `num_params` also counts BatchNorm's running mean and variance.
        let first = 3 * 64 * 9 + 64 + 2 * 64;
        let other = 64 * 64 * 9 + 64 + 2 * 64;
        let running_statistics = 4 * 2 * 64;
        let model = Conv4Config::new().init(&Device::flex());
        assert_eq!(first + 3 * other, 113_088);
        assert_eq!(model.num_params(), first + 3 * other + running_statistics);
    }
}
