//! MetaIRNet: one-shot fine-grained image recognition with meta-learned image fusion.
//!
//! This crate contains the data pipeline for bird photos in the CUB-200-2011 layout, the Conv4
//! backbone with the ProtoNet head, episodic training with run folders and checkpoints, and
//! evaluation with 95% confidence intervals.
//!
//! The `train` feature (on by default) adds everything that reads datasets from disk or trains.
//! Without it the crate keeps the model and preprocessing, which is what the browser build needs.

pub mod baselines;
#[cfg(feature = "bundle")]
pub mod bundle;
pub mod classify;
pub mod data;
pub mod device;
#[cfg(feature = "train")]
pub mod episodes;
pub mod generator;
pub mod hash;
pub mod model;
pub mod ops;
pub mod pictures;
#[cfg(test)]
mod test_support;
#[cfg(feature = "train")]
pub mod train;

/// The git commit this crate was built from, with `-dirty` when the tree had changes, or
/// `unknown` outside a git checkout.
pub const GIT_COMMIT: &str = env!("METAIRNET_GIT_COMMIT");
