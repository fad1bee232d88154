//! Supervised pretraining of a backbone on the base classes, and the evaluation of the
//! frozen-embedding baselines (Nearest Neighbour, Logistic Regression, Softmax Regression) on
//! its embeddings.
//!
//! The network is the backbone followed by `Linear(embedding_dim, n_base_classes)`, trained with
//! the cross-entropy of ordinary classification: every epoch visits every base image once in an
//! order drawn from `(seed, epoch)`, in minibatches, with Adam. The output folder contains:
//!
//! ```text
//! OUT/
//!   config.json     the configuration, image size, class and image counts, data fingerprint,
//!                   git commit
//!   metrics.jsonl   one JSON object per finished epoch
//!   checkpoints/epoch-NNNN/{model.bpk, optimizer.bpk, state.json, checksums.json}
//! ```
//!
//! Only the newest checkpoint is kept, and a second call on the same folder continues after it.
//! The image order depends only on the seed and the epoch, so an interrupted run ends with the
//! weights of an uninterrupted one, up to floating-point reordering in the backend's kernels.

use super::eval::mean_and_ci95;
use super::progress::Progress;
use crate::baselines::{EmbeddingClassifier, classify};
use crate::data::{ImageSize, ImageStore, write_atomically, write_normalized_chw};
use crate::episodes::EpisodeSampler;
use crate::hash::fnv64_hex;
use crate::model::{Backbone, BackboneKind, accuracy, argmax};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

/// The settings of supervised pretraining. Adam uses amsgrad, betas (0.9, 0.999), epsilon
/// 1e-8 and no weight decay, as the episodic trainer does by default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisedConfig {
    /// The network to train. Default: `conv4`.
    pub backbone: BackboneKind,
    /// Passes over all base images. Default: 100. Raising it on a finished run trains more
    /// epochs.
    pub epochs: usize,
    /// Images per Adam step. Default: 64. The last batch of an epoch takes the remainder.
    pub batch_size: usize,
    /// Adam's learning rate, constant over the run. Default: 1e-3.
    pub lr: f64,
    /// Seed of the initial weights and, with the epoch number, of the image order and flips.
    /// Default: 1.
    pub seed: u64,
    /// Whether each training image is mirrored left to right with probability 0.5. Default: on.
    pub flip: bool,
}

impl Default for SupervisedConfig {
    fn default() -> Self {
        SupervisedConfig {
            backbone: BackboneKind::Conv4,
            epochs: 100,
            batch_size: 64,
            lr: 1e-3,
            seed: 1,
            flip: true,
        }
    }
}

impl SupervisedConfig {
    /// Checks the values that would make training impossible.
    ///
    /// # Errors
    /// [`SupervisedError::InvalidConfig`] naming the field, its value and the valid range.
    pub fn validate(&self) -> Result<(), SupervisedError> {
        let invalid = |field: &'static str, value: String, expected: &'static str| {
            Err(SupervisedError::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if self.epochs == 0 {
            return invalid("epochs", "0".into(), "at least 1");
        }
        if self.batch_size == 0 {
            return invalid("batch_size", "0".into(), "at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid("lr", self.lr.to_string(), "a positive finite number");
        }
        Ok(())
    }
}

/// Errors that stop supervised pretraining.
#[derive(Debug, thiserror::Error)]
pub enum SupervisedError {
    #[error("invalid {field} = {value}; expected {expected}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "the base split has {classes} classes and {images} images; supervised pretraining needs at least 2 classes with images"
    )]
    TooFewImages { classes: usize, images: usize },
    #[error(
        "{path} records {field} = {recorded}, but this call asks for {requested}; use the recorded value to continue that run, or a new output folder"
    )]
    ConfigMismatch {
        path: PathBuf,
        field: &'static str,
        recorded: String,
        requested: String,
    },
    #[error(
        "the training loss became {value} at epoch {epoch}, batch {batch}, so training stopped; {kept}. Run again with a lower lr to continue from there"
    )]
    NonFiniteLoss {
        value: f32,
        epoch: usize,
        batch: usize,
        /// A sentence on the checkpoint that the output folder keeps, e.g.
        /// "checkpoints/epoch-0003 is kept".
        kept: String,
    },
    #[error("failed to write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("failed to read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("failed to save {path}: {message}")]
    Save { path: PathBuf, message: String },
    #[error(
        "failed to load {path}: {message}. The file is damaged or from another model; delete its checkpoint folder to resume from scratch, or use a new output folder"
    )]
    Load { path: PathBuf, message: String },
}

