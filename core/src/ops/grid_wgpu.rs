//! The wgpu implementation of [`GridOps`]: launches the WGSL kernels of `metairnet-shaders`.
//!
//! Every kernel reads contiguous f32 tensors, so the inputs are made contiguous first (a
//! transposed or sliced view is copied once). Tensors of another float type, and empty tensors,
//! take the default bodies of the trait.
//!
//! NOTE: on lavapipe (Mesa 22.3.6, 2 cores) `metairnet bench --kernels` measured these kernels
//! at 0.35x to 0.86x the speed of Burn's fused tensor operations for the same computation; they
//! read one f32 per invocation and do several integer divisions per element. They have not been
//! timed on a GPU.

use super::grid::{GridOps, primitive};
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{
    CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::tensor::{DType, Shape};
use cubecl::prelude::KernelId;
use cubecl::server::KernelArguments;
use cubecl::{CubeCount, CubeDim};
use metairnet_shaders as shaders;

/// A WGSL kernel from `metairnet-shaders`; each type has one fixed source text, so the type alone
/// keys the pipeline cache.
macro_rules! wgsl_kernel {
    ($name:ident, $source:expr) => {
        struct $name;

        impl KernelSource for $name {
            fn source(&self) -> SourceTemplate {
                SourceTemplate::new($source)
            }

            fn id(&self) -> KernelId {
                KernelId::new::<Self>()
            }

            fn lang(&self) -> &'static str {
                "wgsl"
            }
        }
    };
}

wgsl_kernel!(GridFusionForward, shaders::GRID_FUSION_FORWARD);
wgsl_kernel!(GridFusionBackward, shaders::GRID_FUSION_BACKWARD);
wgsl_kernel!(GridFusionWeightsGrad, shaders::GRID_FUSION_WEIGHTS_GRAD);
wgsl_kernel!(BlockDropout, shaders::BLOCK_DROPOUT);

impl GridOps for CubeBackend {
    fn grid_fusion_forward(
        original: FloatTensor<Self>,
        generated: FloatTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !runs_kernel(&[&original, &generated, &weights]) {
            return primitive::grid_fusion::<Self>(original, generated, weights);
        }
        let images = ImageSizes::of(&original);
        let (original, generated, weights) = (
            into_contiguous(original),
            into_contiguous(generated),
            into_contiguous(weights),
        );
        let output = empty_like(&original, original.shape());
        let (count, info) = images.elementwise_launch(&original);
        launch(
            GridFusionForward,
            &original,
            count,
            vec![&original, &generated, &weights, &output],
            info,
        );
        output
    }

    fn grid_fusion_images_grad(
        weights: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !runs_kernel(&[&weights, &output_grad]) {
            return primitive::grid_fusion_images_grad::<Self>(weights, output_grad);
        }
        let images = ImageSizes::of(&output_grad);
        let (weights, output_grad) = (into_contiguous(weights), into_contiguous(output_grad));
        let original_grad = empty_like(&output_grad, output_grad.shape());
        let generated_grad = empty_like(&output_grad, output_grad.shape());
        let (count, info) = images.elementwise_launch(&output_grad);
        launch(
            GridFusionBackward,
            &output_grad,
            count,
            vec![&weights, &output_grad, &original_grad, &generated_grad],
            info,
        );
        (original_grad, generated_grad)
    }

    fn grid_fusion_weights_grad(
        original: FloatTensor<Self>,
        generated: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !runs_kernel(&[&original, &generated, &weights, &output_grad]) {
            return primitive::grid_fusion_weights_grad::<Self>(
                original,
                generated,
                weights,
                output_grad,
            );
        }
        let images = ImageSizes::of(&original);
        let (original, generated, output_grad) = (
            into_contiguous(original),
            into_contiguous(generated),
            into_contiguous(output_grad),
        );
        let weights_grad = empty_like(&original, Shape::new([images.batch, 9]));
        // One workgroup per (image, block) pair.
        let (count, per_row) = workgroup_layout(images.batch * 9);
        let info = images.info(images.batch, per_row);
        launch(
            GridFusionWeightsGrad,
            &original,
            count,
            vec![&original, &generated, &output_grad, &weights_grad],
            info,
        );
        weights_grad
    }

