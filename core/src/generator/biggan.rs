//! BigGAN's generator (Brock, Donahue and Simonyan, ICLR 2019) in the layout of BigGAN-PyTorch,
//! the code that trained the ImageNet `G_ema.pth` checkpoints.
//!
//! A hierarchical latent `z` is split into equal chunks. The first goes through a linear layer
//! to a `4x4` map. Each of the others is concatenated with the shared class vector `y` and
//! conditions the BatchNorms of one residual block. Every block doubles the resolution. A
//! self-attention layer follows the block that reaches `attention_resolution`, and BatchNorm,
//! ReLU, a 3x3 convolution and tanh produce the RGB image in [-1, 1].
//!
//! One implementation serves every width and resolution: BigGAN-128 is `channels = 96`,
//! `resolution = 128`, and reduced configurations only change those numbers.
//!
//! The generator also carries a per-channel scale and shift after the first linear layer,
//! initialised to the identity. Checkpoints do not contain them; one-image fine-tuning trains
//! them.

use crate::generator::layers::{
    Attention, ConditionalBatchNorm, SnConv2d, SnLinear, StoredBatchNorm, upsample_nearest_2x,
};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Builds a [`BigGan`] generator.
#[derive(Config, Debug, PartialEq)]
pub struct BigGanConfig {
    /// Width multiplier `G_ch` (96 for the ImageNet BigGAN-128 checkpoint).
    #[config(default = 96)]
    pub channels: usize,
    /// Output side in pixels: 32, 64, 128 or 256.
    #[config(default = 128)]
    pub resolution: usize,
    /// Size of the latent `z`; it must split evenly into one chunk per block plus one.
    #[config(default = 120)]
    pub dim_z: usize,
    /// Size of the shared class vector.
    #[config(default = 128)]
    pub shared_dim: usize,
    /// Number of classes of the shared class embedding.
    #[config(default = 1000)]
    pub n_classes: usize,
    /// Output side of the block followed by self-attention; 0 for none.
    #[config(default = 64)]
    pub attention_resolution: usize,
    /// Epsilon of the BatchNorm layers.
    #[config(default = 1e-5)]
    pub bn_eps: f64,
    /// Epsilon of the spectral normalisation (BigGAN-PyTorch's `SN_eps`).
    #[config(default = 1e-6)]
    pub sn_eps: f64,
}

/// An invalid [`BigGanConfig`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BigGanConfigError {
    #[error("invalid BigGAN resolution {0}: use 32, 64, 128 or 256")]
    Resolution(usize),
    #[error(
        "invalid BigGAN dim_z {dim_z}: it must split evenly into {chunks} chunks (one per block plus one) at resolution {resolution}"
    )]
    DimZ {
        dim_z: usize,
        chunks: usize,
        resolution: usize,
    },
    #[error(
        "invalid BigGAN channel width {0}: it must be a positive multiple of 16 when self-attention is on, or positive without it"
    )]
    Channels(usize),
}

impl BigGanConfig {
    /// Returns the input and output width multipliers of each block, as BigGAN-PyTorch's
    /// architecture table gives them for this resolution.
    pub fn block_multipliers(&self) -> Result<Vec<(usize, usize)>, BigGanConfigError> {
        let (inputs, outputs): (&[usize], &[usize]) = match self.resolution {
            256 => (&[16, 16, 8, 8, 4, 2], &[16, 8, 8, 4, 2, 1]),
            128 => (&[16, 16, 8, 4, 2], &[16, 8, 4, 2, 1]),
            64 => (&[16, 16, 8, 4], &[16, 8, 4, 2]),
            32 => (&[4, 4, 4], &[4, 4, 4]),
            other => return Err(BigGanConfigError::Resolution(other)),
        };
        Ok(inputs
            .iter()
            .copied()
            .zip(outputs.iter().copied())
            .collect())
    }

    /// Returns the size of each latent chunk.
    ///
    /// # Errors
    /// An unknown resolution, or a `dim_z` that does not split evenly.
    pub fn z_chunk(&self) -> Result<usize, BigGanConfigError> {
        let chunks = self.block_multipliers()?.len() + 1;
        if self.dim_z == 0 || self.dim_z % chunks != 0 {
            return Err(BigGanConfigError::DimZ {
                dim_z: self.dim_z,
                chunks,
                resolution: self.resolution,
            });
        }
        Ok(self.dim_z / chunks)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), BigGanConfigError> {
        self.z_chunk()?;
        let attention = self.attention_resolution != 0;
        if self.channels == 0 || (attention && self.channels % 16 != 0) {
            return Err(BigGanConfigError::Channels(self.channels));
        }
        Ok(())
    }

