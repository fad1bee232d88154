//! The episodic training loop of ProtoNet and MetaIRNet.
//!
//! Each epoch runs `episodes_per_epoch` training episodes, then scores the model on fixed-seed
//! validation episodes, saves a checkpoint and appends a line to `metrics.jsonl`. Training an
//! existing run folder resumes after its newest checkpoint, so an interruption loses at most
//! the epoch in progress.

use super::build::{BuildError, initial_model};
use super::checkpoint::{
    CheckpointError, checkpoint_name, load_model, load_optimizer, load_state, prune_checkpoints,
    save_checkpoint,
};
use super::config::TrainConfig;
use super::eval::{EpisodeData, evaluate_episodes, mean_and_ci95};
use super::prepare::{PreparedEpisode, SupportPlan};
use super::progress::Progress;
use super::run::{BestEpoch, RunError, RunFolder, to_json_pretty, write_file};
use crate::data::{DataError, GeneratedImages, ImageStore, Split};
use crate::episodes::EpisodeSampler;
use crate::model::{FewShotNet, accuracy, protonet_loss};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

/// Errors that stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(
        "the training loss became {value} at epoch {epoch}, episode {episode}, so training stopped; {kept}. Run the same command with a lower --lr to continue from there"
    )]
    NonFiniteLoss {
        value: f32,
        epoch: usize,
        episode: usize,
        /// A sentence on what the run folder keeps, e.g. "the last good checkpoint,
        /// checkpoints/epoch-0003, is kept".
        kept: String,
    },
}

/// Metrics of one finished epoch, as written to `metrics.jsonl`. Accuracies are in percent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_accuracy: f64,
    pub val_ci95: f64,
    /// Learning rate at the start of the epoch.
    pub lr: f64,
    pub train_seconds: f64,
    pub val_seconds: f64,
    pub train_episodes_per_second: f64,
    /// Mean and standard deviation of the fusion weights over the epoch's training episodes,
    /// for MetaIRNet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_weight_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_weight_std: Option<f64>,
}

/// The trainer state that a checkpoint records besides weights and optimizer state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TrainerState {
    pub epochs_done: usize,
    pub history: Vec<EpochMetrics>,
    pub best: Option<BestEpoch>,
}

/// Inputs of [`train`] besides the configuration.
pub struct TrainOptions<'a> {
    pub run: &'a RunFolder,
    /// The device to train on, without autodiff (it is added here).
    pub device: &'a Device,
    /// Photos of the base classes.
    pub base: Arc<ImageStore>,
    /// Generated images of the base photos, for augmentations that read them.
    pub base_generated: Option<Arc<GeneratedImages>>,
    /// Photos of the validation classes.
    pub val: &'a ImageStore,
    /// Generated images of the validation photos.
    pub val_generated: Option<&'a GeneratedImages>,
    pub progress: &'a dyn Progress,
}

/// The outcome of a call to [`train`].
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Epoch the run resumed after (0 for a fresh run).
    pub resumed_from: usize,
    pub history: Vec<EpochMetrics>,
    pub best: Option<BestEpoch>,
}

/// Checks that the base and validation photos suffice for the configured episodes, so that a
/// run folder is only created for a training that can start.
///
/// # Errors
/// [`DataError::TooFewClasses`] or [`DataError::TooFewImages`] for either split.
pub fn check_episode_data(
    config: &TrainConfig,
    base: &ImageStore,
    val: &ImageStore,
) -> Result<(), DataError> {
    EpisodeSampler::new(base, Split::Base, config.episodes, config.seed)?;
    EpisodeSampler::new(val, Split::Val, config.episodes, config.validation.seed)?;
    Ok(())
}

