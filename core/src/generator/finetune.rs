//! One-image fine-tuning of the generator and sampling from the result.
//!
//! For one target image, Adam trains three groups. The first is the linear maps that produce the
//! conditional BatchNorm gains and biases, with the per-channel scale and shift after the first
//! linear layer (learning rate 5e-4). The second is one latent `z` (1e-2). The third is one
//! class vector, starting at the mean of the class embedding (3e-2). Everything else is frozen, and
//! BatchNorm uses its stored statistics. Each iteration feeds `z + N(0, 0.05^2)` and minimises
//! `L1(G(z), y) + 0.1 * perceptual + 0.1 * EMD(z)`. The perceptual term sums the mean squared
//! differences of the VGG16 activations `relu1_1` to `relu4_2`, with ImageNet-normalised inputs.
//! EMD compares `z` with fresh N(0, I) samples: it is the mean over `z` of the smallest squared
//! distance to a sample plus the mean over samples of the smallest squared distance to `z`.
//!
//! Sampling then draws `clamp(z * Bernoulli(0.5) + N(0, 0.2^2), -0.4, 0.4)` per image.

use crate::data::{IMAGENET_MEAN, IMAGENET_STD};
use crate::generator::{BigGan, Vgg16Features};
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;

/// Settings of [`fine_tune`] and [`sample`].
#[derive(Config, Debug, PartialEq)]
pub struct FineTuneConfig {
    /// Adam iterations on the target image.
    #[config(default = 500)]
    pub iterations: usize,
    /// Learning rate of the conditional BatchNorm maps and the scale and shift after the first
    /// linear layer.
    #[config(default = 5e-4)]
    pub lr_batchnorm: f64,
    /// Learning rate of the latent `z`.
    #[config(default = 1e-2)]
    pub lr_z: f64,
    /// Learning rate of the class vector.
    #[config(default = 3e-2)]
    pub lr_class: f64,
    /// Standard deviation of the noise added to `z` at every iteration.
    #[config(default = 0.05)]
    pub z_noise: f64,
    /// Weight of the perceptual loss.
    #[config(default = 0.1)]
    pub perceptual_weight: f64,
    /// Weight of the EMD loss on `z`.
    #[config(default = 0.1)]
    pub emd_weight: f64,
    /// Number of N(0, I) samples that the EMD loss compares `z` with.
    #[config(default = 10)]
    pub emd_samples: usize,
    /// Bound of the sampling latents (truncation).
    #[config(default = 0.4)]
    pub truncation: f64,
    /// Standard deviation of the noise added to `z` when sampling.
    #[config(default = 0.2)]
    pub sample_noise: f64,
}

/// A trainable row vector, so that `z` and the class vector each get their own optimizer.
#[derive(Module, Debug)]
struct Vector {
    value: Param<Tensor<2>>,
}

/// The result of fine-tuning on one image.
#[derive(Debug)]
pub struct FineTuned {
    /// The adapted generator (on the device it was trained on, without gradient tracking).
    pub generator: BigGan,
    /// The learned latent, `[1, dim_z]`.
    pub z: Tensor<2>,
    /// The learned class vector, `[1, shared_dim]`.
    pub class: Tensor<2>,
    /// The loss of the last iteration.
    pub final_loss: f32,
    /// The reconstruction part of the loss at the last iteration, L1 plus weighted perceptual
    /// loss (the EMD part is noisy because it compares with fresh samples).
    pub final_reconstruction: f32,
}

/// Marks the parameters that fine-tuning trains and freezes all others.
fn with_trainable_parameters(generator: BigGan) -> BigGan {
    let mut generator = generator.no_grad();
    let trainable = |param: Param<Tensor<2>>| param.set_require_grad(true);
    for stage in &mut generator.blocks {
        let block = &mut stage.block;
        for bn in [&mut block.bn1, &mut block.bn2] {
            bn.gain.weight = trainable(bn.gain.weight.clone());
            bn.bias.weight = trainable(bn.bias.weight.clone());
        }
    }
    generator.linear_scale = generator.linear_scale.set_require_grad(true);
    generator.linear_shift = generator.linear_shift.set_require_grad(true);
    generator
}