    fn block_dropout_forward(
        images: FloatTensor<Self>,
        masks: FloatTensor<Self>,
        scales: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !runs_kernel(&[&images, &masks, &scales]) {
            return primitive::block_dropout::<Self>(images, masks, scales);
        }
        let sizes = ImageSizes::of(&images);
        let (images, masks, scales) = (
            into_contiguous(images),
            into_contiguous(masks),
            into_contiguous(scales),
        );
        let output = empty_like(&images, images.shape());
        let (count, info) = sizes.elementwise_launch(&images);
        launch(
            BlockDropout,
            &images,
            count,
            vec![&images, &masks, &scales, &output],
            info,
        );
        output
    }
}

/// Checks that the kernels can take these operands: f32 only, and no empty tensor, because a
/// zero-sized buffer cannot be bound.
fn runs_kernel(tensors: &[&CubeTensor]) -> bool {
    tensors
        .iter()
        .all(|tensor| tensor.dtype() == DType::F32 && tensor.shape().num_elements() > 0)
}

/// The sizes of a `[batch, channels, height, width]` image tensor and of its grid blocks.
struct ImageSizes {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
}

impl ImageSizes {
    fn of(images: &CubeTensor) -> Self {
        let [batch, channels, height, width] = images.shape().dims();
        Self {
            batch,
            channels,
            height,
            width,
        }
    }

    /// Builds the sizes binding of the kernels: `[first, C, H, W, block height, block width,
    /// workgroups per row]`, with `first` the element count or the batch, as each kernel reads.
    fn info(&self, first: usize, per_row: u32) -> Vec<u32> {
        let block_height = self.height.div_ceil(3).max(1);
        let block_width = self.width.div_ceil(3).max(1);
        [
            first,
            self.channels,
            self.height,
            self.width,
            block_height,
            block_width,
        ]
        .iter()
        .map(|&size| to_u32(size))
        .chain([per_row])
        .collect()
    }

    /// Returns the dispatch and sizes binding of a kernel with one invocation per element of
    /// `tensor`.
    fn elementwise_launch(&self, tensor: &CubeTensor) -> (CubeCount, Vec<u32>) {
        let elements = tensor.shape().num_elements();
        let workgroups = elements.div_ceil(shaders::WORKGROUP_SIZE as usize);
        let (count, per_row) = workgroup_layout(workgroups);
        (count, self.info(elements, per_row))
    }
}

/// Spreads `workgroups` over rows of at most 65535, WebGPU's limit per dispatch dimension, and
/// returns the dispatch with the row length. The kernels skip the surplus of the last row.
fn workgroup_layout(workgroups: usize) -> (CubeCount, u32) {
    let max = shaders::MAX_WORKGROUPS_PER_DIMENSION as usize;
    let per_row = workgroups.min(max);
    let rows = workgroups.div_ceil(per_row);
    assert!(
        rows <= max,
        "{workgroups} workgroups exceed a 65535 x 65535 dispatch"
    );
    (
        CubeCount::Static(to_u32(per_row), to_u32(rows), 1),
        to_u32(per_row),
    )
}

fn to_u32(size: usize) -> u32 {
    u32::try_from(size).unwrap_or_else(|_| panic!("size {size} exceeds the kernels' u32 indices"))
}

/// Allocates a contiguous f32 tensor of `shape` on the device of `like`.
fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let bytes = shape.num_elements() * size_of::<f32>();
    let handle = like.client.empty(bytes);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        DType::F32,
    )
}

/// Launches `kernel` on the tensors' buffers, in binding order, followed by the sizes binding.
fn launch<K: KernelSource>(
    kernel: K,
    on: &CubeTensor,
    count: CubeCount,
    tensors: Vec<&CubeTensor>,
    info: Vec<u32>,
) {
    let client = &on.client;
    let info_bytes: Vec<u8> = info.iter().flat_map(|value| value.to_le_bytes()).collect();
    let info = client.create_from_slice(&info_bytes);
    let mut buffers: Vec<_> = tensors
        .into_iter()
        .map(|tensor| tensor.handle.clone().binding())
        .collect();
    buffers.push(info.binding());
    let cube_dim = CubeDim::from(cubecl::ir::settings::Dim3::new_1d(shaders::WORKGROUP_SIZE));
    client.launch(
        Box::new(SourceKernel::new(kernel, cube_dim)),
        count,
        KernelArguments::new().with_buffers(buffers),
    );
}
