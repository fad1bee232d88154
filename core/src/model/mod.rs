//! Networks: the Conv4 and ResNet-18 backbones and the ProtoNet head.

mod conv4;
mod protonet;
mod resnet;

pub use conv4::{Conv4, Conv4Config};
pub use protonet::{accuracy, protonet_logits, protonet_loss, prototypes, query_logits};
pub use resnet::{BasicBlock, Downsample, ResNet, ResNetConfig};
