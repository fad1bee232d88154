//! `metairnet bench`: episodes per second and GFLOP/s of ProtoNet Conv4 or ResNet-18 on
//! synthetic episodes, with the same episode in PyTorch for comparison when it is installed.

use crate::common::DeviceArgs;
use anyhow::Result;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use metairnet::device::{DeviceChoice, SelectedDevice, list_adapters};
use metairnet::model::{Conv4Config, ResNetConfig, protonet_logits, protonet_loss};
use std::time::Instant;

/// A backbone that bench can measure.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchModel {
    /// Four 3x3 convolution blocks with 64 channels, 1600-d embedding at 84x84.
    Conv4,
    /// torchvision's ResNet-18 without the classifier, 512-d embedding.
    Resnet18,
}

impl BenchModel {
    fn name(self) -> &'static str {
        match self {
            BenchModel::Conv4 => "Conv4",
            BenchModel::Resnet18 => "ResNet-18",
        }
    }

    fn cli_name(self) -> &'static str {
        match self {
            BenchModel::Conv4 => "conv4",
            BenchModel::Resnet18 => "resnet18",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Devices to measure: all (the CPU backend and every wgpu adapter kind found), or one of
    /// auto, wgpu, cpu.
    #[arg(long, default_value = "all", value_name = "DEVICE")]
    device: String,

    /// Backbone under the ProtoNet head.
    #[arg(long, value_enum, default_value = "conv4")]
    model: BenchModel,

    /// Side of the square input images, in pixels (84 for Conv4, 224 for ImageNet-sized
    /// ResNet-18 inputs).
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 84,
        value_name = "PIXELS"
    )]
    image_size: usize,

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

    /// Python interpreter for the PyTorch reference, which runs the same episode after the Burn
    /// devices. When it cannot import torch, the comparison is skipped with a message.
    #[arg(long, default_value = "python3", value_name = "PROGRAM")]
    python: String,

    /// Skip the PyTorch reference.
    #[arg(long)]
    no_pytorch: bool,

    /// Time the grid fusion and Block Dropout operations against the same computation in tensor
    /// operations, at sides 84 and 224, instead of the model. Uses --device and --warmup.
    #[arg(long)]
    kernels: bool,

    /// Images per batch for --kernels (3 channels each).
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 10,
        value_name = "N"
    )]
    kernel_batch: usize,

    /// Timed runs per measurement for --kernels, after the warm-up; the median is printed.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 10,
        value_name = "N"
    )]
    kernel_runs: usize,
}

/// The largest episode measured, in images: 1000 images of 84x84 take about 7 GiB for the first
/// Conv4 activation and its gradient.
const MAX_IMAGES: usize = 1000;

/// The PyTorch reference, passed to the interpreter on standard input.
const PYTORCH_REFERENCE: &str = include_str!("../reference/pytorch_protonet.py");

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
    if args.kernels {
        return run_kernels(&args, choices);
    }
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
    let smallest = match args.model {
        BenchModel::Conv4 => 16,
        BenchModel::Resnet18 => 32,
    };
    if !(smallest..=1024).contains(&args.image_size) {
        anyhow::bail!(
            "invalid --image-size {}: {} needs between {smallest} and 1024 pixels",
            args.image_size,
            args.model.name()
        );
    }
    let images = args.n_way * (args.n_shot + args.n_query);
    if images > MAX_IMAGES {
        anyhow::bail!(
            "an episode of {images} images is larger than the {MAX_IMAGES} that bench allows; lower --n-way, --n-shot or --n-query"
        );
    }
    let side = args.image_size;
    let flops = EpisodeFlops::of(args.model, images, side);
    println!(
        "ProtoNet {}, {}-way {}-shot {}-query, {images} images of {side}x{side} per episode (synthetic pixels)",
        args.model.name(),
        args.n_way,
        args.n_shot,
        args.n_query
    );
    println!(
        "convolution work per episode: {:.1} GFLOP training, {:.1} GFLOP evaluation",
        flops.train / 1e9,
        flops.eval / 1e9
    );
    let mut failures = 0;
    let mut cpu_figures = None;
    for choice in choices {
        let selected = crate::common::DeviceArgs { device: choice }.select()?;
        let bytes = (images * 64 * side * side * 4) as u64;
        if let Err(message) =
            selected.check_buffer(bytes, &format!("an episode of {images} images"))
        {
            println!("{:<44} skipped: {message}", selected.description);
            continue;
        }
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(&selected, &args)));
        match outcome {
            Ok(figures) => {
                println!("{}", figures_line(&selected.description, &figures, &flops));
                if choice == DeviceChoice::Cpu {
                    cpu_figures = Some(figures);
                }
            }
            Err(_) => {
                println!("{:<44} failed (see the error above)", selected.description);
                failures += 1;
            }
        }
    }
    if !args.no_pytorch {
        compare_with_pytorch(&args, &flops, cpu_figures.as_ref());
    }
    if failures > 0 {
        anyhow::bail!("{failures} device(s) failed the benchmark");
    }
    Ok(())
}

