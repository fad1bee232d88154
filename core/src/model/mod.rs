//! Networks: the Conv4 backbone and the ProtoNet head.

mod conv4;
mod protonet;

pub use conv4::{Conv4, Conv4Config};
pub use protonet::{accuracy, protonet_logits, protonet_loss, prototypes, query_logits};
