//! The few-shot classifier: a backbone with the ProtoNet head, optionally with a fusion network
//! (MetaIRNet), and the ways extra images or embeddings can join an episode's support set.

use super::backbone::{Backbone, BackboneKind, trainable_parameters};
use super::fusion::{FusionNet, FusionNetConfig};
use super::protonet::query_logits;
use crate::ops::{block_dropout, grid_fusion};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A backbone with the ProtoNet head and, for MetaIRNet, the fusion network.
#[derive(Module, Debug)]
pub struct FewShotNet {
    /// The embedding network of support and query images.
    pub backbone: Backbone,
    /// The fusion network, for MetaIRNet; `None` for ProtoNet.
    pub fusion: Option<FusionNet>,
}

/// The extra entries that join each support image in the support set before the prototypes
/// are averaged. Queries are never changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupportAugment {
    /// The support images alone.
    #[default]
    None,
    /// A mirrored copy of each support image.
    Flip,
    /// `copies` embeddings of each support image plus 0.01 N(0, 1) noise.
    Gaussian,
    /// `copies` generated images of each support photo, as they are.
    Generated,
    /// `copies` mixes `l * x + (1 - l) * x_g`, one l per episode.
    Mixup,
    /// `copies` images fused by the fusion network (MetaIRNet).
    Fusion,
}

impl fmt::Display for SupportAugment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SupportAugment::None => "none",
            SupportAugment::Flip => "flip",
            SupportAugment::Gaussian => "gaussian",
            SupportAugment::Generated => "generated",
            SupportAugment::Mixup => "mixup",
            SupportAugment::Fusion => "fusion",
        })
    }
}

impl std::str::FromStr for SupportAugment {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(SupportAugment::None),
            "flip" => Ok(SupportAugment::Flip),
            "gaussian" => Ok(SupportAugment::Gaussian),
            "generated" => Ok(SupportAugment::Generated),
            "mixup" => Ok(SupportAugment::Mixup),
            "fusion" => Ok(SupportAugment::Fusion),
            other => Err(format!(
                "unknown support augmentation {other:?}; expected none, flip, gaussian, generated, mixup or fusion"
            )),
        }
    }
}

impl SupportAugment {
    /// Returns whether the augmentation reads generated images.
    pub fn needs_generated(self) -> bool {
        matches!(
            self,
            SupportAugment::Generated | SupportAugment::Mixup | SupportAugment::Fusion
        )
    }

    /// Returns whether the augmentation adds `n_aug` copies per support image, so that
    /// `n_aug = 0` would leave the support set unchanged. `flip` always adds one copy.
    pub fn uses_copies(self) -> bool {
        !matches!(self, SupportAugment::None | SupportAugment::Flip)
    }

    /// Returns the number of extra support entries per support image for `copies`.
    pub fn extra_per_support(self, copies: usize) -> usize {
        match self {
            SupportAugment::None => 0,
            SupportAugment::Flip => 1,
            _ => copies,
        }
    }

    /// Returns the number of extra support images (entries that go through the backbone) per
    /// support image for `copies`; `gaussian` adds embeddings, not images.
    pub fn extra_images_per_support(self, copies: usize) -> usize {
        match self {
            SupportAugment::Gaussian => 0,
            other => other.extra_per_support(copies),
        }
    }
}

/// The images of one episode on a device.
pub struct EpisodeInput {
    /// `[n_way * n_shot, 3, side, side]`, class-major.
    pub support: Tensor<4>,
    /// `[n_query_total, 3, side, side]`.
    pub query: Tensor<4>,
    /// `[n_way * n_shot * copies, 3, side, side]`: the generated images of support image i are
    /// rows `i * copies .. (i + 1) * copies`. Needed by the augmentations that read generated
    /// images.
    pub generated: Option<Tensor<4>>,
    /// Number of classes in the episode.
    pub n_way: usize,
}

/// The support augmentation of one episode, with its random draws already made.
#[derive(Clone, Debug, Default)]
pub struct EpisodeAugment {
    /// The support augmentation.
    pub kind: SupportAugment,
    /// Extra entries per support image (not used by `flip`).
    pub copies: usize,
    /// Mixup's l.
    pub mixup_lambda: f32,
    /// For `gaussian`: `[n_support * copies, dim]` standard normal draws.
    pub gaussian_noise: Option<Vec<f32>>,
    /// Block Dropout masks `[batch, 9]` and scales `[batch]` for every image entering the
    /// backbone, in the order support, extra support images, queries. Training only.
    pub block_dropout: Option<(Vec<f32>, Vec<f32>)>,
}