/// Runs `bench --kernels` on each chosen device.
fn run_kernels(args: &BenchArgs, choices: Vec<DeviceChoice>) -> Result<()> {
    if args.kernel_runs == 0 || args.kernel_batch == 0 {
        anyhow::bail!(
            "invalid --kernel-runs {} or --kernel-batch {}: both must be at least 1",
            args.kernel_runs,
            args.kernel_batch
        );
    }
    let options = crate::bench_kernels::KernelBenchOptions {
        batch: args.kernel_batch,
        runs: args.kernel_runs,
        warmup: args.warmup,
    };
    println!(
        "grid kernels: batch of {} images with 3 channels, median of {} runs after {} warm-up runs",
        options.batch, options.runs, options.warmup
    );
    for choice in choices {
        let selected = crate::common::DeviceArgs { device: choice }.select()?;
        crate::bench_kernels::run(&selected, &options)?;
    }
    Ok(())
}

fn figures_line(description: &str, figures: &Figures, flops: &EpisodeFlops) -> String {
    let memory = match figures.peak_bytes {
        Some(bytes) => format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0)),
        None => "n/a".to_string(),
    };
    format!(
        "{description:<44} train {:>6.3} episodes/s ({:>5.1} GFLOP/s)  eval {:>6.3} episodes/s ({:>5.1} GFLOP/s)  peak memory {memory}",
        figures.train_per_second,
        figures.train_per_second * flops.train / 1e9,
        figures.eval_per_second,
        figures.eval_per_second * flops.eval / 1e9,
    )
}

/// Runs the PyTorch reference on the same episode shape and prints its figures and the ratio
/// of the CPU backend to it.
fn compare_with_pytorch(args: &BenchArgs, flops: &EpisodeFlops, cpu: Option<&Figures>) {
    let command_line = [
        "-".to_string(),
        "bench".to_string(),
        format!("--model={}", args.model.cli_name()),
        format!("--side={}", args.image_size),
        format!("--n-way={}", args.n_way),
        format!("--n-shot={}", args.n_shot),
        format!("--n-query={}", args.n_query),
        format!("--episodes={}", args.train_episodes),
        format!("--eval-episodes={}", args.eval_episodes),
        format!("--warmup={}", args.warmup),
    ];
    let result = run_python(&args.python, &command_line);
    let reference = match result {
        Ok(reference) => reference,
        Err(reason) => {
            println!("{:<44} skipped: {reason}", "pytorch");
            return;
        }
    };
    let description = format!(
        "pytorch {}: CPU, {} threads",
        reference.version, reference.threads
    );
    let figures = Figures {
        train_per_second: reference.train_per_second,
        eval_per_second: reference.eval_per_second,
        peak_bytes: reference.peak_bytes,
    };
    println!("{}", figures_line(&description, &figures, flops));
    if let Some(cpu) = cpu {
        println!(
            "{:<44} train {:.2}x  eval {:.2}x  (above 1: the CPU backend is faster)",
            "cpu backend / pytorch",
            cpu.train_per_second / figures.train_per_second,
            cpu.eval_per_second / figures.eval_per_second,
        );
    }
}

struct PytorchFigures {
    version: String,
    threads: u64,
    train_per_second: f64,
    eval_per_second: f64,
    peak_bytes: Option<u64>,
}

