//! Checkpoints: the model, the optimizer state and the trainer state of one finished epoch.

use super::run::{RunError, RunFolder, create_dir, read_json, to_json_pretty, write_file};
use super::trainer::TrainerState;
use super::config::TrainConfig;
use crate::hash::fnv64_hex;
use crate::model::{
    Backbone, BackboneKind, Conv4Config, FewShotNet, FusionNetConfig, SupportAugment,
};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors while writing or reading checkpoint files.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("failed to save {path}: {message}")]
    Save { path: PathBuf, message: String },
    #[error(
        "failed to load {path}: {message}. The checkpoint is damaged or comes from another model; delete its folder to resume from the epoch before, or train a new run folder"
    )]
    Load { path: PathBuf, message: String },
    #[error(transparent)]
    Run(#[from] RunError),
}

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";
/// FNV-1a hashes of the weight files, checked before loading so that a damaged file is an
/// error instead of a silently different model.
const CHECKSUM_FILE: &str = "checksums.json";

/// Returns the folder name of the checkpoint after `epoch` (1-based) epochs.
pub(crate) fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// Writes a checkpoint folder atomically: files go into a hidden folder that is renamed to
/// `checkpoints/epoch-NNNN` once everything is on disk.
pub(crate) fn save_checkpoint(
    run: &RunFolder,
    model: &FewShotNet,
    optimizer: &ModuleOptimizer,
    state: &TrainerState,
) -> Result<PathBuf, CheckpointError> {
    let name = checkpoint_name(state.epochs_done);
    let final_dir = run.checkpoints_dir().join(&name);
    let partial_dir = run.checkpoints_dir().join(format!(".partial-{name}"));
    if partial_dir.exists() {
        let _ = std::fs::remove_dir_all(&partial_dir);
    }
    create_dir(&partial_dir)?;

    let model_path = partial_dir.join(MODEL_FILE);
    // `valid()` first: Burn 0.22.1 applies the newest BatchNorm running-statistics update only
    // then, and a module saved directly records them one training step old.
    model
        .valid()
        .save_file(&model_path)
        .map_err(|e| CheckpointError::Save {
            path: model_path.clone(),
            message: e.to_string(),
        })?;
    let optimizer_path = partial_dir.join(OPTIMIZER_FILE);
    optimizer
        .save(&optimizer_path)
        .map_err(|e| CheckpointError::Save {
            path: optimizer_path.clone(),
            message: e.to_string(),
        })?;
    write_file(&partial_dir.join(STATE_FILE), &to_json_pretty(state))?;
    let mut checksums = BTreeMap::new();
    for name in [MODEL_FILE, OPTIMIZER_FILE] {
        let path = partial_dir.join(name);
        let bytes = std::fs::read(&path).map_err(|error| RunError::Read { path, error })?;
        checksums.insert(name.to_string(), fnv64_hex(&bytes));
    }
    write_file(
        &partial_dir.join(CHECKSUM_FILE),
        &to_json_pretty(&checksums),
    )?;
    sync_dir(&partial_dir);

    if final_dir.exists() {
        let _ = std::fs::remove_dir_all(&final_dir);
    }
    std::fs::rename(&partial_dir, &final_dir).map_err(|error| RunError::Write {
        path: final_dir.clone(),
        error,
    })?;
    sync_dir(&run.checkpoints_dir());
    Ok(final_dir)
}