/// Metrics of one finished epoch, as written to `metrics.jsonl`. Accuracy is in percent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupervisedMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's images, measured before each step.
    pub loss: f64,
    /// Top-1 accuracy over the epoch's images, measured before each step.
    pub accuracy: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// The backbone with the linear classifier over the base classes.
#[derive(Module, Debug)]
struct SupervisedNet {
    backbone: Backbone,
    head: Linear,
}

impl SupervisedNet {
    fn new(kind: BackboneKind, size: ImageSize, classes: usize, device: &Device) -> Self {
        let backbone = kind.init(device);
        let dim = kind.embedding_dim(size.pixels() as usize);
        SupervisedNet {
            backbone,
            head: LinearConfig::new(dim, classes).init(device),
        }
    }

    /// # Shapes
    /// - `images`: `[batch, 3, side, side]`
    /// - output: `[batch, classes]`
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let embeddings = self.backbone.forward(images);
        self.head.forward(embeddings)
    }
}

/// The contents of `config.json`. Everything but `epochs` and `git_commit` must match when a
/// run continues.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunRecord {
    config: SupervisedConfig,
    image_size: ImageSize,
    classes: usize,
    images: usize,
    data_fingerprint: String,
    /// The commit of the call that created the folder.
    git_commit: String,
}

/// The training state that a checkpoint records besides weights and optimizer state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointState {
    epochs_done: usize,
    history: Vec<SupervisedMetrics>,
}

const CONFIG_FILE: &str = "config.json";
const METRICS_FILE: &str = "metrics.jsonl";
const CHECKPOINTS_DIR: &str = "checkpoints";
const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";
/// FNV-1a hashes of the weight files, checked before loading so that a damaged file is an
/// error instead of a silently different model.
const CHECKSUM_FILE: &str = "checksums.json";

