//! Networks: the Conv4 and ResNet-18 backbones, the ProtoNet head, the fusion network of
//! MetaIRNet and Block Dropout.

pub mod backbone;
mod block_dropout;
mod conv4;
mod fewshot;
mod fusion;
#[cfg(feature = "train")]
mod import;
mod protonet;
mod resnet;

pub use backbone::{Backbone, BackboneKind, trainable_parameters, with_fresh_ids};
pub use block_dropout::{BlockDropoutConfig, BlockMasks, VarianceFix};
pub use conv4::{Conv4, Conv4Config};
pub use fewshot::{
    EpisodeAugment, EpisodeInput, EpisodeOutput, FewShotNet, GAUSSIAN_NOISE_STD, SupportAugment,
};
pub use fusion::{FusionNet, FusionNetConfig};
#[cfg(feature = "train")]
pub use import::{load_resnet, load_resnet18};
pub use protonet::{accuracy, argmax, protonet_logits, protonet_loss, prototypes, query_logits};
pub use resnet::{BasicBlock, Downsample, ResNet, ResNetConfig};
