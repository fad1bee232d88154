//! Checkpoints: the model, the optimizer state and the trainer state of one finished epoch.

use super::run::{RunError, RunFolder, create_dir, read_json, to_json_pretty, write_file};
use super::trainer::TrainerState;
use crate::model::{Conv4, Conv4Config};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::Device;
use std::path::{Path, PathBuf};

/// Errors while writing or reading checkpoint files.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("failed to save {path}: {message}")]
    Save { path: PathBuf, message: String },
    #[error("failed to load {path}: {message}; the file may come from another model or be damaged")]
    Load { path: PathBuf, message: String },
    #[error(transparent)]
    Run(#[from] RunError),
}

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";

/// Returns the folder name of the checkpoint after `epoch` (1-based) epochs.
pub(crate) fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// Writes a checkpoint folder atomically: files go into a hidden folder that is renamed to
/// `checkpoints/epoch-NNNN` once everything is on disk.
pub(crate) fn save_checkpoint(
    run: &RunFolder,
    model: &Conv4,
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
    model
        .clone()
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
    sync_dir(&partial_dir);

    if final_dir.exists() {
        let _ = std::fs::remove_dir_all(&final_dir);
    }
    std::fs::rename(&partial_dir, &final_dir).map_err(|source| RunError::Write {
        path: final_dir.clone(),
        source,
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
    optimizer.load(&path).map_err(|e| CheckpointError::Load {
        path,
        message: e.to_string(),
    })
}

/// Loads the Conv4 weights of a checkpoint folder onto `device`.
pub fn load_model(dir: &Path, device: &Device) -> Result<Conv4, CheckpointError> {
    let path = dir.join(MODEL_FILE);
    Conv4Config::new()
        .init(device)
        .try_load_file(&path)
        .map_err(|e| CheckpointError::Load {
            path,
            message: e.to_string(),
        })
}

/// Flushes a folder's entries to disk so that a rename survives a power cut.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}
