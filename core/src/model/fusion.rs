//! The image fusion network: it looks at an original support image and one generated image of
//! the same photo and predicts a 3x3 grid of mixing weights.
//!
//! Two encoders embed the original (f) and the generated image (g). A linear head maps
//! `concat(f(x), g(x_g))`, original first, to 9 values read row-major as the grid. The weights
//! are not squashed into [0, 1].
//!
//! MetaIRNet has separate encoders. MetaIRNet++ "Siamese" shares one encoder (f = g), which
//! removes a third of the parameters with ResNet-18 encoders.
//!
//! The head starts with zero weights and a bias of 0.5, so every fused image starts as an even
//! mix of the two images. A default-initialised head on Conv4 embeddings (1600 values each,
//! of order 1) gave initial weights with a standard deviation near 8, fused images far outside
//! the range of photos, and a training loss ten times that of ProtoNet. With zero weights the
//! encoders get no gradient in the first step, only the head does.

use super::backbone::{Backbone, BackboneKind};
use crate::ops::grid_fusion;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

/// Builds a [`FusionNet`].
#[derive(Config, Debug)]
pub struct FusionNetConfig {
    /// The encoders' network.
    pub encoder: BackboneKind,
    /// One encoder for both images (MetaIRNet++ Siamese) instead of two.
    #[config(default = false)]
    pub siamese: bool,
    /// Input side in pixels, which fixes the encoder's embedding size and so the head's input.
    pub side: usize,
}

/// The fusion network: two encoders (one when Siamese) and a linear head.
#[derive(Module, Debug)]
pub struct FusionNet {
    /// Encoder f of the original images, and of the generated ones too when Siamese.
    pub original: Backbone,
    /// Encoder g of the generated images, or `None` when Siamese.
    pub generated: Option<Backbone>,
    /// Head `Linear(2 * D, 9)` with D the encoder's embedding size.
    pub head: Linear,
}

impl FusionNetConfig {
    /// Creates a fusion network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> FusionNet {
        let dim = self.encoder.embedding_dim(self.side);
        let mut head = LinearConfig::new(2 * dim, 9)
            .with_initializer(Initializer::Zeros)
            .init(device);
        head.bias = head
            .bias
            .map(|bias| bias.map(|values| values.ones_like().mul_scalar(0.5)));
        FusionNet {
            original: self.encoder.init(device),
            generated: (!self.siamese).then(|| self.encoder.init(device)),
            head,
        }
    }
}

impl FusionNet {
    /// Predicts the 3x3 grid weights of each (original, generated) pair.
    ///
    /// # Shapes
    /// - `original`, `generated`: `[pairs, 3, side, side]`
    /// - output: `[pairs, 9]`, row-major over the grid
    pub fn weights(&self, original: Tensor<4>, generated: Tensor<4>) -> Tensor<2> {
        let f = self.original.forward(original);
        let g = match &self.generated {
            Some(encoder) => encoder.forward(generated),
            None => self.original.forward(generated),
        };

        self.head.forward(Tensor::cat(vec![f, g], 1))
    }

    /// Fuses each original with its generated image and returns the fused images with the
    /// weights used.
    ///
    /// # Shapes
    /// - `original`, `generated`: `[pairs, 3, side, side]`
    /// - output: `[pairs, 3, side, side]` and `[pairs, 9]`
    pub fn fuse(&self, original: Tensor<4>, generated: Tensor<4>) -> (Tensor<4>, Tensor<2>) {
        let weights = self.weights(original.clone(), generated.clone());
        let fused = grid_fusion(original, generated, weights.clone());
        (fused, weights)
    }

    /// Returns whether the two images share one encoder.
    pub fn is_siamese(&self) -> bool {
        self.generated.is_none()
    }

    /// Returns the encoders' network.
    pub fn encoder_kind(&self) -> BackboneKind {
        self.original.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backbone::trainable_parameters;

    #[test]
    fn parameter_counts_match_resnet18() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let backbone = trainable_parameters(&BackboneKind::Resnet18.init(&device));
        let separate = FusionNetConfig::new(BackboneKind::Resnet18, 224).init(&device);
        let siamese = FusionNetConfig::new(BackboneKind::Resnet18, 224)
            .with_siamese(true)
            .init(&device);
        assert_eq!(backbone + trainable_parameters(&separate), 33_538_761);
        assert_eq!(backbone + trainable_parameters(&siamese), 22_362_249);
    }

    #[test]
    fn fusion_starts_even_and_trains_head() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex().autodiff();
        device.seed(5);
        let net = FusionNetConfig::new(BackboneKind::Conv4, 84).init(&device);
        let original = Tensor::<4>::random(
            [2, 3, 84, 84],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let generated = Tensor::<4>::random(
            [2, 3, 84, 84],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let (fused, weights) = net.fuse(original, generated.clone());
        assert_eq!(weights.dims(), [2, 9]);
        let initial = weights.into_data().try_to_vec::<f32>().unwrap();
        assert!(initial.iter().all(|&w| w == 0.5), "an untrained head mixes evenly");
        assert_eq!(fused.dims(), [2, 3, 84, 84]);
        let gradients = fused.sum().backward();
        let head_gradient = net.head.weight.grad(&gradients).expect("head gradient");
        let norm = head_gradient.abs().sum().into_scalar::<f32>();
        assert!(norm > 0.0, "the head gets no gradient");
        assert!(
            generated.grad(&gradients).is_none(),
            "generated images are constants"
        );
    }
}
