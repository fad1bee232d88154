//! The WGSL kernels of grid fusion and Block Dropout on wgpu must compute what the tensor-op
//! references compute on the CPU backend: outputs and every gradient.
//!
//! Each case runs `sum(op(inputs) * cotangent)` with autodiff on both devices from the same host
//! values. On a machine without a GPU this runs on lavapipe (Mesa's CPU Vulkan driver), so the
//! shapes are small except where a case needs a size. Those are side 224, side 84, and tensors
//! large enough to spread the workgroups of a dispatch over two dimensions.

use burn::prelude::*;
use metairnet::ops::grid::{block_dropout_reference, grid_fusion_reference};
use metairnet::ops::{block_dropout, grid_fusion};

/// Tolerance on each output and image-gradient entry, relative to the largest entry of that
/// tensor: both sides do the same float32 operations, up to fused multiply-adds.
const VALUE_TOLERANCE: f32 = 1e-5;
/// Tolerance on the L2 norm of the weight-gradient difference, relative to the gradient's norm:
/// the kernel sums each block in another order than the reference.
const SUM_TOLERANCE: f32 = 1e-4;

/// How a case lays out its image tensors in memory.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Contiguous,
    /// Built as `[batch, channels, width, height]` and transposed with `swap_dims(2, 3)`; the
    /// weights are built as `[9, batch]` and transposed too.
    Transposed,
    /// The second half of a tensor with twice the batch, taken with `narrow` on dimension 0.
    Narrowed,
}

struct Case {
    name: &'static str,
    shape: [usize; 4],
    layout: Layout,
    /// Whether `generated` takes part in the graph; the training loop passes it as a constant.
    generated_tracked: bool,
}

const fn case(name: &'static str, shape: [usize; 4], layout: Layout) -> Case {
    Case {
        name,
        shape,
        layout,
        generated_tracked: true,
    }
}

/// Deterministic values in [-1, 1) from a 64-bit linear congruential generator, so that the
/// cases do not depend on a backend's random number generator.
fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The host values of one case, in the memory order of its layout.
struct Inputs {
    original: Vec<f32>,
    generated: Vec<f32>,
    /// Uniform in [-0.5, 1.5): the operation does not clamp weights to [0, 1].
    weights: Vec<f32>,
    masks: Vec<f32>,
    scales: Vec<f32>,
    cotangent: Vec<f32>,
}

impl Inputs {
    fn new(case: &Case) -> Self {
        let [batch, channels, height, width] = case.shape;
        let stored_batch = match case.layout {
            Layout::Narrowed => 2 * batch,
            _ => batch,
        };
        let images = stored_batch * channels * height * width;
        let masks = values(stored_batch * 9, 5)
            .into_iter()
            .map(|v| if v < 0.0 { 0.0 } else { 1.0 })
            .collect();
        Self {
            original: values(images, 1),
            generated: values(images, 2),
            weights: values(stored_batch * 9, 3)
                .into_iter()
                .map(|v| v + 0.5)
                .collect(),
            masks,
            scales: values(stored_batch, 6)
                .into_iter()
                .map(|v| 1.5 + v)
                .collect(),
            cotangent: values(batch * channels * height * width, 4),
        }
    }
}

/// Builds `[batch, channels, height, width]` images from host values in the case's layout.
fn images(values: &[f32], case: &Case, device: &Device) -> Tensor<4> {
    let [batch, channels, height, width] = case.shape;
    match case.layout {
        Layout::Contiguous => Tensor::from_data(
            TensorData::new(values.to_vec(), [batch, channels, height, width]),
            device,
        ),
        Layout::Transposed => Tensor::<4>::from_data(
            TensorData::new(values.to_vec(), [batch, channels, width, height]),
            device,
        )
        .swap_dims(2, 3),
        Layout::Narrowed => Tensor::<4>::from_data(
            TensorData::new(values.to_vec(), [2 * batch, channels, height, width]),
            device,
        )
        .narrow(0, batch, batch),
    }
}