/// The result of one episode.
pub struct EpisodeOutput {
    /// `[n_query_total, n_way]`.
    pub logits: Tensor<2>,
    /// The fusion weights `[n_support * copies, 9]` when the fusion network ran.
    pub fusion_weights: Option<Tensor<2>>,
    /// The fused (or mixed, mirrored, generated) extra support images.
    pub extra_images: Option<Tensor<4>>,
}

/// The standard deviation of the noise of the `gaussian` support augmentation.
pub const GAUSSIAN_NOISE_STD: f32 = 0.01;

impl FewShotNet {
    /// Creates a ProtoNet (no fusion network).
    pub fn protonet(backbone: BackboneKind, device: &Device) -> FewShotNet {
        FewShotNet {
            backbone: backbone.init(device),
            fusion: None,
        }
    }

    /// Creates a MetaIRNet: a backbone and a fusion network.
    pub fn metairnet(backbone: BackboneKind, fusion: &FusionNetConfig, device: &Device) -> Self {
        FewShotNet {
            backbone: backbone.init(device),
            fusion: Some(fusion.init(device)),
        }
    }

    /// Returns the trainable parameter count of the backbone and of the fusion network.
    pub fn parameter_counts(&self) -> (usize, usize) {
        let fusion = self.fusion.as_ref().map_or(0, trainable_parameters);
        (trainable_parameters(&self.backbone), fusion)
    }