    /// Creates a generator with random weights (BigGAN-PyTorch's N(0, 0.02) initialisation,
    /// identity BatchNorms) on `device`.
    ///
    /// # Panics
    /// On an invalid configuration; call [`BigGanConfig::validate`] first for an error value.
    pub fn init(&self, device: &Device) -> BigGan {
        if let Err(error) = self.validate() {
            panic!("{error}");
        }
        let multipliers = self.block_multipliers().expect("validated");
        let z_chunk = self.z_chunk().expect("validated");
        let condition = self.shared_dim + z_chunk;
        let ch = self.channels;
        let first = multipliers[0].0 * ch;

        let mut side = 4;
        let blocks = multipliers
            .iter()
            .map(|&(inputs, outputs)| {
                side *= 2;
                let attention = (side == self.attention_resolution)
                    .then(|| Attention::new(outputs * ch, self.sn_eps, device));
                GeneratorStage {
                    block: GBlock::new(inputs * ch, outputs * ch, condition, self, device),
                    attention,
                }
            })
            .collect();
        let last = multipliers.last().expect("at least one block").1 * ch;

        BigGan {
            shared: Param::from_tensor(Tensor::random(
                [self.n_classes, self.shared_dim],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            )),
            linear: SnLinear::new(z_chunk, first * 16, true, self.sn_eps, device),
            linear_scale: Param::from_tensor(Tensor::ones([first], device)),
            linear_shift: Param::from_tensor(Tensor::zeros([first], device)),
            blocks,
            output_layer: OutputLayer {
                bn: StoredBatchNorm::new(last, self.bn_eps, device),
                conv: SnConv2d::new(last, 3, 3, true, self.sn_eps, device),
            },
            z_chunk,
        }
    }
}

/// A residual block: conditional BatchNorm, ReLU, 2x upsampling, 3x3 convolution, conditional
/// BatchNorm, ReLU, 3x3 convolution, plus the upsampled input through a 1x1 convolution.
#[derive(Module, Debug)]
pub struct GBlock {
    pub bn1: ConditionalBatchNorm,
    pub conv1: SnConv2d,
    pub bn2: ConditionalBatchNorm,
    pub conv2: SnConv2d,
    pub conv_sc: SnConv2d,
}

impl GBlock {
    fn new(
        inputs: usize,
        outputs: usize,
        condition: usize,
        config: &BigGanConfig,
        device: &Device,
    ) -> Self {
        let (bn_eps, sn_eps) = (config.bn_eps, config.sn_eps);
        GBlock {
            bn1: ConditionalBatchNorm::new(inputs, condition, bn_eps, sn_eps, device),
            conv1: SnConv2d::new(inputs, outputs, 3, true, sn_eps, device),
            bn2: ConditionalBatchNorm::new(outputs, condition, bn_eps, sn_eps, device),
            conv2: SnConv2d::new(outputs, outputs, 3, true, sn_eps, device),
            conv_sc: SnConv2d::new(inputs, outputs, 1, true, sn_eps, device),
        }
    }

    /// # Shapes
    /// - `input`: `[batch, inputs, side, side]`
    /// - `condition`: `[batch, shared_dim + z_chunk]`
    /// - output: `[batch, outputs, 2 * side, 2 * side]`
    pub fn forward(&self, input: Tensor<4>, condition: Tensor<2>) -> Tensor<4> {
        let h = relu(self.bn1.forward(input.clone(), condition.clone()));
        let h = upsample_nearest_2x(h);
        let h = self.conv1.forward(h);
        let h = relu(self.bn2.forward(h, condition));
        let h = self.conv2.forward(h);

        let shortcut = self.conv_sc.forward(upsample_nearest_2x(input));
        h + shortcut
    }
}

/// One block and, at the attention resolution, the self-attention after it.
#[derive(Module, Debug)]
pub struct GeneratorStage {
    pub block: GBlock,
    pub attention: Option<Attention>,
}