/// Trains `config.backbone` to classify the images of `base` and returns it, ready for
/// evaluation (see [`evaluate_frozen`]).
///
/// Continues after the newest checkpoint in `out_dir/checkpoints` when there is one, and returns
/// the saved backbone without training when all `config.epochs` are done.
///
/// # Errors
/// An invalid configuration, fewer than 2 classes with images, a folder made with another
/// configuration or other data, a loss that is NaN or infinite, and failures to read or write
/// `out_dir`.
pub fn train_supervised(
    config: &SupervisedConfig,
    out_dir: &Path,
    base: &ImageStore,
    device: &Device,
    progress: &dyn Progress,
) -> Result<Backbone, SupervisedError> {
    config.validate()?;
    let classes = base.class_images.len();
    if classes < 2 || base.is_empty() {
        return Err(SupervisedError::TooFewImages {
            classes,
            images: base.len(),
        });
    }
    prepare_folder(config, out_dir, base)?;

    let train_device = device.clone().autodiff();
    let adam = AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_amsgrad(true);
    let mut optimizer = adam.init();
    let fresh = || SupervisedNet::new(config.backbone, base.size, classes, &train_device);

    let (mut model, mut state) = match latest_checkpoint(out_dir)? {
        Some(dir) => {
            let state: CheckpointState = read_json(&dir.join(STATE_FILE))?;
            let model = fresh();
            let model = load_checked(&dir, MODEL_FILE, |path| model.try_load_file(path))?;
            optimizer = load_checked(&dir, OPTIMIZER_FILE, |path| optimizer.load(path))?;
            log::info!(
                "resuming supervised training after epoch {} from {}",
                state.epochs_done,
                dir.display()
            );
            (model, state)
        }
        None => {
            train_device.seed(config.seed);
            let state = CheckpointState {
                epochs_done: 0,
                history: Vec::new(),
            };
            (fresh(), state)
        }
    };
    // A crash between saving a checkpoint and writing the metrics leaves the metrics behind, so
    // the checkpoint's history is authoritative.
    write_metrics(out_dir, &state.history)?;

    let labelled: Vec<(usize, usize)> = base
        .class_images
        .iter()
        .enumerate()
        .flat_map(|(class, images)| images.iter().map(move |&image| (image, class)))
        .collect();
    let batches = labelled.len().div_ceil(config.batch_size);

    for epoch in state.epochs_done..config.epochs {
        progress.begin(
            &format!("supervised epoch {}/{}", epoch + 1, config.epochs),
            batches as u64,
        );
        let started = Instant::now();
        let outcome = train_epoch(
            config,
            epoch,
            model,
            &mut optimizer,
            &labelled,
            base,
            &train_device,
            progress,
        );
        progress.finish();
        let (next_model, loss, accuracy) = match outcome {
            Ok(result) => result,
            Err(mut error) => {
                if let SupervisedError::NonFiniteLoss { kept, .. } = &mut error {
                    *kept = match state.epochs_done {
                        0 => "no epoch had finished, so there is no checkpoint yet".to_string(),
                        done => format!("{CHECKPOINTS_DIR}/{} is kept", checkpoint_name(done)),
                    };
                }
                return Err(error);
            }
        };
        model = next_model;
        let seconds = started.elapsed().as_secs_f64();

        let metrics = SupervisedMetrics {
            epoch: epoch + 1,
            loss,
            accuracy,
            seconds,
            images_per_second: labelled.len() as f64 / seconds,
        };
        log::info!(
            "supervised epoch {}: loss {:.4}, train acc {:.2}%, {:.1} images/s",
            metrics.epoch,
            metrics.loss,
            metrics.accuracy,
            metrics.images_per_second
        );
        state.epochs_done = epoch + 1;
        state.history.push(metrics);
        save_checkpoint(out_dir, &model, &optimizer, &state)?;
        write_metrics(out_dir, &state.history)?;
    }

    Ok(model.valid().backbone)
}

/// Runs one epoch and returns the updated model with the mean loss and the accuracy (percent)
/// over its images.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    config: &SupervisedConfig,
    epoch: usize,
    model: SupervisedNet,
    optimizer: &mut ModuleOptimizer,
    labelled: &[(usize, usize)],
    store: &ImageStore,
    device: &Device,
    progress: &dyn Progress,
) -> Result<(SupervisedNet, f64, f64), SupervisedError> {
    let side = store.size.pixels() as usize;
    let per_image = store.size.num_values();
    let order = epoch_order(config, epoch, labelled);
    let loss_function = CrossEntropyLossConfig::new().init(device);

    let mut loss_sum = 0.0;
    let mut correct = 0usize;
    let mut seen = 0usize;
    // Batches are assembled on a second thread while the model computes.
    let model = std::thread::scope(|scope| {
        let mut model = model;
        let (sender, receiver) = sync_channel::<(Vec<f32>, Vec<i64>)>(2);
        let order = &order;
        scope.spawn(move || {
            for chunk in order.chunks(config.batch_size) {
                let mut images = vec![0.0f32; chunk.len() * per_image];
                let mut labels = Vec::with_capacity(chunk.len());
                for (slot, &(image, class, flip)) in chunk.iter().enumerate() {
                    let out = &mut images[slot * per_image..(slot + 1) * per_image];
                    write_normalized_chw(store.pixels(image), side, flip, out);
                    labels.push(class as i64);
                }
                if sender.send((images, labels)).is_err() {
                    break;
                }
            }
        });

        for (batch, (images, labels)) in receiver.iter().enumerate() {
            let count = labels.len();
            let images =
                Tensor::<4>::from_data(TensorData::new(images, [count, 3, side, side]), device);
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [count]), device);

            let logits = model.forward(images);
            let loss = loss_function.forward(logits.clone(), targets);

            let loss_value = loss.clone().into_scalar::<f32>();
            if !loss_value.is_finite() {
                // Dropping the receiver stops the producer at its next send.
                return Err(SupervisedError::NonFiniteLoss {
                    value: loss_value,
                    epoch: epoch + 1,
                    batch: batch + 1,
                    kept: String::new(),
                });
            }
            let logits = logits
                .into_data()
                .try_to_vec::<f32>()
                .expect("logits are f32");
            let classes = logits.len() / count;
            correct += logits
                .chunks(classes)
                .zip(&labels)
                .filter(|(row, label)| argmax(row) == **label as usize)
                .count();

            let gradients = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(config.lr, model, gradients);

            loss_sum += loss_value as f64 * count as f64;
            seen += count;
            progress.advance(1);
            progress.set_message(&format!(
                "loss {:.3} acc {:.1}%",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64
            ));
        }
        Ok(model)
    })?;

    Ok((
        model,
        loss_sum / seen as f64,
        100.0 * correct as f64 / seen as f64,
    ))
}