/// Builds a `[batch, 9]` table from host values in the case's layout.
fn table(values: &[f32], case: &Case, device: &Device) -> Tensor<2> {
    let batch = case.shape[0];
    match case.layout {
        Layout::Contiguous => {
            Tensor::from_data(TensorData::new(values.to_vec(), [batch, 9]), device)
        }
        Layout::Transposed => {
            Tensor::<2>::from_data(TensorData::new(values.to_vec(), [9, batch]), device)
                .swap_dims(0, 1)
        }
        Layout::Narrowed => {
            Tensor::<2>::from_data(TensorData::new(values.to_vec(), [2 * batch, 9]), device)
                .narrow(0, batch, batch)
        }
    }
}

fn scales(values: &[f32], case: &Case, device: &Device) -> Tensor<1> {
    let batch = case.shape[0];
    let all = Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device);
    match case.layout {
        Layout::Narrowed => all.narrow(0, batch, batch),
        _ => all,
    }
}

fn read<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().unwrap()
}

/// Outputs and gradients of both operations on one device.
struct Results {
    fused: Vec<f32>,
    original_grad: Vec<f32>,
    generated_grad: Option<Vec<f32>>,
    weights_grad: Vec<f32>,
    dropped: Vec<f32>,
    images_grad: Vec<f32>,
}

type Fusion = fn(Tensor<4>, Tensor<4>, Tensor<2>) -> Tensor<4>;
type Dropout = fn(Tensor<4>, Tensor<2>, Tensor<1>) -> Tensor<4>;

fn run(case: &Case, inputs: &Inputs, device: &Device, fusion: Fusion, dropout: Dropout) -> Results {
    let device = device.clone().autodiff();
    let original = images(&inputs.original, case, &device).require_grad();
    let generated = images(&inputs.generated, case, &device);
    let generated = if case.generated_tracked {
        generated.require_grad()
    } else {
        generated
    };
    let weights = table(&inputs.weights, case, &device).require_grad();
    let cotangent = Tensor::<4>::from_data(
        TensorData::new(inputs.cotangent.clone(), case.shape),
        &device,
    );

    let fused = fusion(original.clone(), generated.clone(), weights.clone());
    let grads = (fused.clone() * cotangent.clone()).sum().backward();
    let original_grad = read(original.grad(&grads).expect("original gradient"));
    let generated_grad = generated.grad(&grads).map(read);
    let weights_grad = read(weights.grad(&grads).expect("weights gradient"));

    let dropped_input = images(&inputs.original, case, &device).require_grad();
    let masks = table(&inputs.masks, case, &device);
    let scales = scales(&inputs.scales, case, &device);
    let dropped = dropout(dropped_input.clone(), masks, scales);
    let grads = (dropped.clone() * cotangent).sum().backward();
    let images_grad = read(dropped_input.grad(&grads).expect("images gradient"));

    Results {
        fused: read(fused),
        original_grad,
        generated_grad,
        weights_grad,
        dropped: read(dropped),
        images_grad,
    }
}

fn assert_values_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    let scale = expected.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= VALUE_TOLERANCE * scale,
            "{what}: entry {i} is {a} on wgpu, {e} on the CPU (scale {scale})"
        );
    }
}

fn assert_sums_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    let norm = expected
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(1e-12);
    let difference = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e) * (a - e))
        .sum::<f32>()
        .sqrt();
    assert!(
        difference <= SUM_TOLERANCE * norm,
        "{what}: relative L2 difference {} (first entries: wgpu {:?}, CPU {:?})",
        difference / norm,
        &actual[..actual.len().min(9)],
        &expected[..expected.len().min(9)]
    );
}

