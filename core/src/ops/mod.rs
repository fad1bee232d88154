//! Tensor operations with backend-specific kernels.

pub mod conv2d;
mod cpu_conv;
pub mod grid;

pub use conv2d::{Conv2dOps, conv2d, conv2d_weights};
pub use grid::{block_dropout, grid_fusion};