/// Returns the epoch's `(image, class, flip)` triples in training order. The order and the
/// flips come from stream `epoch` of a ChaCha8 generator seeded with `config.seed`, so they
/// depend on nothing else.
fn epoch_order(
    config: &SupervisedConfig,
    epoch: usize,
    labelled: &[(usize, usize)],
) -> Vec<(usize, usize, bool)> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(epoch as u64);
    let mut order = labelled.to_vec();
    order.shuffle(&mut rng);
    order
        .into_iter()
        .map(|(image, class)| (image, class, config.flip && rng.random_bool(0.5)))
        .collect()
}

/// Embeds episodes `0..count` of `sampler` with the frozen `backbone` and scores each of
/// `classifiers` on them. Returns, for each classifier in order, the accuracy of every episode
/// in percent. All classifiers see the same episodes and the same embeddings.
///
/// Images are not mirrored, and the backbone runs in evaluation mode (BatchNorm with its
/// running statistics) on `device`, which must be a device without autodiff.
pub fn evaluate_frozen(
    backbone: &Backbone,
    store: &ImageStore,
    sampler: &EpisodeSampler,
    count: usize,
    classifiers: &[EmbeddingClassifier],
    device: &Device,
    progress: &dyn Progress,
) -> Vec<Vec<f64>> {
    let backbone = backbone.valid();
    let shape = sampler.shape();
    let side = store.size.pixels() as usize;
    let mut accuracies = vec![Vec::with_capacity(count); classifiers.len()];

    progress.begin("frozen-embedding eval", count as u64);
    for index in 0..count {
        let episode = sampler.episode(index as u64, false);
        let n_support = episode.support.len();
        let n_images = n_support + episode.query.len();
        let images = Tensor::<4>::from_data(
            TensorData::new(episode.images(store), [n_images, 3, side, side]),
            device,
        );

        let embeddings = backbone.forward(images);
        let [_, dim] = embeddings.dims();
        let embeddings = embeddings
            .into_data()
            .try_to_vec::<f32>()
            .expect("embeddings are f32");
        let (support, queries) = embeddings.split_at(n_support * dim);

        // Support embeddings are class-major: n_shot of class 0, then of class 1, and so on.
        let support_labels: Vec<usize> = (0..n_support).map(|i| i / shape.n_shot).collect();
        let query_labels = episode.query_labels(&shape);
        for (kind, results) in classifiers.iter().zip(&mut accuracies) {
            let scores = classify(*kind, support, &support_labels, queries, dim, shape.n_way);
            results.push(100.0 * accuracy(&scores, &query_labels, shape.n_way));
        }

        progress.advance(1);
        if index % 10 == 9 {
            let summary: Vec<String> = classifiers
                .iter()
                .zip(&accuracies)
                .map(|(kind, results)| format!("{kind} {:.1}%", mean_and_ci95(results).0))
                .collect();
            progress.set_message(&summary.join(" "));
        }
    }
    progress.finish();
    accuracies
}