    /// Computes the query logits of one episode: embeds the support images, their extra
    /// images and the queries in one batch, averages each class's support entries into a
    /// prototype and scores the queries by negative squared distance.
    ///
    /// # Panics
    /// When `augment` needs generated images and `input.generated` is `None`, or needs the
    /// fusion network and the model has none.
    pub fn episode(&self, input: EpisodeInput, augment: &EpisodeAugment) -> EpisodeOutput {
        let EpisodeInput {
            support,
            query,
            generated,
            n_way,
        } = input;
        let [n_support, channels, height, width] = support.dims();
        let n_query = query.dims()[0];
        let device = support.device();
        let copies = augment.copies;
        let generated = || {
            generated
                .clone()
                .expect("this support augmentation needs generated images")
        };
        let repeated = || {
            support
                .clone()
                .reshape([n_support, 1, channels, height, width])
                .repeat_dim(1, copies)
                .reshape([n_support * copies, channels, height, width])
        };

        // Extra support images.
        let (extra_images, fusion_weights) = match augment.kind {
            SupportAugment::None | SupportAugment::Gaussian => (None, None),
            SupportAugment::Flip => (Some(support.clone().flip([3])), None),
            SupportAugment::Generated => (Some(generated()), None),
            SupportAugment::Mixup => {
                let weights =
                    Tensor::<2>::full([n_support * copies, 9], augment.mixup_lambda, &device);
                (Some(grid_fusion(repeated(), generated(), weights)), None)
            }
            SupportAugment::Fusion => {
                let fusion = self
                    .fusion
                    .as_ref()
                    .expect("the fusion augmentation needs a model with a fusion network");
                let (fused, weights) = fusion.fuse(repeated(), generated());
                (Some(fused), Some(weights))
            }
        };
        let n_extra = extra_images.as_ref().map_or(0, |images| images.dims()[0]);

        // Embed everything in one batch, so BatchNorm's batch statistics cover the whole episode.
        let mut parts = vec![support];
        parts.extend(extra_images.clone());
        parts.push(query);
        let mut batch = Tensor::cat(parts, 0);
        if let Some((masks, scales)) = &augment.block_dropout {
            let count = n_support + n_extra + n_query;
            let masks = Tensor::<2>::from_data(TensorData::new(masks.clone(), [count, 9]), &device);
            let scales = Tensor::<1>::from_data(TensorData::new(scales.clone(), [count]), &device);
            batch = block_dropout(batch, masks, scales);
        }
        let embeddings = self.backbone.forward(batch);
        let dim = embeddings.dims()[1];

        // Prototypes over the support entries and their extras.
        let support_embeddings = embeddings.clone().narrow(0, 0, n_support);
        let query_embeddings = embeddings.clone().narrow(0, n_support + n_extra, n_query);
        let extra_embeddings = match augment.kind {
            SupportAugment::Gaussian => {
                let noise = augment
                    .gaussian_noise
                    .clone()
                    .expect("the gaussian augmentation needs its noise");
                let noise = Tensor::<2>::from_data(
                    TensorData::new(noise, [n_support * copies, dim]),
                    &device,
                );
                let repeated = support_embeddings
                    .clone()
                    .reshape([n_support, 1, dim])
                    .repeat_dim(1, copies)
                    .reshape([n_support * copies, dim]);
                Some(repeated + noise.mul_scalar(GAUSSIAN_NOISE_STD))
            }
            _ if n_extra > 0 => Some(embeddings.narrow(0, n_support, n_extra)),
            _ => None,
        };
        let shots = n_support / n_way;
        let mut groups = vec![support_embeddings.reshape([n_way, shots, dim])];
        if let Some(extra) = extra_embeddings {
            let per_class = extra.dims()[0] / n_way;
            groups.push(extra.reshape([n_way, per_class, dim]));
        }
        let prototypes = Tensor::cat(groups, 1).mean_dim(1).reshape([n_way, dim]);

        EpisodeOutput {
            logits: query_logits(query_embeddings, prototypes),
            fusion_weights,
            extra_images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::protonet_logits;
    use burn::tensor::Distribution;

    fn images(count: usize, device: &Device) -> Tensor<4> {
        Tensor::random([count, 3, 84, 84], Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn no_augmentation_is_protonet() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        device.seed(1);
        let net = FewShotNet::protonet(BackboneKind::Conv4, &device).valid();
        let (support, query) = (images(3, &device), images(6, &device));
        let output = net.episode(
            EpisodeInput {
                support: support.clone(),
                query: query.clone(),
                generated: None,
                n_way: 3,
            },
            &EpisodeAugment::default(),
        );
        let embeddings = net.backbone.forward(Tensor::cat(vec![support, query], 0));
        let expected = protonet_logits(embeddings, 3, 3);
        output
            .logits
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
    }

    #[test]
    fn mixup_with_one_keeps_originals() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        device.seed(2);
        let net = FewShotNet::protonet(BackboneKind::Conv4, &device).valid();
        let (support, query) = (images(2, &device), images(4, &device));
        let output = net.episode(
            EpisodeInput {
                support: support.clone(),
                query,
                generated: Some(images(4, &device)),
                n_way: 2,
            },
            &EpisodeAugment {
                kind: SupportAugment::Mixup,
                copies: 2,
                mixup_lambda: 1.0,
                ..EpisodeAugment::default()
            },
        );
        let extra = output.extra_images.expect("mixed images");
        let expected = support
            .reshape([2, 1, 3, 84, 84])
            .repeat_dim(1, 2)
            .reshape([4, 3, 84, 84]);
        extra
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
    }

    #[test]
    fn fusion_trains_backbone_and_fusion_network() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex().autodiff();
        device.seed(3);
        let net = FewShotNet::metairnet(
            BackboneKind::Conv4,
            &FusionNetConfig::new(BackboneKind::Conv4, 84).with_siamese(true),
            &device,
        );
        let count = 2 + 2 + 4;
        let mut draw = {
            let mut state = 9u64;
            move || {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (state >> 11) as f64 / (1u64 << 53) as f64
            }
        };
        let dropout = crate::model::BlockDropoutConfig {
            enabled: true,
            p: 1.0,
            ..Default::default()
        }
        .sample(count, 84, 84, &mut draw);
        let output = net.episode(
            EpisodeInput {
                support: images(2, &device),
                query: images(4, &device),
                generated: Some(images(2, &device)),
                n_way: 2,
            },
            &EpisodeAugment {
                kind: SupportAugment::Fusion,
                copies: 1,
                block_dropout: Some((dropout.masks, dropout.scales)),
                ..EpisodeAugment::default()
            },
        );
        assert_eq!(output.logits.dims(), [4, 2]);
        assert_eq!(output.fusion_weights.as_ref().unwrap().dims(), [2, 9]);
        let labels = Tensor::<1, Int>::from_ints([0, 0, 1, 1], &device);
        let loss = crate::model::protonet_loss(output.logits, labels);
        let gradients = loss.backward();
        let fusion = net.fusion.as_ref().unwrap();
        let head = fusion.head.weight.grad(&gradients).expect("head gradient");
        assert!(head.abs().sum().into_scalar::<f32>() > 0.0);
    }
}