/// Maps images in [-1, 1] to ImageNet-normalised inputs of VGG16.
fn vgg_input(images: Tensor<4>) -> Tensor<4> {
    let device = images.device();
    let mean = Tensor::<1>::from_floats(IMAGENET_MEAN, &device).reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_floats(IMAGENET_STD, &device).reshape([1, 3, 1, 1]);
    (images.add_scalar(1.0).div_scalar(2.0) - mean) / std
}

/// Returns the EMD loss of latents `z` (`[n, dim]`) against `samples` (`[m, dim]`).
pub fn emd_loss(z: Tensor<2>, samples: Tensor<2>) -> Tensor<1> {
    let [n, dim] = z.dims();
    let [m, _] = samples.dims();
    let difference = z.reshape([n, 1, dim]) - samples.reshape([1, m, dim]);
    let distances = difference.square().sum_dim(2).reshape([n, m]);
    let rows = distances.clone().min_dim(1).mean();
    let columns = distances.min_dim(0).mean();
    rows + columns
}

/// Fine-tunes `generator` on one `target` image.
///
/// `generator` and `vgg` must be on an autodiff device; `seed` fixes the noise of this run.
///
/// # Shapes
/// - `target`: `[1, 3, resolution, resolution]`, in [-1, 1]
pub fn fine_tune(
    generator: &BigGan,
    vgg: &Vgg16Features,
    target: Tensor<4>,
    config: &FineTuneConfig,
    seed: u64,
) -> FineTuned {
    let device = target.device();
    device.seed(seed);
    let vgg = vgg.clone().no_grad();
    let mut generator = with_trainable_parameters(generator.clone());
    let dim_z = generator.linear.weight.dims()[1] * (generator.blocks.len() + 1);
    let mut z = Vector {
        value: Param::from_tensor(Tensor::zeros([1, dim_z], &device)),
    };
    let mut class = Vector {
        value: Param::from_tensor(generator.mean_class_vector().detach()),
    };
    let adam = AdamConfig::new();
    let (mut generator_optimizer, mut z_optimizer, mut class_optimizer) =
        (adam.init(), adam.init(), adam.init());

    let target_features: Vec<Tensor<4>> = vgg
        .forward(vgg_input(target.clone()))
        .into_iter()
        .map(|map| map.detach())
        .collect();
    let mut final_loss = f32::NAN;
    let mut final_reconstruction = f32::NAN;
    for _ in 0..config.iterations {
        let noise = Tensor::random(
            [1, dim_z],
            Distribution::Normal(0.0, config.z_noise),
            &device,
        );
        let images = generator.forward(z.value.val() + noise, class.value.val());

        let l1 = (images.clone() - target.clone()).abs().mean();
        let features = vgg.forward(vgg_input(images));
        let perceptual = features
            .into_iter()
            .zip(&target_features)
            .map(|(map, reference)| (map - reference.clone()).square().mean())
            .reduce(|a, b| a + b)
            .expect("VGG16 returns feature maps");
        let samples = Tensor::random(
            [config.emd_samples, dim_z],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let emd = emd_loss(z.value.val(), samples);
        let reconstruction = l1 + perceptual.mul_scalar(config.perceptual_weight);
        final_reconstruction = reconstruction.clone().into_scalar::<f32>();
        let loss = reconstruction + emd.mul_scalar(config.emd_weight);
        final_loss = loss.clone().into_scalar::<f32>();

        let mut gradients = loss.backward();
        let generator_gradients = GradientsParams::from_module(&mut gradients, &generator);
        let z_gradients = GradientsParams::from_module(&mut gradients, &z);
        let class_gradients = GradientsParams::from_module(&mut gradients, &class);
        generator = generator_optimizer.step(config.lr_batchnorm, generator, generator_gradients);
        z = z_optimizer.step(config.lr_z, z, z_gradients);
        class = class_optimizer.step(config.lr_class, class, class_gradients);
    }
    FineTuned {
        generator: generator.no_grad(),
        z: z.value.val().detach(),
        class: class.value.val().detach(),
        final_loss,
        final_reconstruction,
    }
}

/// Draws `count` images from a fine-tuned generator; `seed` fixes the latents.
///
/// # Shapes
/// - output: `[count, 3, resolution, resolution]`, in [-1, 1]
pub fn sample(tuned: &FineTuned, count: usize, config: &FineTuneConfig, seed: u64) -> Tensor<4> {
    let device = tuned.z.device();
    device.seed(seed);
    let [_, dim_z] = tuned.z.dims();
    let z = tuned.z.clone().expand([count, dim_z]);
    let keep = Tensor::<2>::random([count, dim_z], Distribution::Bernoulli(0.5), &device);
    let noise = Tensor::random(
        [count, dim_z],
        Distribution::Normal(0.0, config.sample_noise),
        &device,
    );
    let latents = (z * keep + noise).clamp(-config.truncation, config.truncation);
    let classes = tuned.class.clone().expand([count, tuned.class.dims()[1]]);
    tuned.generator.forward(latents.detach(), classes.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{BigGanConfig, Vgg16Config};

    #[test]
    fn emd_of_identical_sets_is_zero() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let z = Tensor::<2>::from_floats([[1.0, 2.0], [0.0, -1.0]], &device);
        let loss: f32 = emd_loss(z.clone(), z).into_scalar();
        assert_eq!(loss, 0.0);
    }

    #[test]
    fn emd_matches_hand_computation() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let z = Tensor::<2>::from_floats([[0.0, 0.0]], &device);
        let samples = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 2.0]], &device);
        // Squared distances 1 and 4: row minimum 1; column minima 1 and 4, mean 2.5.
        let loss: f32 = emd_loss(z, samples).into_scalar();
        assert!((loss - 3.5).abs() < 1e-6, "{loss}");
    }

    /// Fine-tuning a small random generator on one image must bring its output closer to the
    /// image, change only the trainable parameters, and give samples of the right shape and
    /// range.
    #[test]
    fn fine_tuning_fits_image_and_freezes_rest() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex().autodiff();
        device.seed(5);
        let generator = BigGanConfig::new()
            .with_channels(4)
            .with_resolution(32)
            .with_dim_z(40)
            .with_shared_dim(8)
            .with_n_classes(3)
            .with_attention_resolution(0)
            .init(&device);
        let vgg = Vgg16Config::new().with_width_divisor(16).init(&device);
        // A smooth colour pattern, something a generator can approach.
        let pattern: Vec<f32> = (0..3 * 32 * 32)
            .map(|i| {
                let (c, y, x) = (i / 1024, (i / 32) % 32, i % 32);
                0.8 * ((x as f32 / 5.0 + c as f32).sin() * (y as f32 / 7.0).cos())
            })
            .collect();
        let target = Tensor::<4>::from_data(TensorData::new(pattern, [1, 3, 32, 32]), &device);

        let short = FineTuneConfig::new().with_iterations(1);
        let long = FineTuneConfig::new().with_iterations(80);
        let first = fine_tune(&generator, &vgg, target.clone(), &short, 9);
        let tuned = fine_tune(&generator, &vgg, target, &long, 9);
        assert!(
            tuned.final_reconstruction < 0.9 * first.final_reconstruction,
            "reconstruction loss after 80 iterations {} is not 10% below the first {}",
            tuned.final_reconstruction,
            first.final_reconstruction
        );
        assert!(tuned.final_loss.is_finite());

        let frozen_before = generator.blocks[0].block.conv1.weight.val();
        let frozen_after = tuned.generator.blocks[0].block.conv1.weight.val();
        let frozen_change: f32 = (frozen_before - frozen_after).abs().max().into_scalar();
        assert_eq!(frozen_change, 0.0, "a frozen convolution changed");
        let gain_before = generator.blocks[0].block.bn1.gain.weight.val();
        let gain_after = tuned.generator.blocks[0].block.bn1.gain.weight.val();
        let gain_change: f32 = (gain_before - gain_after).abs().max().into_scalar();
        assert!(
            gain_change > 0.0,
            "a conditional BatchNorm map did not train"
        );

        let images = sample(&tuned, 3, &long, 1);
        assert_eq!(images.dims(), [3, 3, 32, 32]);
        let values = images.into_data().try_to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
