//! WGSL compute kernels for the 3x3 grid operations of MetaIRNet, as source text.
//!
//! The grid cuts an image of height H into 3 block rows of ceil(H/3) pixels, and the last row is
//! shorter or empty (75, 75, 74 at 224 and 2, 2, 0 at 4). Columns are cut likewise. A per-image
//! table of 9 values, row-major over the grid, applies to every pixel of its block.
//!
//! Shared contract of every kernel:
//! - all tensors are contiguous f32 arrays in NCHW order (`[batch, 9]` for tables);
//! - every binding is `var<storage, read_write>`, because Burn's CubeCL runtime may place
//!   several tensors in one buffer and a read-only binding then conflicts with a writable one;
//! - the entry point is `main` and the workgroup size is 256;
//! - the last binding is an `array<u32>` of sizes, and its element 6 is the number of workgroups
//!   per dispatch row: the launcher spreads workgroups over x and y so that neither exceeds
//!   WebGPU's limit of 65535, and each kernel numbers its workgroups `y * info[6] + x`.
//!
//! Block height and width in the sizes are ceil(H/3) and ceil(W/3), both at least 1.

/// Grid fusion forward: `out = g + W * (x - g)`, which is `W * x + (1 - W) * g`.
///
/// Bindings: 0 `original` `[B, C, H, W]`, 1 `generated` `[B, C, H, W]`, 2 `weights` `[B, 9]`,
/// 3 `output` `[B, C, H, W]` (written), 4 sizes `[B*C*H*W, C, H, W, block height, block width,
/// workgroups per row]`.
///
/// Dispatch: one invocation per element, `ceil(B*C*H*W / 256)` workgroups.
pub const GRID_FUSION_FORWARD: &str = include_str!("../grid_fusion_forward.wgsl");

/// Grid fusion backward for the two images: `d_original = W * dy`,
/// `d_generated = dy - W * dy`.
///
/// Bindings: 0 `weights` `[B, 9]`, 1 `output_grad` `[B, C, H, W]`, 2 `original_grad` (written),
/// 3 `generated_grad` (written), both `[B, C, H, W]`, 4 sizes `[B*C*H*W, C, H, W, block height,
/// block width, workgroups per row]`.
///
/// Dispatch: one invocation per element, `ceil(B*C*H*W / 256)` workgroups.
pub const GRID_FUSION_BACKWARD: &str = include_str!("../grid_fusion_backward.wgsl");

/// Grid fusion backward for the weights: `d_weights[b, k]` is the sum of `dy * (x - g)` over
/// the channels and the pixels of block `k` of image `b`, and 0 for an empty block.
///
/// Bindings: 0 `original`, 1 `generated`, 2 `output_grad`, all `[B, C, H, W]`,
/// 3 `weights_grad` `[B, 9]` (written), 4 sizes `[B, C, H, W, block height, block width,
/// workgroups per row]`.
///
/// Dispatch: one workgroup per (image, block) pair, `9 * B` workgroups. It reduces in shared
/// memory, with no atomics, so the result is deterministic for a given shape.
pub const GRID_FUSION_WEIGHTS_GRAD: &str = include_str!("../grid_fusion_weights_grad.wgsl");

/// Block Dropout: `out = x * (M * scale)`; also its backward pass, run on the output gradient.
///
/// Bindings: 0 `images` `[B, C, H, W]`, 1 `masks` `[B, 9]`, 2 `scales` `[B]`, 3 `output`
/// `[B, C, H, W]` (written), 4 sizes `[B*C*H*W, C, H, W, block height, block width, workgroups
/// per row]`.
///
/// Dispatch: one invocation per element, `ceil(B*C*H*W / 256)` workgroups.
pub const BLOCK_DROPOUT: &str = include_str!("../block_dropout.wgsl");

/// Invocations per workgroup in every kernel of this crate.
pub const WORKGROUP_SIZE: u32 = 256;

/// The maximum number of workgroups along one dispatch dimension in WebGPU's default limits.
pub const MAX_WORKGROUPS_PER_DIMENSION: u32 = 65535;