fn check(case: &Case) {
    let inputs = Inputs::new(case);
    let wgpu = Device::wgpu(DeviceKind::DefaultDevice);
    let kernels = run(case, &inputs, &wgpu, grid_fusion, block_dropout);
    let reference = run(
        case,
        &inputs,
        &Device::flex(),
        grid_fusion_reference,
        block_dropout_reference,
    );
    let name = format!("{} {:?} {:?}", case.name, case.shape, case.layout);

    assert_values_close(
        &kernels.fused,
        &reference.fused,
        &format!("{name}: fusion output"),
    );
    assert_values_close(
        &kernels.original_grad,
        &reference.original_grad,
        &format!("{name}: original gradient"),
    );
    match (&kernels.generated_grad, &reference.generated_grad) {
        (Some(kernel), Some(expected)) => {
            assert_values_close(kernel, expected, &format!("{name}: generated gradient"))
        }
        (None, None) => assert!(
            !case.generated_tracked,
            "{name}: generated gradient missing"
        ),
        _ => panic!("{name}: only one device returned a generated gradient"),
    }
    assert_sums_close(
        &kernels.weights_grad,
        &reference.weights_grad,
        &format!("{name}: weights gradient"),
    );
    assert_values_close(
        &kernels.dropped,
        &reference.dropped,
        &format!("{name}: dropout output"),
    );
    assert_values_close(
        &kernels.images_grad,
        &reference.images_grad,
        &format!("{name}: dropout gradient"),
    );
}

#[test]
fn kernels_match_reference_on_odd_sizes() {
    for case in [
        case("7x10", [2, 3, 7, 10], Layout::Contiguous),
        case("5x5", [3, 2, 5, 5], Layout::Contiguous),
        case("batch 1", [1, 3, 9, 9], Layout::Contiguous),
        case("1x2", [2, 2, 1, 2], Layout::Contiguous),
    ] {
        check(&case);
    }
}

#[test]
fn kernels_give_empty_blocks_zero_gradient() {
    // Side 4 gives blocks of 2, 2 and 0 pixels: blocks 2, 5, 6, 7 and 8 are empty.
    let side4 = case("side 4", [2, 3, 4, 4], Layout::Contiguous);
    check(&side4);
    let inputs = Inputs::new(&side4);
    let wgpu = Device::wgpu(DeviceKind::DefaultDevice);
    let kernels = run(&side4, &inputs, &wgpu, grid_fusion, block_dropout);
    for image in 0..2 {
        for block in [2, 5, 6, 7, 8] {
            assert_eq!(
                kernels.weights_grad[image * 9 + block],
                0.0,
                "image {image} block {block}"
            );
        }
    }
}

#[test]
fn kernels_match_reference_at_model_sizes() {
    for case in [
        // Blocks of 75, 75 and 74 pixels.
        case("side 224", [2, 3, 224, 224], Layout::Contiguous),
        case("side 84", [4, 3, 84, 84], Layout::Contiguous),
    ] {
        check(&case);
    }
}

#[test]
fn kernels_match_reference_on_views() {
    for case in [
        case("transposed", [3, 2, 7, 10], Layout::Transposed),
        case("narrowed", [3, 3, 8, 5], Layout::Narrowed),
        Case {
            generated_tracked: false,
            ..case("constant generated", [2, 3, 6, 6], Layout::Transposed)
        },
    ] {
        check(&case);
    }
}

#[test]
fn kernels_match_reference_on_large_batches() {
    for case in [
        case("300 images", [300, 3, 8, 8], Layout::Contiguous),
        // 9 * 7300 = 65700 (image, block) workgroups: the weight-gradient dispatch needs two rows.
        case("7300 images", [7300, 1, 3, 3], Layout::Contiguous),
    ] {
        check(&case);
    }
}

#[test]
fn kernels_match_reference_past_one_dispatch_row() {
    // 16.82 million elements need 65704 workgroups of 256, more than the 65535 of one row, so
    // the element-wise kernels run a two-row dispatch too.
    check(&case("2900x2900", [2, 1, 2900, 2900], Layout::Contiguous));
}