/// Removes checkpoint folders other than those named in `keep`, and leftovers of interrupted
/// saves.
pub(crate) fn prune_checkpoints(run: &RunFolder, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(run.checkpoints_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_checkpoint = name.starts_with("epoch-") || name.starts_with(".partial-");
        if is_checkpoint && !keep.contains(&name) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Reads a checkpoint's trainer state.
pub(crate) fn load_state(dir: &Path) -> Result<TrainerState, CheckpointError> {
    Ok(read_json(&dir.join(STATE_FILE))?)
}

/// Loads the optimizer state of a checkpoint into `optimizer`.
pub(crate) fn load_optimizer(
    dir: &Path,
    optimizer: ModuleOptimizer,
) -> Result<ModuleOptimizer, CheckpointError> {
    let path = dir.join(OPTIMIZER_FILE);
    verify_checksum(dir, OPTIMIZER_FILE)?;
    optimizer.load(&path).map_err(|e| CheckpointError::Load {
        path,
        message: e.to_string(),
    })
}

/// Creates a model with the structure that `config` describes and fresh weights.
pub fn model_skeleton(config: &TrainConfig, device: &Device) -> FewShotNet {
    let side = config.model.image_size.pixels() as usize;
    if config.model.support_augment == SupportAugment::Fusion {
        let fusion = FusionNetConfig::new(config.fusion.encoder, side)
            .with_siamese(config.fusion.siamese);
        FewShotNet::metairnet(config.model.backbone, &fusion, device)
    } else {
        FewShotNet::protonet(config.model.backbone, device)
    }
}

/// Loads the weights of a checkpoint folder of a run trained with `config` onto `device`.
///
/// Checkpoints written before models had a fusion network (a bare Conv4) load too.
pub fn load_model(
    dir: &Path,
    config: &TrainConfig,
    device: &Device,
) -> Result<FewShotNet, CheckpointError> {
    let path = dir.join(MODEL_FILE);
    verify_checksum(dir, MODEL_FILE)?;
    match model_skeleton(config, device).try_load_file(&path) {
        Ok(model) => Ok(model),
        Err(error) => {
            let plain_conv4 = config.model.support_augment != SupportAugment::Fusion
                && config.model.backbone == BackboneKind::Conv4;
            let legacy = plain_conv4
                .then(|| Conv4Config::new().init(device).try_load_file(&path).ok())
                .flatten();
            match legacy {
                Some(conv4) => Ok(FewShotNet {
                    backbone: Backbone::Conv4(conv4),
                    fusion: None,
                }),
                None => Err(CheckpointError::Load {
                    path,
                    message: error.to_string(),
                }),
            }
        }
    }
}

/// Compares a checkpoint file with the hash recorded when it was written. Checkpoints without a
/// checksum file are accepted as they are.
fn verify_checksum(dir: &Path, name: &str) -> Result<(), CheckpointError> {
    let checksum_path = dir.join(CHECKSUM_FILE);
    if !checksum_path.is_file() {
        return Ok(());
    }
    let checksums: BTreeMap<String, String> = read_json(&checksum_path)?;
    let Some(expected) = checksums.get(name) else {
        return Ok(());
    };
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| CheckpointError::Load {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let actual = fnv64_hex(&bytes);
    if &actual != expected {
        return Err(CheckpointError::Load {
            path,
            message: format!(
                "its checksum is {actual} but {expected} was recorded when it was saved"
            ),
        });
    }
    Ok(())
}

/// Flushes a folder's entries to disk so that a rename survives a power cut.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// A checkpoint chosen for evaluation or classification.
#[derive(Clone, Debug)]
pub struct ChosenCheckpoint {
    /// 1-based epoch number.
    pub epoch: usize,
    pub dir: PathBuf,
    /// The reason a fallback was taken, for a warning, or `None` when the requested checkpoint was
    /// used.
    pub fallback: Option<String>,
}

/// Finds the best checkpoint of a run (or the newest with `newest`).
///
/// The best epoch comes from `best.json`. When that file is missing, the best epoch recorded in
/// the newest checkpoint is used. When neither exists or the best folder was deleted, the newest
/// checkpoint is used.
///
/// # Errors
/// [`RunError::NoCheckpoint`] when no epoch has finished.
pub fn choose_checkpoint(
    run: &RunFolder,
    newest: bool,
) -> Result<ChosenCheckpoint, CheckpointError> {
    let Some((latest_epoch, latest_dir)) = run.latest_checkpoint()? else {
        return Err(RunError::NoCheckpoint {
            path: run.path().to_path_buf(),
        }
        .into());
    };
    let newest_checkpoint = |fallback: Option<String>| ChosenCheckpoint {
        epoch: latest_epoch,
        dir: latest_dir.clone(),
        fallback,
    };
    if newest {
        return Ok(newest_checkpoint(None));
    }

    let from_file = run.best()?;
    let recorded = || load_state(&latest_dir).ok().and_then(|state| state.best);
    let (best, note) = match from_file {
        Some(best) => (Some(best), None),
        None => (recorded(), Some("best.json is missing".to_string())),
    };
    let Some(best) = best else {
        let reason = note.unwrap_or_else(|| "no best epoch is recorded".to_string());
        return Ok(newest_checkpoint(Some(format!(
            "{reason}; using the newest checkpoint"
        ))));
    };
    let dir = run.path().join(&best.checkpoint);
    if !dir.is_dir() {
        return Ok(newest_checkpoint(Some(format!(
            "the best checkpoint {} is missing; using the newest checkpoint",
            dir.display()
        ))));
    }
    let fallback = note
        .map(|reason| format!("{reason}; using the best epoch recorded in the newest checkpoint"));
    Ok(ChosenCheckpoint {
        epoch: best.epoch,
        dir,
        fallback,
    })
}