/// Trains until `config.training.epochs` epochs are done, resuming from the run's newest
/// checkpoint if it has one.
///
/// # Errors
/// Too few classes or images for the episode shape (raised before the first step), a loss that
/// is NaN or infinite, and failures to write the run folder.
pub fn train(config: &TrainConfig, options: TrainOptions<'_>) -> Result<TrainOutcome, TrainError> {
    let TrainOptions {
        run,
        device,
        base,
        base_generated,
        val,
        val_generated,
        progress,
    } = options;
    let shape = config.episodes;
    let train_sampler = EpisodeSampler::new(&base, Split::Base, shape, config.seed)?;
    let val_sampler = EpisodeSampler::new(val, Split::Val, shape, config.validation.seed)?;

    let train_device = device.clone().autodiff();
    let plain_device = device.clone();
    let adam = AdamConfig::new()
        .with_beta_1(config.optimizer.beta1 as f32)
        .with_beta_2(config.optimizer.beta2 as f32)
        .with_epsilon(config.optimizer.epsilon as f32)
        .with_amsgrad(config.optimizer.amsgrad);
    let mut optimizer = adam.init();

    let (mut model, mut state) = match run.latest_checkpoint()? {
        Some((_, dir)) => {
            let state = load_state(&dir)?;
            let model = load_model(&dir, config, &train_device)?;
            optimizer = load_optimizer(&dir, optimizer)?;
            log::info!(
                "resuming after epoch {} from {}",
                state.epochs_done,
                dir.display()
            );
            (model, state)
        }
        None => {
            train_device.seed(config.seed);
            let model = initial_model(config, &train_device)?;
            let state = TrainerState {
                epochs_done: 0,
                history: Vec::new(),
                best: None,
            };
            (model, state)
        }
    };
    let resumed_from = state.epochs_done;
    // A crash between writing a checkpoint and the metrics file leaves the metrics behind;
    // the checkpoint's own history is authoritative.
    rewrite_metrics(run, &state.history)?;
    let embedding_dim = config
        .model
        .backbone
        .embedding_dim(config.model.image_size.pixels() as usize);
    let train_plan = SupportPlan {
        augment: config.model.support_augment,
        copies: config.model.n_aug,
        embedding_dim,
        block_dropout: config
            .block_dropout
            .enabled
            .then(|| config.block_dropout.clone()),
        seed: config.seed,
    };
    let val_plan = SupportPlan {
        block_dropout: None,
        seed: config.validation.seed,
        ..train_plan.clone()
    };
    let val_data = EpisodeData {
        photos: val,
        generated: val_generated,
    };

    for epoch in state.epochs_done..config.training.epochs {
        let lr_at_start = config.schedule.learning_rate(
            config.optimizer.lr,
            epoch as f64,
            config.training.epochs,
        );
        progress.begin(
            &format!("epoch {}/{}", epoch + 1, config.training.epochs),
            config.training.episodes_per_epoch as u64,
        );
        let started = Instant::now();
        let outcome = train_epoch(
            config,
            epoch,
            model,
            &mut optimizer,
            EpochData {
                sampler: &train_sampler,
                plan: &train_plan,
                photos: &base,
                generated: &base_generated,
            },
            &train_device,
            progress,
            &state,
        )?;
        model = outcome.model;
        let (loss, accuracy) = (outcome.loss, outcome.accuracy);
        let train_seconds = started.elapsed().as_secs_f64();
        progress.finish();

        progress.begin("validation", config.validation.episodes as u64);
        let started = Instant::now();
        let eval_model = model.valid();
        let accuracies = evaluate_episodes(
            &eval_model,
            val_data,
            &val_sampler,
            &val_plan,
            config.validation.episodes,
            &plain_device,
            progress,
        );
        let (val_accuracy, val_ci95) = mean_and_ci95(&accuracies);
        let val_seconds = started.elapsed().as_secs_f64();
        progress.finish();

        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss,
            train_accuracy: accuracy,
            val_accuracy,
            val_ci95,
            lr: lr_at_start,
            train_seconds,
            val_seconds,
            train_episodes_per_second: config.training.episodes_per_epoch as f64 / train_seconds,
            fusion_weight_mean: outcome.fusion_weights.map(|(mean, _)| mean),
            fusion_weight_std: outcome.fusion_weights.map(|(_, std)| std),
        };
        log::info!(
            "epoch {}: loss {:.4}, train acc {:.2}%, val acc {:.2}% ± {:.2}, {:.2} episodes/s",
            metrics.epoch,
            metrics.train_loss,
            metrics.train_accuracy,
            metrics.val_accuracy,
            metrics.val_ci95,
            metrics.train_episodes_per_second
        );

        state.epochs_done = epoch + 1;
        state.history.push(metrics);
        let improved = state
            .best
            .as_ref()
            .is_none_or(|best| val_accuracy > best.val_accuracy);
        if improved {
            state.best = Some(BestEpoch {
                epoch: epoch + 1,
                val_accuracy,
                val_ci95,
                checkpoint: format!("checkpoints/{}", checkpoint_name(epoch + 1)),
            });
        }

        save_checkpoint(run, &model, &optimizer, &state)?;
        rewrite_metrics(run, &state.history)?;
        if let Some(best) = &state.best {
            write_file(&run.best_path(), &to_json_pretty(best))?;
        }
        let mut keep = vec![checkpoint_name(state.epochs_done)];
        if let Some(best) = &state.best {
            keep.push(checkpoint_name(best.epoch));
        }
        prune_checkpoints(run, &keep);
    }

    Ok(TrainOutcome {
        resumed_from,
        history: state.history,
        best: state.best,
    })
}