/// Creates `out_dir` with its `config.json`, or checks that an existing one records the same
/// run and updates its epoch count.
fn prepare_folder(
    config: &SupervisedConfig,
    out_dir: &Path,
    base: &ImageStore,
) -> Result<(), SupervisedError> {
    let path = out_dir.join(CONFIG_FILE);
    let requested = RunRecord {
        config: config.clone(),
        image_size: base.size,
        classes: base.class_images.len(),
        images: base.len(),
        data_fingerprint: base.fingerprint(),
        git_commit: crate::GIT_COMMIT.to_string(),
    };
    if !path.is_file() {
        create_dir(out_dir)?;
        return write_file(&path, &to_json_pretty(&requested));
    }

    let recorded: RunRecord = read_json(&path)?;
    let mismatch = |field: &'static str, recorded: String, requested: String| {
        Err(SupervisedError::ConfigMismatch {
            path: path.clone(),
            field,
            recorded,
            requested,
        })
    };
    let (old, new) = (&recorded.config, &requested.config);
    if old.backbone != new.backbone {
        return mismatch(
            "backbone",
            old.backbone.to_string(),
            new.backbone.to_string(),
        );
    }
    if old.batch_size != new.batch_size {
        return mismatch(
            "batch_size",
            old.batch_size.to_string(),
            new.batch_size.to_string(),
        );
    }
    if old.lr != new.lr {
        return mismatch("lr", old.lr.to_string(), new.lr.to_string());
    }
    if old.seed != new.seed {
        return mismatch("seed", old.seed.to_string(), new.seed.to_string());
    }
    if old.flip != new.flip {
        return mismatch("flip", old.flip.to_string(), new.flip.to_string());
    }
    if recorded.image_size != requested.image_size {
        return mismatch(
            "image_size",
            recorded.image_size.pixels().to_string(),
            requested.image_size.pixels().to_string(),
        );
    }
    if recorded.data_fingerprint != requested.data_fingerprint {
        return mismatch(
            "data_fingerprint (base class and photo names)",
            format!("{} ({} images)", recorded.data_fingerprint, recorded.images),
            format!(
                "{} ({} images)",
                requested.data_fingerprint, requested.images
            ),
        );
    }
    if old.epochs != new.epochs {
        let updated = RunRecord {
            config: new.clone(),
            ..recorded
        };
        write_file(&path, &to_json_pretty(&updated))?;
    }
    Ok(())
}

fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// Returns the folder of the newest finished checkpoint, if any.
fn latest_checkpoint(out_dir: &Path) -> Result<Option<PathBuf>, SupervisedError> {
    let dir = out_dir.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(&dir).map_err(|error| SupervisedError::Read {
        path: dir.clone(),
        error,
    })?;
    let newest = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let epoch = name.strip_prefix("epoch-")?.parse::<usize>().ok()?;
            Some((epoch, entry.path()))
        })
        .max_by_key(|(epoch, _)| *epoch);
    Ok(newest.map(|(_, path)| path))
}

