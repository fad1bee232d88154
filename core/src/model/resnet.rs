//! ResNet-18 without its classifier, in torchvision's layout. A 7x7 stride-2 stem with
//! BatchNorm, ReLU and 3x3 stride-2 max-pooling comes first. Four stages of two basic blocks
//! follow (64, 128, 256 and 512 channels); stages 2-4 start with stride 2 and a 1x1 projection
//! shortcut. Global average pooling gives a 512-d embedding. Convolutions have no bias.
//!
//! Field names follow torchvision's parameter names (`conv1`, `bn1`, `layer1`..`layer4`,
//! `downsample`), so a torchvision checkpoint maps onto this module by name.

use crate::ops::conv2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Builds a [`ResNet`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Basic blocks per stage: `[2, 2, 2, 2]` is ResNet-18.
    #[config(default = "[2, 2, 2, 2]")]
    pub blocks: [usize; 4],
}

/// A projection shortcut: 1x1 convolution then BatchNorm.
#[derive(Module, Debug)]
pub struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

/// Two 3x3 convolutions with BatchNorm, added to the (projected) input, then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<Downsample>,
}

/// The ResNet backbone.
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: MaxPool2d,
    layer1: Vec<BasicBlock>,
    layer2: Vec<BasicBlock>,
    layer3: Vec<BasicBlock>,
    layer4: Vec<BasicBlock>,
}

/// Returns a bias-free convolution initialised as torchvision does: Kaiming normal with the
/// fan-out of a ReLU layer.
fn conv(channels: [usize; 2], kernel: usize, stride: usize, device: &Device) -> Conv2d {
    let padding = kernel / 2;
    Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

impl BasicBlock {
    fn new(in_channels: usize, out_channels: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || in_channels != out_channels).then(|| Downsample {
            conv: conv([in_channels, out_channels], 1, stride, device),
            bn: BatchNormConfig::new(out_channels).init(device),
        });
        BasicBlock {
            conv1: conv([in_channels, out_channels], 3, stride, device),
            bn1: BatchNormConfig::new(out_channels).init(device),
            conv2: conv([out_channels, out_channels], 3, 1, device),
            bn2: BatchNormConfig::new(out_channels).init(device),
            downsample,
        }
    }

    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(down) => down.bn.forward(conv2d(input.clone(), &down.conv)),
            None => input.clone(),
        };
        let x = relu(self.bn1.forward(conv2d(input, &self.conv1)));
        let x = self.bn2.forward(conv2d(x, &self.conv2));
        relu(x + shortcut)
    }
}

impl ResNetConfig {
    /// Creates a ResNet with freshly initialised weights on `device`.
    pub fn init(&self, device: &Device) -> ResNet {
        let widths = [64, 128, 256, 512];
        let mut in_channels = 64;
        let mut stages = widths
            .iter()
            .zip(self.blocks)
            .enumerate()
            .map(|(i, (&width, count))| {
                let stage: Vec<BasicBlock> = (0..count)
                    .map(|j| {
                        let stride = if i > 0 && j == 0 { 2 } else { 1 };
                        let block = BasicBlock::new(in_channels, width, stride, device);
                        in_channels = width;
                        block
                    })
                    .collect();
                stage
            });
        let (layer1, layer2, layer3, layer4) = (
            stages.next().unwrap(),
            stages.next().unwrap(),
            stages.next().unwrap(),
            stages.next().unwrap(),
        );
        ResNet {
            conv1: conv([3, 64], 7, 2, device),
            bn1: BatchNormConfig::new(64).init(device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
        }
    }
}

impl ResNet {
    /// Embeds a batch of images.
    ///
    /// # Shapes
    /// - `images`: `[batch, 3, height, width]`, ImageNet-normalised
    /// - output: `[batch, 512]`
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = relu(self.bn1.forward(conv2d(images, &self.conv1)));
        let mut x = self.maxpool.forward(x);
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward(x);
        }
        let [batch, channels, _, _] = x.dims();
        x.mean_dim(3).mean_dim(2).reshape([batch, channels])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_parameter_count_matches_torchvision() {
        let _rng = crate::test_support::lock_rng();
        // torchvision's resnet18 has 11,689,512 parameters, of which its fc layer has
        // 512 * 1000 + 1000. `num_params` also counts the running mean and variance of the 4,800
        // BatchNorm channels.
        let model = ResNetConfig::new().init(&Device::flex());
        let without_fc = 11_689_512 - 513_000;
        assert_eq!(without_fc, 11_176_512);
        assert_eq!(model.num_params(), without_fc + 2 * 4_800);
    }

    #[test]
    fn embedding_is_512_at_84_and_224() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let model = ResNetConfig::new().init(&device);
        for side in [84, 224] {
            let images = Tensor::<4>::zeros([2, 3, side, side], &device);
            assert_eq!(model.forward(images).dims(), [2, 512], "side {side}");
        }
    }
}