/// The episodes of a training epoch.
struct EpochData<'a> {
    sampler: &'a EpisodeSampler,
    plan: &'a SupportPlan,
    photos: &'a Arc<ImageStore>,
    generated: &'a Option<Arc<GeneratedImages>>,
}

/// The result of one training epoch.
struct EpochOutcome {
    model: FewShotNet,
    loss: f64,
    /// Percent.
    accuracy: f64,
    /// Mean and standard deviation of the fusion weights, when the model fuses.
    fusion_weights: Option<(f64, f64)>,
}

/// Runs one epoch of training episodes and returns the updated model with the mean loss and
/// mean training accuracy.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    config: &TrainConfig,
    epoch: usize,
    mut model: FewShotNet,
    optimizer: &mut ModuleOptimizer,
    data: EpochData<'_>,
    device: &Device,
    progress: &dyn Progress,
    state: &TrainerState,
) -> Result<EpochOutcome, TrainError> {
    let shape = config.episodes;
    let per_epoch = config.training.episodes_per_epoch;
    let first_index = (epoch * per_epoch) as u64;
    let fusion_lr_factor = config.fusion.lr_factor();

    // Episodes are assembled on a second thread while the model computes.
    let (sender, receiver) = sync_channel::<PreparedEpisode>(2);
    let producer_sampler = data.sampler.clone();
    let producer_plan = data.plan.clone();
    let producer_photos = Arc::clone(data.photos);
    let producer_generated = data.generated.clone();
    let flip = config.training.flip;
    let producer = std::thread::spawn(move || {
        for index in first_index..first_index + per_epoch as u64 {
            let episode = producer_sampler.episode(index, flip);
            let prepared = producer_plan.prepare(
                episode,
                index,
                &producer_photos,
                producer_generated.as_deref(),
            );
            if sender.send(prepared).is_err() {
                break;
            }
        }
    });

    let mut loss_sum = 0.0;
    let mut accuracy_sum = 0.0;
    let (mut weight_sum, mut weight_square_sum, mut weight_count) = (0.0f64, 0.0f64, 0usize);
    for step in 0..per_epoch {
        let prepared = receiver.recv().expect("episode producer thread stopped");
        let progress_in_epochs = epoch as f64 + step as f64 / per_epoch as f64;
        let lr = config.schedule.learning_rate(
            config.optimizer.lr,
            progress_in_epochs,
            config.training.epochs,
        );

        let labels = prepared.episode.query_labels(&shape);
        let label_tensor =
            Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [labels.len()]), device);
        let output = model.episode(prepared.input(shape.n_way, device), &prepared.augment);
        let loss = protonet_loss(output.logits.clone(), label_tensor);

        let loss_value = loss.clone().into_scalar::<f32>();
        if !loss_value.is_finite() {
            drop(receiver);
            let _ = producer.join();
            let kept = match state.epochs_done {
                0 => "no epoch had finished, so the run has no checkpoint yet".to_string(),
                done => format!(
                    "the last good checkpoint, checkpoints/{}, is kept",
                    checkpoint_name(done)
                ),
            };
            return Err(TrainError::NonFiniteLoss {
                value: loss_value,
                epoch: epoch + 1,
                episode: step + 1,
                kept,
            });
        }
        let logits_values = output
            .logits
            .into_data()
            .try_to_vec::<f32>()
            .expect("logits are f32");
        let episode_accuracy = 100.0 * accuracy(&logits_values, &labels, shape.n_way);
        if let Some(weights) = output.fusion_weights {
            let values = weights.into_data().try_to_vec::<f32>().expect("f32 weights");
            weight_sum += values.iter().map(|&w| w as f64).sum::<f64>();
            weight_square_sum += values.iter().map(|&w| (w as f64).powi(2)).sum::<f64>();
            weight_count += values.len();
        }

        // One optimizer for both parts: its state is keyed by parameter, and the fusion
        // network takes its own learning rate.
        let mut gradients = loss.backward();
        let FewShotNet { backbone, fusion } = model;
        let backbone_gradients = GradientsParams::from_module(&mut gradients, &backbone);
        let backbone = optimizer.step(lr, backbone, backbone_gradients);
        let fusion = fusion.map(|fusion| {
            let fusion_gradients = GradientsParams::from_module(&mut gradients, &fusion);
            optimizer.step(lr * fusion_lr_factor, fusion, fusion_gradients)
        });
        model = FewShotNet { backbone, fusion };

        loss_sum += loss_value as f64;
        accuracy_sum += episode_accuracy;
        progress.advance(1);
        let done = (step + 1) as f64;
        progress.set_message(&format!(
            "loss {:.3} acc {:.1}%",
            loss_sum / done,
            accuracy_sum / done
        ));
    }
    producer.join().expect("episode producer thread panicked");
    let fusion_weights = (weight_count > 0).then(|| {
        let mean = weight_sum / weight_count as f64;
        let variance = (weight_square_sum / weight_count as f64 - mean * mean).max(0.0);
        (mean, variance.sqrt())
    });
    Ok(EpochOutcome {
        model,
        loss: loss_sum / per_epoch as f64,
        accuracy: accuracy_sum / per_epoch as f64,
        fusion_weights,
    })
}

