//! `metairnet bench`: episodes per second of ProtoNet Conv4 on synthetic 84x84 episodes.

use crate::common::DeviceArgs;
use anyhow::Result;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use metairnet::device::{DeviceChoice, SelectedDevice, list_adapters};
use metairnet::model::{Conv4Config, protonet_logits, protonet_loss};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Devices to measure: all (the CPU backend and every wgpu adapter kind found), or one of
    /// auto, wgpu, cpu.
    #[arg(long, default_value = "all", value_name = "DEVICE")]
    device: String,

    /// Timed training episodes per device, after the warm-up.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 5,
        value_name = "N"
    )]
    train_episodes: usize,

    /// Timed evaluation episodes per device, after the warm-up.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 10,
        value_name = "N"
    )]
    eval_episodes: usize,

    /// Untimed episodes first (kernel compilation and autotuning happen there).
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 2,
        value_name = "N"
    )]
    warmup: usize,

    /// Classes per episode.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5)]
    n_way: usize,

    /// Support images per class.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    n_shot: usize,

    /// Query images per class.
    #[arg(long, allow_negative_numbers = true, default_value_t = 16)]
    n_query: usize,
}

/// The largest episode measured, in images: 1000 images of 84x84 take about 7 GiB for the first
/// Conv4 activation and its gradient.
const MAX_IMAGES: usize = 1000;

struct Figures {
    train_per_second: f64,
    eval_per_second: f64,
    peak_bytes: Option<u64>,
}

pub fn run(args: BenchArgs, _quiet: bool) -> Result<()> {
    let choices: Vec<DeviceChoice> = match args.device.as_str() {
        "all" => {
            let mut list = vec![DeviceChoice::Cpu];
            if !list_adapters().is_empty() {
                list.push(DeviceChoice::Wgpu);
            }
            list
        }
        other => vec![
            DeviceArgs {
                device: other.parse().map_err(anyhow::Error::msg)?,
            }
            .device,
        ],
    };
    if args.train_episodes == 0 || args.eval_episodes == 0 {
        anyhow::bail!("--train-episodes and --eval-episodes must be at least 1");
    }
    if args.n_way < 2 || args.n_shot == 0 || args.n_query == 0 {
        anyhow::bail!(
            "invalid episode shape {}-way {}-shot {}-query; --n-way must be at least 2, --n-shot and --n-query at least 1",
            args.n_way,
            args.n_shot,
            args.n_query
        );
    }
    let images = args.n_way * (args.n_shot + args.n_query);
    if images > MAX_IMAGES {
        anyhow::bail!(
            "an episode of {images} images is larger than the {MAX_IMAGES} that bench allows; lower --n-way, --n-shot or --n-query"
        );
    }
    println!(
        "ProtoNet Conv4, {}-way {}-shot {}-query, {images} images of 84x84 per episode (synthetic pixels)",
        args.n_way, args.n_shot, args.n_query
    );
    let mut failures = 0;
    for choice in choices {
        let selected = crate::common::DeviceArgs { device: choice }.select()?;
        let bytes = Conv4Config::new().largest_activation_bytes(images, 84);
        if let Err(message) =
            selected.check_buffer(bytes, &format!("an episode of {images} images"))
        {
            println!("{:<60} skipped: {message}", selected.description);
            continue;
        }
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(&selected, &args)));
        match outcome {
            Ok(figures) => {
                let memory = match figures.peak_bytes {
                    Some(bytes) => format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0)),
                    None => "n/a".to_string(),
                };
                println!(
                    "{:<60} train {:>6.3} episodes/s  eval {:>6.3} episodes/s  peak memory {memory}",
                    selected.description, figures.train_per_second, figures.eval_per_second
                );
            }
            Err(_) => {
                println!("{:<60} failed (see the error above)", selected.description);
                failures += 1;
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} device(s) failed the benchmark");
    }
    Ok(())
}

fn measure(selected: &SelectedDevice, args: &BenchArgs) -> Figures {
    let device = &selected.device;
    let train_device = device.clone().autodiff();
    let n_support = args.n_way * args.n_shot;
    let n_query = args.n_way * args.n_query;
    let count = n_support + n_query;
    train_device.seed(0);
    let mut model = Conv4Config::new().init(&train_device);
    let mut optimizer = AdamConfig::new()
        .with_epsilon(1e-8)
        .with_amsgrad(true)
        .init();
    let labels: Vec<i64> = (0..n_query).map(|i| (i / args.n_query) as i64).collect();
    let pixels: Vec<f32> = (0..count * 3 * 84 * 84)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();

    let mut train_step = || {
        let images = Tensor::<4>::from_data(
            TensorData::new(pixels.clone(), [count, 3, 84, 84]),
            &train_device,
        );
        let label_tensor =
            Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [n_query]), &train_device);
        let embeddings = model.forward(images);
        let logits = protonet_logits(embeddings, n_support, args.n_way);
        let loss = protonet_loss(logits, label_tensor);
        let _ = loss.clone().into_scalar::<f32>();
        let gradients = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-3, model.clone(), gradients);
    };
    for _ in 0..args.warmup {
        train_step();
    }
    let started = Instant::now();
    for _ in 0..args.train_episodes {
        train_step();
    }
    let train_per_second = args.train_episodes as f64 / started.elapsed().as_secs_f64();

    let eval_model = model.valid();
    let eval_step = || {
        let images =
            Tensor::<4>::from_data(TensorData::new(pixels.clone(), [count, 3, 84, 84]), device);
        let embeddings = eval_model.forward(images);
        let logits = protonet_logits(embeddings, n_support, args.n_way);
        let _ = logits.into_data();
    };
    for _ in 0..args.warmup {
        eval_step();
    }
    let started = Instant::now();
    for _ in 0..args.eval_episodes {
        eval_step();
    }
    let eval_per_second = args.eval_episodes as f64 / started.elapsed().as_secs_f64();

    let peak_bytes = match device.memory_pool_usage() {
        Some(usage) => Some(usage.bytes_reserved),
        None => peak_resident_bytes(),
    };
    Figures {
        train_per_second,
        eval_per_second,
        peak_bytes,
    }
}

/// Returns the peak resident memory of this process (VmHWM), on Linux.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