fn run_python(python: &str, arguments: &[String]) -> Result<PytorchFigures, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let mut child = Command::new(python)
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{python}` ({e}); pass --python or --no-pytorch"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(PYTORCH_REFERENCE.as_bytes())
        .map_err(|e| format!("cannot send the reference script to `{python}` ({e})"))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| format!("`{python}` failed ({e})"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'torch'") {
        return Err(format!(
            "PyTorch is not installed for `{python}` (pip install torch, or pass --python)"
        ));
    }
    if !output.status.success() {
        let last = stderr.lines().last().unwrap_or("nothing on standard error");
        return Err(format!(
            "the PyTorch reference run by `{python}` failed ({}): {last}",
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("unreadable output from the PyTorch reference ({e}): {line}"))?;
    let number = |key: &str| {
        value[key]
            .as_f64()
            .ok_or_else(|| format!("the PyTorch reference printed no `{key}`"))
    };
    Ok(PytorchFigures {
        version: value["torch_version"].as_str().unwrap_or("?").to_string(),
        threads: value["threads"].as_u64().unwrap_or(0),
        train_per_second: number("train_episodes_per_second")?,
        eval_per_second: number("eval_episodes_per_second")?,
        peak_bytes: value["peak_rss_bytes"].as_u64(),
    })
}

/// Floating-point operations of the convolutions of one episode: evaluation is the forward
/// pass, training adds the weight gradient and the input gradient (none for the first
/// convolution, whose input is the image). Pooling, BatchNorm, ReLU and the head are left out;
/// they are a few percent of the total.
struct EpisodeFlops {
    train: f64,
    eval: f64,
}

impl EpisodeFlops {
    fn of(model: BenchModel, images: usize, side: usize) -> Self {
        let layers = conv_layers(model, side);
        let per_layer: Vec<f64> = layers
            .iter()
            .map(|layer| {
                let out = (layer.side + 2 * layer.padding - layer.kernel) / layer.stride + 1;
                2.0 * (images * layer.in_channels * layer.kernel * layer.kernel) as f64
                    * (layer.out_channels * out * out) as f64
            })
            .collect();
        let eval: f64 = per_layer.iter().sum();
        EpisodeFlops {
            train: 3.0 * eval - per_layer[0],
            eval,
        }
    }
}

struct ConvLayer {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    /// Input side in pixels.
    side: usize,
}

fn conv_layers(model: BenchModel, side: usize) -> Vec<ConvLayer> {
    let layer = |in_channels, out_channels, kernel, stride, side| ConvLayer {
        in_channels,
        out_channels,
        kernel,
        stride,
        padding: kernel / 2,
        side,
    };
    match model {
        BenchModel::Conv4 => (0..4)
            .map(|i| layer(if i == 0 { 3 } else { 64 }, 64, 3, 1, side >> i))
            .collect(),
        BenchModel::Resnet18 => {
            let mut layers = vec![layer(3, 64, 7, 2, side)];
            let mut side = (side + 6 - 7) / 2 + 1;
            side = (side + 2 - 3) / 2 + 1;
            let mut channels = 64;
            for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
                for block in 0..2 {
                    let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                    layers.push(layer(channels, width, 3, stride, side));
                    if stride != 1 || channels != width {
                        layers.push(layer(channels, width, 1, stride, side));
                    }
                    side = (side + 2 - 3) / stride + 1;
                    layers.push(layer(width, width, 3, 1, side));
                    channels = width;
                }
            }
            layers
        }
    }
}

fn measure(selected: &SelectedDevice, args: &BenchArgs) -> Figures {
    let device = &selected.device;
    let train_device = device.clone().autodiff();
    train_device.seed(0);
    match args.model {
        BenchModel::Conv4 => {
            let model = Conv4Config::new().init(&train_device);
            measure_model(selected, args, model, |m, x| m.forward(x))
        }
        BenchModel::Resnet18 => {
            let model = ResNetConfig::new().init(&train_device);
            measure_model(selected, args, model, |m, x| m.forward(x))
        }
    }
}

fn measure_model<M: Module>(
    selected: &SelectedDevice,
    args: &BenchArgs,
    mut model: M,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
) -> Figures {
    let device = &selected.device;
    let train_device = device.clone().autodiff();
    let side = args.image_size;
    let n_support = args.n_way * args.n_shot;
    let n_query = args.n_way * args.n_query;
    let count = n_support + n_query;
    let mut optimizer = AdamConfig::new()
        .with_epsilon(1e-8)
        .with_amsgrad(true)
        .init();
    let labels: Vec<i64> = (0..n_query).map(|i| (i / args.n_query) as i64).collect();
    let pixels: Vec<f32> = (0..count * 3 * side * side)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();

    let mut train_step = || {
        let images = Tensor::<4>::from_data(
            TensorData::new(pixels.clone(), [count, 3, side, side]),
            &train_device,
        );
        let label_tensor =
            Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [n_query]), &train_device);
        let embeddings = forward(&model, images);
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
        let images = Tensor::<4>::from_data(
            TensorData::new(pixels.clone(), [count, 3, side, side]),
            device,
        );
        let embeddings = forward(&eval_model, images);
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