/// Writes a checkpoint into a hidden folder, renames it to `checkpoints/epoch-NNNN` once
/// everything is on disk, then removes older checkpoints.
fn save_checkpoint(
    out_dir: &Path,
    model: &SupervisedNet,
    optimizer: &ModuleOptimizer,
    state: &CheckpointState,
) -> Result<(), SupervisedError> {
    let checkpoints = out_dir.join(CHECKPOINTS_DIR);
    let name = checkpoint_name(state.epochs_done);
    let final_dir = checkpoints.join(&name);
    let partial_dir = checkpoints.join(format!(".partial-{name}"));
    if partial_dir.exists() {
        let _ = std::fs::remove_dir_all(&partial_dir);
    }
    create_dir(&partial_dir)?;

    // `valid` first: BatchNorm keeps its newest running statistics pending until they are
    // synchronised, and saving the module as it is would store the values of one step earlier
    // (Burn 0.22.1, `RunningState`).
    let model_path = partial_dir.join(MODEL_FILE);
    model
        .valid()
        .save_file(&model_path)
        .map_err(|e| SupervisedError::Save {
            path: model_path.clone(),
            message: e.to_string(),
        })?;
    let optimizer_path = partial_dir.join(OPTIMIZER_FILE);
    optimizer
        .save(&optimizer_path)
        .map_err(|e| SupervisedError::Save {
            path: optimizer_path.clone(),
            message: e.to_string(),
        })?;
    write_file(&partial_dir.join(STATE_FILE), &to_json_pretty(state))?;
    let mut checksums = BTreeMap::new();
    for file in [MODEL_FILE, OPTIMIZER_FILE] {
        let path = partial_dir.join(file);
        let bytes = std::fs::read(&path).map_err(|error| SupervisedError::Read { path, error })?;
        checksums.insert(file.to_string(), fnv64_hex(&bytes));
    }
    write_file(
        &partial_dir.join(CHECKSUM_FILE),
        &to_json_pretty(&checksums),
    )?;
    sync_dir(&partial_dir);

    if final_dir.exists() {
        let _ = std::fs::remove_dir_all(&final_dir);
    }
    std::fs::rename(&partial_dir, &final_dir).map_err(|error| SupervisedError::Write {
        path: final_dir.clone(),
        error,
    })?;
    sync_dir(&checkpoints);

    // Older checkpoints are only a fallback, and a failed removal costs disk space, not the run.
    if let Ok(entries) = std::fs::read_dir(&checkpoints) {
        for entry in entries.flatten() {
            let entry_name = entry.file_name().to_string_lossy().into_owned();
            let stale = entry_name.starts_with("epoch-") || entry_name.starts_with(".partial-");
            if stale && entry_name != name {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

/// Verifies a checkpoint file against `checksums.json`, then loads it with `load`.
fn load_checked<T, E: std::fmt::Display>(
    dir: &Path,
    file: &str,
    load: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, SupervisedError> {
    let path = dir.join(file);
    let checksums: BTreeMap<String, String> = read_json(&dir.join(CHECKSUM_FILE))?;
    let bytes = std::fs::read(&path).map_err(|error| SupervisedError::Read {
        path: path.clone(),
        error,
    })?;
    let actual = fnv64_hex(&bytes);
    match checksums.get(file) {
        Some(expected) if *expected == actual => {}
        Some(expected) => {
            return Err(SupervisedError::Load {
                path,
                message: format!(
                    "its checksum is {actual} but {expected} was recorded when it was saved"
                ),
            });
        }
        None => {
            return Err(SupervisedError::Load {
                path,
                message: format!("{CHECKSUM_FILE} records no checksum for it"),
            });
        }
    }
    load(&path).map_err(|e| SupervisedError::Load {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// Writes `metrics.jsonl` with one line per epoch of `history`.
fn write_metrics(out_dir: &Path, history: &[SupervisedMetrics]) -> Result<(), SupervisedError> {
    let mut text = String::new();
    for metrics in history {
        text.push_str(&serde_json::to_string(metrics).expect("metrics serialise"));
        text.push('\n');
    }
    write_file(&out_dir.join(METRICS_FILE), text.as_bytes())
}

fn create_dir(path: &Path) -> Result<(), SupervisedError> {
    std::fs::create_dir_all(path).map_err(|error| SupervisedError::Write {
        path: path.to_path_buf(),
        error,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SupervisedError> {
    write_atomically(path, bytes).map_err(|error| SupervisedError::Write {
        path: path.to_path_buf(),
        error,
    })
}

fn to_json_pretty<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("records serialise to JSON");
    bytes.push(b'\n');
    bytes
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, SupervisedError> {
    let text = std::fs::read_to_string(path).map_err(|error| SupervisedError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_str(&text).map_err(|e| SupervisedError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Flushes a folder's entries to disk so that a rename survives a power cut.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::episodes::EpisodeShape;
    use crate::train::NoProgress;

    /// Builds a store of `classes` classes with `per_class` photos each. Class `c` has its own
    /// colour, and every pixel carries a fixed pseudo-random offset of up to +-40.
    fn colour_store(classes: usize, per_class: usize) -> ImageStore {
        let size = ImageSize::S84;
        let palette = [
            [200, 40, 40],
            [40, 200, 40],
            [40, 40, 200],
            [200, 200, 40],
            [40, 200, 200],
            [200, 40, 200],
        ];
        let mut pixels = Vec::with_capacity(classes * per_class * size.num_values());
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for class in 0..classes {
            for _ in 0..per_class {
                for value in 0..size.num_values() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let offset = (state >> 58) as i32 * 5 / 4 - 40;
                    let channel = palette[class % palette.len()][value % 3];
                    pixels.push((channel + offset).clamp(0, 255) as u8);
                }
            }
        }
        let class_images = (0..classes)
            .map(|c| (c * per_class..(c + 1) * per_class).collect())
            .collect();
        let names = (0..classes)
            .map(|c| format!("{:03}.Colour", c + 1))
            .collect();
        ImageStore::from_pixels_for_tests(size, names, class_images, pixels)
    }

    fn small_config(epochs: usize) -> SupervisedConfig {
        SupervisedConfig {
            epochs,
            batch_size: 6,
            lr: 3e-3,
            seed: 7,
            ..SupervisedConfig::default()
        }
    }

    fn read_metrics(dir: &Path) -> Vec<SupervisedMetrics> {
        std::fs::read_to_string(dir.join(METRICS_FILE))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn training_fits_colours() {
        let _rng = crate::test_support::lock_rng();
        let out = tempfile::tempdir().unwrap();
        let store = colour_store(3, 6);
        let config = small_config(4);
        train_supervised(&config, out.path(), &store, &Device::flex(), &NoProgress).unwrap();

        let metrics = read_metrics(out.path());
        assert_eq!(metrics.len(), 4);
        let first = &metrics[0];
        let last = &metrics[3];
        assert!(last.loss < first.loss, "{metrics:?}");
        assert!(last.accuracy >= 90.0, "{metrics:?}");
        let record: RunRecord = read_json(&out.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(record.config, config);
        assert_eq!(record.git_commit, crate::GIT_COMMIT);
        assert_eq!(record.classes, 3);
    }

    #[test]
    fn resumed_run_matches_uninterrupted() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let store = colour_store(3, 5);
        let whole = tempfile::tempdir().unwrap();
        let split = tempfile::tempdir().unwrap();

        let uninterrupted =
            train_supervised(&small_config(2), whole.path(), &store, &device, &NoProgress).unwrap();
        train_supervised(&small_config(1), split.path(), &store, &device, &NoProgress).unwrap();
        assert_eq!(read_metrics(split.path()).len(), 1);
        let resumed =
            train_supervised(&small_config(2), split.path(), &store, &device, &NoProgress).unwrap();

        let expected = read_metrics(whole.path());
        let actual = read_metrics(split.path());
        assert_eq!(actual.len(), 2);
        for (a, e) in actual.iter().zip(&expected) {
            assert_eq!(a.epoch, e.epoch);
            assert!((a.loss - e.loss).abs() < 1e-5, "{actual:?} vs {expected:?}");
            assert_eq!(a.accuracy, e.accuracy);
        }
        let images = Tensor::<4>::from_data(
            TensorData::new(
                crate::episodes::EpisodeSampler::new(
                    &store,
                    Split::Base,
                    EpisodeShape {
                        n_way: 3,
                        n_shot: 1,
                        n_query: 1,
                    },
                    0,
                )
                .unwrap()
                .episode(0, false)
                .images(&store),
                [6, 3, 84, 84],
            ),
            &device,
        );
        let a = resumed.forward(images.clone()).into_data();
        let b = uninterrupted.forward(images).into_data();
        a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::absolute(1e-4));

        // All epochs are done: a third call trains nothing and changes no file.
        let before = std::fs::read(split.path().join(METRICS_FILE)).unwrap();
        train_supervised(&small_config(2), split.path(), &store, &device, &NoProgress).unwrap();
        let after = std::fs::read(split.path().join(METRICS_FILE)).unwrap();
        assert_eq!(before, after);
        let checkpoints: Vec<String> = std::fs::read_dir(split.path().join(CHECKPOINTS_DIR))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(checkpoints, vec!["epoch-0002".to_string()]);
    }

    #[test]
    fn changed_config_is_rejected() {
        let _rng = crate::test_support::lock_rng();
        let out = tempfile::tempdir().unwrap();
        let store = colour_store(2, 2);
        let config = small_config(1);
        train_supervised(&config, out.path(), &store, &Device::flex(), &NoProgress).unwrap();

        let changed = SupervisedConfig { lr: 1e-2, ..config };
        let error = train_supervised(&changed, out.path(), &store, &Device::flex(), &NoProgress)
            .unwrap_err();
        assert!(
            matches!(&error, SupervisedError::ConfigMismatch { field: "lr", .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("0.003"), "{message}");
        assert!(message.contains("new output folder"), "{message}");
    }

    #[test]
    fn invalid_config_is_rejected() {
        let zero_batch = SupervisedConfig {
            batch_size: 0,
            ..SupervisedConfig::default()
        };
        let error = zero_batch.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid batch_size = 0; expected at least 1"
        );
        let bad_lr = SupervisedConfig {
            lr: f64::NAN,
            ..SupervisedConfig::default()
        };
        assert!(bad_lr.validate().is_err());
        assert!(SupervisedConfig::default().validate().is_ok());
    }

    #[test]
    fn huge_learning_rate_stops_with_error() {
        let _rng = crate::test_support::lock_rng();
        let out = tempfile::tempdir().unwrap();
        let store = colour_store(2, 4);
        let config = SupervisedConfig {
            epochs: 2,
            batch_size: 2,
            lr: 1e30,
            ..small_config(2)
        };
        let error = train_supervised(&config, out.path(), &store, &Device::flex(), &NoProgress)
            .unwrap_err();
        let SupervisedError::NonFiniteLoss { epoch, kept, .. } = &error else {
            panic!("expected a non-finite loss, got {error}");
        };
        assert_eq!(*epoch, 1);
        assert!(kept.contains("no checkpoint"), "{kept}");
    }

    #[test]
    fn frozen_eval_beats_chance() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let out = tempfile::tempdir().unwrap();
        let store = colour_store(4, 6);
        let backbone =
            train_supervised(&small_config(1), out.path(), &store, &device, &NoProgress).unwrap();
        let shape = EpisodeShape {
            n_way: 3,
            n_shot: 1,
            n_query: 4,
        };
        let sampler = EpisodeSampler::new(&store, Split::Novel, shape, 123).unwrap();

        let results = evaluate_frozen(
            &backbone,
            &store,
            &sampler,
            5,
            &EmbeddingClassifier::ALL,
            &device,
            &NoProgress,
        );
        assert_eq!(results.len(), 3);
        for (kind, accuracies) in EmbeddingClassifier::ALL.iter().zip(&results) {
            assert_eq!(accuracies.len(), 5);
            let (mean, _) = mean_and_ci95(accuracies);
            // Chance is 33.3%; the colours make the classes easy.
            assert!(mean > 60.0, "{kind}: {accuracies:?}");
        }
    }
}
