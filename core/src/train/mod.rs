//! Episodic training, evaluation and run folders.

mod build;
mod checkpoint;
mod config;
mod eval;
mod prepare;
mod progress;
mod run;
pub mod supervised;
mod trainer;

pub use build::{BuildError, initial_model};
pub use checkpoint::{
    CheckpointError, ChosenCheckpoint, choose_checkpoint, load_model, model_skeleton,
};
pub use config::{ConfigError, LrSchedule, ScheduleKind, TrainConfig};
pub use eval::{
    EpisodeData, EvalOptions, EvalSummary, episode_logits, evaluate, evaluate_episodes,
    mean_and_ci95,
};
pub use prepare::{PreparedEpisode, SupportPlan};
pub use progress::{NoProgress, Progress};
pub use run::{BestEpoch, Resume, RunError, RunFolder, RunInfo};
pub use trainer::{
    EpochMetrics, TrainError, TrainOptions, TrainOutcome, check_episode_data, train,
};