/// Writes `metrics.jsonl` with one line per epoch of `history`.
fn rewrite_metrics(run: &RunFolder, history: &[EpochMetrics]) -> Result<(), RunError> {
    let mut text = String::new();
    for metrics in history {
        text.push_str(&serde_json::to_string(metrics).expect("metrics serialise"));
        text.push('\n');
    }
    write_file(&run.metrics_path(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repeating one episode must drive its loss down: the forward pass, the gradients and the
    /// optimizer step fit together.
    #[test]
    fn adam_fits_one_episode() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex().autodiff();
        device.seed(3);
        let mut model = crate::model::Conv4Config::new().init(&device);
        let mut optimizer = AdamConfig::new()
            .with_epsilon(1e-8)
            .with_amsgrad(true)
            .init();
        let (n_way, n_query) = (3, 2);
        let count = n_way + n_way * n_query;
        let pixels: Vec<f32> = (0..count * 3 * 84 * 84)
            .map(|i| (((i * 2_654_435_761usize) >> 7) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let labels: Vec<i64> = (0..n_way * n_query).map(|i| (i / n_query) as i64).collect();

        let mut losses = Vec::new();
        for _ in 0..15 {
            let images = Tensor::<4>::from_data(
                TensorData::new(pixels.clone(), [count, 3, 84, 84]),
                &device,
            );
            let label_tensor = Tensor::<1, Int>::from_data(
                TensorData::new(labels.clone(), [labels.len()]),
                &device,
            );
            let embeddings = model.forward(images);
            let logits = crate::model::protonet_logits(embeddings, n_way, n_way);
            let loss = protonet_loss(logits, label_tensor);
            losses.push(loss.clone().into_scalar::<f32>());
            let gradients = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(1e-3, model, gradients);
        }
        let first = losses[0];
        let last = *losses.last().unwrap();
        assert!(first.is_finite(), "first loss {first}");
        assert!(first > 0.0, "first loss {first}");
        assert!(
            last < 0.1 * first,
            "loss went from {first} to {last}: {losses:?}"
        );
    }
}
