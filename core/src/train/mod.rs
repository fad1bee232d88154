//! Episodic training, evaluation and run folders.

mod checkpoint;
mod config;
mod eval;
mod progress;
mod run;
pub mod supervised;
mod trainer;

pub use checkpoint::{CheckpointError, ChosenCheckpoint, choose_checkpoint, load_model};
pub use config::{ConfigError, LrSchedule, ScheduleKind, TrainConfig};
pub use eval::{EvalOptions, EvalSummary, evaluate, evaluate_episodes, mean_and_ci95};
pub use progress::{NoProgress, Progress};
pub use run::{BestEpoch, Resume, RunError, RunFolder, RunInfo};
pub use trainer::{
    EpochMetrics, TrainError, TrainOptions, TrainOutcome, check_episode_data, train,
};
