//! The generator stage of MetaIRNet: a BigGAN generator fine-tuned on one image at a time, and
//! the VGG16 features of its perceptual loss.

mod biggan;
#[cfg(feature = "train")]
mod finetune;
#[cfg(feature = "train")]
pub(crate) mod import;
mod layers;
#[cfg(test)]
pub(crate) mod pth_writer;
#[cfg(feature = "train")]
pub mod store;
mod vgg;

pub use biggan::{BigGan, BigGanConfig, BigGanConfigError, GBlock, GeneratorStage, OutputLayer};
#[cfg(feature = "train")]
pub use finetune::{FineTuneConfig, FineTuned, emd_loss, fine_tune, sample};
#[cfg(feature = "train")]
pub use import::{ImportError, load_biggan, load_vgg16};
pub use layers::{
    Attention, ConditionalBatchNorm, SnConv2d, SnLinear, StoredBatchNorm, upsample_nearest_2x,
};
pub use vgg::{Vgg16Config, Vgg16Features, VggConv};
