//! The run folder: everything a training run records.
//!
//! ```text
//! RUN/
//!   config.toml        the full configuration, defaults included
//!   run.json           seed, git commit, data folder, device, command line, versions
//!   metrics.jsonl      one JSON object per finished epoch
//!   best.json          the epoch with the best validation accuracy
//!   checkpoints/epoch-NNNN/{model.bpk, optimizer.bpk, state.json}
//!   eval/<split>-seed<seed>-<episodes>.json   per-episode accuracies of each evaluation
//! ```
//! Every file is written to a temporary name and renamed into place, and each checkpoint folder
//! is renamed into place whole, so a crash leaves either the old or the new version.

use super::config::{ConfigError, TrainConfig};
use crate::data::write_atomically;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors about the run folder itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
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
    #[error(
        "{path} is not a run folder (it has no config.toml); pass the folder that `metairnet train --run` created"
    )]
    NotARun { path: PathBuf },
    #[error(
        "run folder {path} does not exist; pass the folder that `metairnet train --run` created"
    )]
    MissingRun { path: PathBuf },
    #[error(
        "{path} already exists and is not a run folder (it has files but no config.toml); choose a new or empty folder for --run"
    )]
    NotEmpty { path: PathBuf },
    #[error(
        "run {path} has no finished epoch yet; train it first (`metairnet train --run {path}`)"
    )]
    NoCheckpoint { path: PathBuf },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// One later invocation that resumed the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Resume {
    pub unix_time: u64,
    pub git_commit: String,
    pub device: String,
    pub command: Vec<String>,
}

/// Facts about a run that are not part of its configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub seed: u64,
    pub git_commit: String,
    pub data: PathBuf,
    /// Fingerprint of the base and validation class names and photo file names; resuming
    /// requires the same value. Empty in runs made before fingerprints were recorded.
    #[serde(default)]
    pub data_fingerprint: String,
    pub device: String,
    pub command: Vec<String>,
    pub metairnet_version: String,
    pub burn_version: String,
    /// Seconds since the Unix epoch when the run folder was created.
    pub created_unix: u64,
    /// Every later invocation that resumed this run.
    #[serde(default)]
    pub resumes: Vec<Resume>,
}

impl RunInfo {
    /// Describes a run started now.
    pub fn new(seed: u64, data: &Path, data_fingerprint: &str, device: &str) -> RunInfo {
        RunInfo {
            seed,
            git_commit: crate::GIT_COMMIT.to_string(),
            // Absolute, so that the path still means the same folder from another directory.
            data: data
                .canonicalize()
                .or_else(|_| std::path::absolute(data))
                .unwrap_or_else(|_| data.to_path_buf()),
            data_fingerprint: data_fingerprint.to_string(),
            device: device.to_string(),
            command: std::env::args().collect(),
            metairnet_version: env!("CARGO_PKG_VERSION").to_string(),
            burn_version: "0.22.1".to_string(),
            created_unix: unix_seconds(),
            resumes: Vec::new(),
        }
    }
}

/// The epoch with the best validation accuracy so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Validation accuracy in percent.
    pub val_accuracy: f64,
    pub val_ci95: f64,
    /// The checkpoint folder, relative to the run folder.
    pub checkpoint: String,
}

/// A run folder on disk.
#[derive(Clone, Debug)]
pub struct RunFolder {
    path: PathBuf,
}

impl RunFolder {
    /// Opens an existing run folder.
    pub fn open(path: &Path) -> Result<RunFolder, RunError> {
        let run = RunFolder {
            path: path.to_path_buf(),
        };
        if !path.exists() {
            return Err(RunError::MissingRun {
                path: path.to_path_buf(),
            });
        }
        if !run.config_path().is_file() {
            return Err(RunError::NotARun {
                path: path.to_path_buf(),
            });
        }
        Ok(run)
    }

    /// Returns whether `path` contains a run (a `config.toml`).
    pub fn exists(path: &Path) -> bool {
        path.join("config.toml").is_file()
    }

    /// Checks that `path` can become a new run folder: it does not exist or is empty.
    pub fn check_creatable(path: &Path) -> Result<(), RunError> {
        let has_files = std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_some());
        if has_files || path.is_file() {
            return Err(RunError::NotEmpty {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Creates a run folder and writes its configuration and run information.
    pub fn create(
        path: &Path,
        config: &TrainConfig,
        info: &RunInfo,
    ) -> Result<RunFolder, RunError> {
        let run = RunFolder {
            path: path.to_path_buf(),
        };
        Self::check_creatable(path)?;
        create_dir(&run.checkpoints_dir())?;
        write_file(&run.path.join("run.json"), &to_json_pretty(info))?;
        // config.toml last: its presence marks a complete run folder.
        write_file(&run.config_path(), config.to_toml().as_bytes())?;
        Ok(run)
    }

    /// Returns the folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    pub fn best_path(&self) -> PathBuf {
        self.path.join("best.json")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.path.join("eval")
    }

    /// Reads the stored configuration.
    pub fn config(&self) -> Result<TrainConfig, RunError> {
        Ok(TrainConfig::from_file(&self.config_path())?)
    }

    /// Replaces the stored configuration.
    pub fn write_config(&self, config: &TrainConfig) -> Result<(), RunError> {
        write_file(&self.config_path(), config.to_toml().as_bytes())
    }

    /// Reads `run.json`.
    pub fn info(&self) -> Result<RunInfo, RunError> {
        read_json(&self.path.join("run.json"))
    }

    /// Appends a resume record to `run.json`.
    pub fn record_resume(&self, device: &str) -> Result<(), RunError> {
        let mut info = self.info()?;
        info.resumes.push(Resume {
            unix_time: unix_seconds(),
            git_commit: crate::GIT_COMMIT.to_string(),
            device: device.to_string(),
            command: std::env::args().collect(),
        });
        write_file(&self.path.join("run.json"), &to_json_pretty(&info))
    }

    /// Reads the best epoch, if any epoch has finished.
    pub fn best(&self) -> Result<Option<BestEpoch>, RunError> {
        let path = self.best_path();
        if !path.is_file() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Returns the newest finished checkpoint folder and its epoch number.
    pub fn latest_checkpoint(&self) -> Result<Option<(usize, PathBuf)>, RunError> {
        let dir = self.checkpoints_dir();
        if !dir.is_dir() {
            return Ok(None);
        }
        let entries = std::fs::read_dir(&dir).map_err(|error| RunError::Read {
            path: dir.clone(),
            error,
        })?;
        let mut latest: Option<(usize, PathBuf)> = None;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(epoch) = name
                .strip_prefix("epoch-")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if latest.as_ref().is_none_or(|(best, _)| epoch > *best) {
                latest = Some((epoch, entry.path()));
            }
        }
        Ok(latest)
    }
}

pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn create_dir(path: &Path) -> Result<(), RunError> {
    std::fs::create_dir_all(path).map_err(|error| RunError::Write {
        path: path.to_path_buf(),
        error,
    })
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    write_atomically(path, bytes).map_err(|error| RunError::Write {
        path: path.to_path_buf(),
        error,
    })
}

pub(crate) fn to_json_pretty<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("run records serialise to JSON");
    bytes.push(b'\n');
    bytes
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RunError> {
    let text = std::fs::read_to_string(path).map_err(|error| RunError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_str(&text).map_err(|e| RunError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
