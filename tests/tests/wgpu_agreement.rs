//! The wgpu backend and the CPU backend must compute the same training step and the same
//! evaluation episode from the same weights and the same real photos.
//!
//! On a machine without a GPU this runs on lavapipe (Mesa's CPU Vulkan driver), so the episode
//! is kept small: 3-way 1-shot 2-query, 9 photos of 84x84.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Gradients;
use metairnet::data::{Dataset, ImageSize, ImageStore, LoadOptions, Split};
use metairnet::episodes::{EpisodeSampler, EpisodeShape};
use metairnet::model::{Conv4, Conv4Config, protonet_loss, prototypes, query_logits};
use metairnet_tests::cub50_dir;

/// Relative tolerance on the loss and on each logit: float32 sums in a different order.
const VALUE_TOLERANCE: f32 = 1e-3;
/// Tolerance on the L2 norm of each parameter's gradient difference, relative to the gradient's
/// norm. Single entries may differ by five times this, relative to the largest entry.
const GRADIENT_TOLERANCE: f32 = 1e-2;

struct GradientCollector<'a> {
    gradients: &'a Gradients,
    values: Vec<Vec<f32>>,
}

impl ModuleVisitor for GradientCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(gradient) = param.val().grad(self.gradients) {
            self.values
                .push(gradient.into_data().try_to_vec::<f32>().unwrap());
        }
    }
}

struct StepResult {
    loss: f32,
    gradients: Vec<Vec<f32>>,
    eval_logits: Vec<f32>,
}

fn run_step(
    model: Conv4,
    images: &[f32],
    count: usize,
    labels: &[i64],
    shape: EpisodeShape,
    device: &Device,
) -> StepResult {
    let train_device = device.clone().autodiff();
    let model = model.to_device(&train_device).train();
    let n_support = shape.n_way * shape.n_shot;
    let n_query = labels.len();

    let input = Tensor::<4>::from_data(
        TensorData::new(images.to_vec(), [count, 3, 84, 84]),
        &train_device,
    );
    let label_tensor =
        Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [n_query]), &train_device);
    let embeddings = model.forward(input);
    let support = embeddings.clone().narrow(0, 0, n_support);
    let queries = embeddings.narrow(0, n_support, n_query);
    let loss = protonet_loss(
        query_logits(queries, prototypes(support, shape.n_way)),
        label_tensor,
    );
    let loss_value = loss.clone().into_scalar::<f32>();
    let gradients = loss.backward();
    let mut collector = GradientCollector {
        gradients: &gradients,
        values: Vec::new(),
    };
    model.visit(&mut collector);

    let eval_model = model.valid();
    let input =
        Tensor::<4>::from_data(TensorData::new(images.to_vec(), [count, 3, 84, 84]), device);
    let embeddings = eval_model.forward(input);
    let support = embeddings.clone().narrow(0, 0, n_support);
    let queries = embeddings.narrow(0, n_support, n_query);
    let logits = query_logits(queries, prototypes(support, shape.n_way));

    StepResult {
        loss: loss_value,
        gradients: collector.values,
        eval_logits: logits.into_data().try_to_vec::<f32>().unwrap(),
    }
}

#[test]
fn wgpu_matches_cpu_on_real_episode() {
    // Autotuning every kernel on a software rasteriser takes minutes; the default kernels are
    // what this test compares.
    // SAFETY: set before any thread of this test binary reads the environment.
    unsafe { std::env::set_var("CUBECL_AUTOTUNE_LEVEL", "minimal") };

    let dataset = Dataset::open(&cub50_dir())
        .expect("cub50 dataset")
        .split(Split::Novel);
    let mut small = dataset.clone();
    small.classes.truncate(3);
    for class in &mut small.classes {
        class.images.truncate(3);
    }
    let (store, _) =
        ImageStore::load(&small, ImageSize::S84, &LoadOptions::default(), &|_| {}).unwrap();
    let shape = EpisodeShape {
        n_way: 3,
        n_shot: 1,
        n_query: 2,
    };
    let episode = EpisodeSampler::new(&store, Split::Novel, shape, 123)
        .unwrap()
        .episode(0, false);
    let images = episode.images(&store);
    let count = episode.support.len() + episode.query.len();
    let labels = episode.query_labels(&shape);

    let cpu = Device::flex();
    cpu.seed(42);
    let model = Conv4Config::new().init(&cpu);
    let wgpu = Device::wgpu(DeviceKind::DefaultDevice);

    let on_cpu = run_step(model.clone(), &images, count, &labels, shape, &cpu);
    let on_wgpu = run_step(model, &images, count, &labels, shape, &wgpu);

    assert!(on_cpu.loss.is_finite());
    let loss_error = (on_cpu.loss - on_wgpu.loss).abs() / on_cpu.loss.abs().max(1e-6);
    assert!(
        loss_error < VALUE_TOLERANCE,
        "loss: cpu {} vs wgpu {}",
        on_cpu.loss,
        on_wgpu.loss
    );

    // Per block, in visiting order: conv weight, conv bias, BatchNorm gamma, BatchNorm beta.
    assert_eq!(
        on_cpu.gradients.len(),
        16,
        "4 blocks of conv weight, conv bias, gamma, beta"
    );
    assert_eq!(on_cpu.gradients.len(), on_wgpu.gradients.len());
    let max_abs = |values: &[f32]| values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let max_difference = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
    };
    for block in 0..4 {
        let weight_scale = max_abs(&on_cpu.gradients[4 * block]);
        for (offset, name) in [(0, "conv weight"), (2, "gamma"), (3, "beta")] {
            let index = 4 * block + offset;
            let (a, b) = (&on_cpu.gradients[index], &on_wgpu.gradients[index]);
            let scale = max_abs(a).max(1e-12);
            let worst = max_difference(a, b);
            let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            let difference_norm = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt();
            eprintln!(
                "block {block} {name}: gradient scale {scale:e}, max difference {worst:e}, relative L2 {:e}",
                difference_norm / norm
            );
            assert!(
                difference_norm / norm < GRADIENT_TOLERANCE,
                "block {block} {name}: relative L2 gradient difference {}",
                difference_norm / norm
            );
            // NOTE: single entries differ by up to about 1.2% of the largest entry on lavapipe.
            // The cause, summation order or max-pool ties, is not pinned down.
            assert!(
                worst / scale < 5.0 * GRADIENT_TOLERANCE,
                "block {block} {name}: max gradient difference {worst} vs scale {scale}"
            );
        }
        // A bias followed by training-mode BatchNorm has an exact gradient of zero (the batch
        // mean cancels it), so both backends must return rounding noise far below the
        // weight gradient rather than matching digits.
        for bias in [
            &on_cpu.gradients[4 * block + 1],
            &on_wgpu.gradients[4 * block + 1],
        ] {
            let noise = max_abs(bias);
            eprintln!(
                "block {block} conv bias: gradient {noise:e} vs weight gradient scale {weight_scale:e}"
            );
            assert!(
                noise < GRADIENT_TOLERANCE * weight_scale,
                "block {block} conv bias gradient {noise} is not near zero"
            );
        }
    }

    assert_eq!(on_cpu.eval_logits.len(), on_wgpu.eval_logits.len());
    for (a, b) in on_cpu.eval_logits.iter().zip(&on_wgpu.eval_logits) {
        assert!(
            (a - b).abs() / a.abs().max(1.0) < VALUE_TOLERANCE,
            "logit: cpu {a} vs wgpu {b}"
        );
    }
}
