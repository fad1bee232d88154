//! Tensor operations with backend-specific kernels.

pub mod conv2d;
mod cpu_conv;
pub mod grid;
#[cfg(feature = "wgpu")]
mod grid_wgpu;

pub use conv2d::{Conv2dOps, conv2d, conv2d_weights};
pub use grid::{GridOps, block_dropout, grid_fusion};