/// BatchNorm, ReLU and the 3x3 convolution to RGB.
#[derive(Module, Debug)]
pub struct OutputLayer {
    pub bn: StoredBatchNorm,
    pub conv: SnConv2d,
}

/// The BigGAN generator.
#[derive(Module, Debug)]
pub struct BigGan {
    /// The shared class embedding, `[n_classes, shared_dim]`.
    pub shared: Param<Tensor<2>>,
    pub linear: SnLinear,
    /// Per-channel scale after the first linear layer (1 in checkpoints).
    pub linear_scale: Param<Tensor<1>>,
    /// Per-channel shift after the first linear layer (0 in checkpoints).
    pub linear_shift: Param<Tensor<1>>,
    pub blocks: Vec<GeneratorStage>,
    pub output_layer: OutputLayer,
    #[module(skip)]
    z_chunk: usize,
}

impl BigGan {
    /// Returns the class vectors of `classes` from the shared embedding.
    ///
    /// # Shapes
    /// - output: `[classes.len(), shared_dim]`
    pub fn class_vectors(&self, classes: &[usize]) -> Tensor<2> {
        let table = self.shared.val();
        let device = table.device();
        let indices: Vec<i64> = classes.iter().map(|&c| c as i64).collect();
        let indices =
            Tensor::<1, Int>::from_data(TensorData::new(indices, [classes.len()]), &device);
        table.select(0, indices)
    }

    /// Returns the mean of all class vectors, the starting point of one-image fine-tuning.
    ///
    /// # Shapes
    /// - output: `[1, shared_dim]`
    pub fn mean_class_vector(&self) -> Tensor<2> {
        self.shared.val().mean_dim(0)
    }

    /// Generates images from latents `z` and class vectors `y`.
    ///
    /// # Shapes
    /// - `z`: `[batch, dim_z]`
    /// - `y`: `[batch, shared_dim]`
    /// - output: `[batch, 3, resolution, resolution]`, in [-1, 1]
    pub fn forward(&self, z: Tensor<2>, y: Tensor<2>) -> Tensor<4> {
        let [batch, dim_z] = z.dims();
        let chunks = z.chunk(dim_z / self.z_chunk, 1);
        let conditions: Vec<Tensor<2>> = chunks[1..]
            .iter()
            .map(|chunk| Tensor::cat(vec![y.clone(), chunk.clone()], 1))
            .collect();

        let h = self.linear.forward(chunks[0].clone());
        let channels = self.linear_scale.dims()[0];
        let h = h.reshape([batch, channels, 4, 4]);
        let mut h = h * self.linear_scale.val().reshape([1, channels, 1, 1])
            + self.linear_shift.val().reshape([1, channels, 1, 1]);

        for (stage, condition) in self.blocks.iter().zip(conditions) {
            h = stage.block.forward(h, condition);
            if let Some(attention) = &stage.attention {
                h = attention.forward(h);
            }
        }

        let h = relu(self.output_layer.bn.forward(h));
        self.output_layer.conv.forward(h).tanh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_shape_and_range() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        for (resolution, attention) in [(32, 0), (64, 64)] {
            let config = BigGanConfig::new()
                .with_channels(16)
                .with_resolution(resolution)
                .with_dim_z(20 * (if resolution == 32 { 4 } else { 5 }))
                .with_n_classes(10)
                .with_attention_resolution(attention);
            let model = config.init(&device);
            let z = Tensor::<2>::random(
                [2, config.dim_z],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let y = model.class_vectors(&[1, 7]);
            let images = model.forward(z, y);
            assert_eq!(images.dims(), [2, 3, resolution, resolution]);
            let values = images.into_data().try_to_vec::<f32>().unwrap();
            assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn invalid_configurations_are_named() {
        let _rng = crate::test_support::lock_rng();
        let config = BigGanConfig::new().with_resolution(100);
        assert_eq!(config.validate(), Err(BigGanConfigError::Resolution(100)));
        let config = BigGanConfig::new().with_dim_z(100);
        assert_eq!(
            config.validate(),
            Err(BigGanConfigError::DimZ {
                dim_z: 100,
                chunks: 6,
                resolution: 128
            })
        );
    }
}
