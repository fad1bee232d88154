//! `metairnet bench --kernels`: the grid fusion and Block Dropout operations against the same
//! computation composed of tensor operations, forward and forward+backward.
//!
//! On wgpu the operations run the hand-written WGSL kernels. On the CPU backend they run the
//! default bodies of `GridOps` (tensor operations with a written-out backward pass), so the CPU
//! rows compare that backward pass with Burn's autodiff of the reference.

use anyhow::Result;
use burn::prelude::*;
use metairnet::device::SelectedDevice;
use metairnet::ops::grid::{block_dropout_reference, grid_fusion_reference};
use metairnet::ops::{block_dropout, grid_fusion};
use std::time::Instant;

/// Sides measured, in pixels: Conv4's input and ImageNet-sized inputs.
const SIDES: [usize; 2] = [84, 224];
/// Channels of the measured images.
const CHANNELS: usize = 3;

/// Sizes of one kernel benchmark.
pub struct KernelBenchOptions {
    pub batch: usize,
    pub runs: usize,
    pub warmup: usize,
}

#[derive(Clone, Copy)]
enum Operation {
    GridFusion,
    BlockDropout,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::GridFusion => "grid fusion",
            Operation::BlockDropout => "block dropout",
        }
    }
}

/// The inputs of both operations, as host values.
struct Inputs {
    shape: [usize; 4],
    original: Vec<f32>,
    generated: Vec<f32>,
    weights: Vec<f32>,
    masks: Vec<f32>,
    scales: Vec<f32>,
}

impl Inputs {
    fn new(batch: usize, side: usize) -> Self {
        let count = batch * CHANNELS * side * side;
        let pattern = |i: usize, step: usize| ((i * step) % 255) as f32 / 128.0 - 1.0;
        Self {
            shape: [batch, CHANNELS, side, side],
            original: (0..count).map(|i| pattern(i, 7919)).collect(),
            generated: (0..count).map(|i| pattern(i, 104_729)).collect(),
            weights: (0..batch * 9).map(|i| (i % 7) as f32 / 6.0).collect(),
            masks: (0..batch * 9).map(|i| (i % 3 != 0) as u8 as f32).collect(),
            scales: vec![1.5; batch],
        }
    }
}

/// Runs one pass of `operation` on `device`: the forward pass alone when `autodiff` is false,
/// otherwise the forward pass and the gradients of `sum(out)` with respect to the images and
/// the weights. Waits for the device before returning.
fn run_once(inputs: &Inputs, device: &Device, operation: Operation, kernel: bool, autodiff: bool) {
    let device = if autodiff {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    let images = |values: &[f32]| {
        Tensor::<4>::from_data(TensorData::new(values.to_vec(), inputs.shape), &device)
    };
    let batch = inputs.shape[0];
    let output = match operation {
        Operation::GridFusion => {
            let original = images(&inputs.original);
            let generated = images(&inputs.generated);
            let weights = Tensor::<2>::from_data(
                TensorData::new(inputs.weights.clone(), [batch, 9]),
                &device,
            );
            let (original, weights) = if autodiff {
                (original.require_grad(), weights.require_grad())
            } else {
                (original, weights)
            };
            if kernel {
                grid_fusion(original, generated, weights)
            } else {
                grid_fusion_reference(original, generated, weights)
            }
        }
        Operation::BlockDropout => {
            let images = images(&inputs.original);
            let images = if autodiff {
                images.require_grad()
            } else {
                images
            };
            let masks =
                Tensor::<2>::from_data(TensorData::new(inputs.masks.clone(), [batch, 9]), &device);
            let scales =
                Tensor::<1>::from_data(TensorData::new(inputs.scales.clone(), [batch]), &device);
            if kernel {
                block_dropout(images, masks, scales)
            } else {
                block_dropout_reference(images, masks, scales)
            }
        }
    };
    // The output and the gradients stay alive until the device has finished, so that a lazy
    // backend cannot skip work whose result is never read.
    let gradients = autodiff.then(|| output.clone().sum().backward());
    device
        .sync()
        .unwrap_or_else(|error| panic!("the device failed to run the benchmark: {error:?}"));
    drop((output, gradients));
}

/// Returns the median time of `runs` passes, in milliseconds, after `warmup` untimed passes.
fn median_ms(options: &KernelBenchOptions, mut pass: impl FnMut()) -> f64 {
    for _ in 0..options.warmup {
        pass();
    }
    let mut times: Vec<f64> = (0..options.runs)
        .map(|_| {
            let started = Instant::now();
            pass();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let middle = times.len() / 2;
    if times.len() % 2 == 0 {
        (times[middle - 1] + times[middle]) / 2.0
    } else {
        times[middle]
    }
}

/// Prints the table of one device: for each side, operation and pass, the median time of the
/// operation and of the tensor-op reference.
pub fn run(selected: &SelectedDevice, options: &KernelBenchOptions) -> Result<()> {
    println!("{}", selected.description);
    println!(
        "  {:>5}  {:<14} {:<17} {:>12} {:>14} {:>10}",
        "side", "operation", "pass", "kernel ms", "reference ms", "speed-up"
    );
    for side in SIDES {
        let inputs = Inputs::new(options.batch, side);
        for operation in [Operation::GridFusion, Operation::BlockDropout] {
            for (pass, autodiff) in [("forward", false), ("forward+backward", true)] {
                let device = &selected.device;
                let kernel = median_ms(options, || {
                    run_once(&inputs, device, operation, true, autodiff)
                });
                let reference = median_ms(options, || {
                    run_once(&inputs, device, operation, false, autodiff)
                });
                println!(
                    "  {side:>5}  {:<14} {pass:<17} {kernel:>12.3} {reference:>14.3} {:>9.2}x",
                    operation.name(),
                    reference / kernel
                );
            }
        }
    }
    Ok(())
}
