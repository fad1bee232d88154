//! The training configuration: a TOML file whose every field has a default.

use crate::data::ImageSize;
use crate::episodes::EpisodeShape;
use crate::model::{BackboneKind, BlockDropoutConfig, SupportAugment};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors raised while reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}: {error}")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("invalid config value {field}{} = {value}: {reason}", flag_of(field))]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
}

/// Returns " (flag --x)" for configuration keys that `metairnet train` also sets by a flag, so
/// that an error names what the user typed.
fn flag_of(field: &str) -> String {
    let flag = match field {
        "seed" => "--seed",
        "training.epochs" => "--epochs",
        "training.episodes_per_epoch" => "--episodes-per-epoch",
        "optimizer.lr" => "--lr",
        "episodes.n_way" => "--n-way",
        "episodes.n_shot" => "--n-shot",
        "episodes.n_query" => "--n-query",
        "validation.episodes" => "--val-episodes",
        "model.generated" => "--generated",
        "model.support_augment" => "--support-augment",
        "model.n_aug" => "--n-aug",
        "init.from_run" => "--init-from",
        _ => return String::new(),
    };
    format!(" (flag {flag})")
}

/// Everything that defines a training run. Unknown keys are errors, so a typo cannot silently
/// fall back to a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Seed of weight initialisation and of training episodes.
    pub seed: u64,
    pub model: ModelSection,
    pub episodes: EpisodeShape,
    pub optimizer: OptimizerSection,
    pub schedule: LrSchedule,
    pub training: TrainingSection,
    pub validation: ValidationSection,
    pub fusion: FusionSection,
    pub block_dropout: BlockDropoutConfig,
    pub init: InitSection,
}

/// The network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// The embedding network: `conv4` or `resnet18`.
    pub backbone: BackboneKind,
    /// Input side in pixels: 84 or 224.
    pub image_size: ImageSize,
    /// The augmentation that joins each support image in the support set, in training and at
    /// test time: `none` (ProtoNet), `flip`, `gaussian`, `generated`, `mixup` or `fusion`
    /// (MetaIRNet).
    pub support_augment: SupportAugment,
    /// Extra support entries per support image (generated, mixed, fused or noisy copies).
    pub n_aug: usize,
    /// The folder of generated images (written by `metairnet generate`); needed by
    /// `generated`, `mixup` and `fusion`.
    pub generated: Option<PathBuf>,
}

/// The fusion network of MetaIRNet, used when `model.support_augment = "fusion"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FusionSection {
    /// The encoders' network: `conv4` or `resnet18`.
    pub encoder: BackboneKind,
    /// One shared encoder for the original and the generated image (MetaIRNet++ Siamese).
    pub siamese: bool,
    /// The fusion network's learning rate as a fraction of the backbone's; when left out, 0.5
    /// for a Siamese fusion network and 1 otherwise.
    pub lr_factor: Option<f64>,
    /// Start the encoders from the backbone's initial weights when they are the same network
    /// (for example a ProtoNet Conv4 of the first training stage), instead of fresh weights.
    pub encoders_from_backbone: bool,
    /// A torchvision ResNet-18 checkpoint (ImageNet weights) for ResNet-18 encoders.
    pub encoder_weights: Option<PathBuf>,
}

/// The sources of a new run's first weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitSection {
    /// A run folder (for example a ProtoNet run) whose best checkpoint gives the backbone's
    /// first weights: the two-stage recipe.
    pub from_run: Option<PathBuf>,
    /// A torchvision ResNet-18 checkpoint (ImageNet weights) for a ResNet-18 backbone. Unused
    /// when `from_run` is set, because that run's backbone replaces these weights.
    pub backbone_weights: Option<PathBuf>,
}

impl Default for FusionSection {
    fn default() -> Self {
        FusionSection {
            encoder: BackboneKind::Conv4,
            siamese: false,
            lr_factor: None,
            encoders_from_backbone: true,
            encoder_weights: None,
        }
    }
}

impl FusionSection {
    /// Returns the fusion network's learning-rate factor.
    pub fn lr_factor(&self) -> f64 {
        self.lr_factor
            .unwrap_or(if self.siamese { 0.5 } else { 1.0 })
    }
}

/// Adam's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    /// Learning rate before the schedule is applied.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub amsgrad: bool,
}

/// The learning-rate schedule over epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// For `step`: 0-based epochs at whose start the rate is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    /// For `step`: the factor applied at each milestone.
    pub gamma: f64,
    /// For `cosine`: the rate reached at the end of the last epoch.
    pub min_lr: f64,
}

/// The shape of the learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// The base learning rate throughout.
    Constant,
    /// The base rate, multiplied by `gamma` at each milestone.
    Step,
    /// Cosine decay from the base rate to `min_lr` over all epochs, updated every episode.
    Cosine,
}

/// The training loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    pub epochs: usize,
    pub episodes_per_epoch: usize,
    /// Mirror each training image left to right with probability 0.5.
    pub flip: bool,
}

/// Validation after every epoch, on episodes that are the same for every epoch and every run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSection {
    pub episodes: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            model: ModelSection::default(),
            episodes: EpisodeShape::default(),
            optimizer: OptimizerSection::default(),
            schedule: LrSchedule::default(),
            training: TrainingSection::default(),
            validation: ValidationSection::default(),
            fusion: FusionSection::default(),
            block_dropout: BlockDropoutConfig::default(),
            init: InitSection::default(),
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            backbone: BackboneKind::Conv4,
            image_size: ImageSize::S84,
            support_augment: SupportAugment::None,
            n_aug: 1,
            generated: None,
        }
    }
}

impl Default for OptimizerSection {
    fn default() -> Self {
        OptimizerSection {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            amsgrad: true,
        }
    }
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule {
            kind: ScheduleKind::Step,
            milestones: vec![5],
            gamma: 0.1,
            min_lr: 0.0,
        }
    }
}

impl Default for TrainingSection {
    fn default() -> Self {
        TrainingSection {
            epochs: 10,
            episodes_per_epoch: 1000,
            flip: true,
        }
    }
}

impl Default for ValidationSection {
    fn default() -> Self {
        ValidationSection {
            episodes: 100,
            seed: 123,
        }
    }
}

impl LrSchedule {
    /// Returns the learning rate at `progress` epochs into training (for example 2.5 is the
    /// middle of the third epoch) for a run of `epochs` epochs.
    pub fn learning_rate(&self, base: f64, progress: f64, epochs: usize) -> f64 {
        match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step => {
                let epoch = progress.floor() as usize;
                let passed = self.milestones.iter().filter(|&&m| m <= epoch).count();
                base * self.gamma.powi(passed as i32)
            }
            ScheduleKind::Cosine => {
                let fraction = (progress / epochs.max(1) as f64).clamp(0.0, 1.0);
                let cosine = 1.0 + (std::f64::consts::PI * fraction).cos();
                self.min_lr + 0.5 * (base - self.min_lr) * cosine
            }
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<TrainConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<TrainConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Returns the configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configuration serialises to TOML")
    }

    /// Checks values that parse but cannot be trained with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, value: String, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                value,
                reason: reason.to_string(),
            })
        };
        let conv4_at_224 = |kind: BackboneKind| {
            kind == BackboneKind::Conv4 && self.model.image_size != ImageSize::S84
        };
        if conv4_at_224(self.model.backbone) {
            return invalid(
                "model.image_size",
                self.model.image_size.pixels().to_string(),
                "the conv4 backbone takes 84x84 inputs; use 84, or backbone = \"resnet18\" for 224",
            );
        }
        let augment = self.model.support_augment;
        if augment == SupportAugment::Fusion && conv4_at_224(self.fusion.encoder) {
            return invalid(
                "fusion.encoder",
                self.fusion.encoder.to_string(),
                "conv4 encoders take 84x84 inputs; use resnet18 encoders at 224",
            );
        }
        if augment.uses_copies() && self.model.n_aug == 0 {
            return invalid(
                "model.n_aug",
                "0".into(),
                "must be at least 1 with the gaussian, generated, mixup and fusion support augmentations",
            );
        }
        if self.init.backbone_weights.is_some() && self.model.backbone != BackboneKind::Resnet18 {
            return invalid(
                "model.backbone",
                self.model.backbone.to_string(),
                "init.backbone_weights loads ResNet-18 weights; set backbone = \"resnet18\" or remove init.backbone_weights",
            );
        }
        if augment == SupportAugment::Fusion
            && self.fusion.encoder_weights.is_some()
            && self.fusion.encoder != BackboneKind::Resnet18
        {
            return invalid(
                "fusion.encoder",
                self.fusion.encoder.to_string(),
                "fusion.encoder_weights loads ResNet-18 weights; set encoder = \"resnet18\" or remove fusion.encoder_weights",
            );
        }
        if augment.needs_generated() && self.model.generated.is_none() {
            return invalid(
                "model.generated",
                "(none)".into(),
                "the support augmentation reads generated images; give the folder written by `metairnet generate`",
            );
        }
        if let Some(factor) = self.fusion.lr_factor
            && !(factor.is_finite() && factor > 0.0)
        {
            return invalid(
                "fusion.lr_factor",
                factor.to_string(),
                "must be a positive number",
            );
        }
        if let Err((field, value, reason)) = self.block_dropout.check() {
            return invalid(field, value, reason);
        }
        if self.episodes.n_way < 2 {
            return invalid(
                "episodes.n_way",
                self.episodes.n_way.to_string(),
                "must be at least 2",
            );
        }
        if self.episodes.n_shot == 0 {
            return invalid("episodes.n_shot", "0".into(), "must be at least 1");
        }
        if self.episodes.n_query == 0 {
            return invalid("episodes.n_query", "0".into(), "must be at least 1");
        }
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr > 0.0) {
            return invalid(
                "optimizer.lr",
                self.optimizer.lr.to_string(),
                "must be a positive number",
            );
        }
        if !(self.optimizer.epsilon.is_finite() && self.optimizer.epsilon > 0.0) {
            return invalid(
                "optimizer.epsilon",
                self.optimizer.epsilon.to_string(),
                "must be a positive number",
            );
        }
        for (field, beta) in [
            ("optimizer.beta1", self.optimizer.beta1),
            ("optimizer.beta2", self.optimizer.beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return invalid(field, beta.to_string(), "must be in [0, 1)");
            }
        }
        if self.training.epochs == 0 {
            return invalid("training.epochs", "0".into(), "must be at least 1");
        }
        if self.training.episodes_per_epoch == 0 {
            return invalid(
                "training.episodes_per_epoch",
                "0".into(),
                "must be at least 1",
            );
        }
        if self.validation.episodes == 0 {
            return invalid("validation.episodes", "0".into(), "must be at least 1");
        }
        let schedule = &self.schedule;
        if schedule.kind == ScheduleKind::Step
            && !(schedule.gamma.is_finite() && schedule.gamma > 0.0)
        {
            return invalid(
                "schedule.gamma",
                schedule.gamma.to_string(),
                "must be a positive number",
            );
        }
        if schedule.kind == ScheduleKind::Cosine
            && !(0.0..=self.optimizer.lr).contains(&schedule.min_lr)
        {
            return invalid(
                "schedule.min_lr",
                schedule.min_lr.to_string(),
                "must be between 0 and optimizer.lr, because the cosine schedule decays from lr to min_lr",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_official_recipe() {
        let config = TrainConfig::default();
        assert_eq!(config.optimizer.lr, 1e-3);
        assert_eq!(config.optimizer.epsilon, 1e-8);
        assert!(config.optimizer.amsgrad);
        assert_eq!(config.training.epochs, 10);
        assert_eq!(config.validation.seed, 123);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn toml_round_trip() {
        let mut config = TrainConfig::default();
        config.schedule = LrSchedule {
            kind: ScheduleKind::Cosine,
            min_lr: 1e-5,
            ..LrSchedule::default()
        };
        config.training.epochs = 3;
        let parsed = TrainConfig::from_toml(&config.to_toml()).unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let config = TrainConfig::from_toml("seed = 9\n[training]\nepochs = 2\n").unwrap();
        assert_eq!(config.seed, 9);
        assert_eq!(config.training.epochs, 2);
        assert_eq!(config.training.episodes_per_epoch, 1000);
    }

    #[test]
    fn schedule_keys_are_optional() {
        let config = TrainConfig::from_toml("[schedule]\nkind = \"cosine\"\n").unwrap();
        assert_eq!(config.schedule.kind, ScheduleKind::Cosine);
        assert_eq!(config.schedule.min_lr, 0.0);
        let config = TrainConfig::from_toml("[schedule]\ngamma = 0.5\n").unwrap();
        assert_eq!(config.schedule.kind, ScheduleKind::Step);
        assert_eq!(config.schedule.milestones, vec![5]);
    }

    #[test]
    fn cosine_floor_above_lr_is_rejected() {
        let mut config = TrainConfig::default();
        config.schedule.kind = ScheduleKind::Cosine;
        config.schedule.min_lr = 0.01;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("schedule.min_lr = 0.01"), "{message}");
    }

    #[test]
    fn episode_keys_are_optional() {
        let config = TrainConfig::from_toml("[episodes]\nn_query = 5\n").unwrap();
        assert_eq!(config.episodes.n_query, 5);
        assert_eq!(config.episodes.n_way, 5);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = TrainConfig::from_toml("[training]\nepoch = 2\n").unwrap_err();
        assert!(error.contains("epoch"), "{error}");
    }

    #[test]
    fn invalid_values_name_field() {
        let mut config = TrainConfig::default();
        config.optimizer.lr = -1.0;
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("optimizer.lr (flag --lr) = -1"),
            "{message}"
        );
    }

    #[test]
    fn zero_n_aug_rejected_for_copies() {
        for augment in [
            SupportAugment::Gaussian,
            SupportAugment::Generated,
            SupportAugment::Mixup,
            SupportAugment::Fusion,
        ] {
            let mut config = TrainConfig::default();
            config.model.support_augment = augment;
            config.model.n_aug = 0;
            config.model.generated = Some(PathBuf::from("generated"));
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains("model.n_aug"), "{augment}: {message}");
        }
    }

    #[test]
    fn zero_n_aug_allowed_for_flip() {
        let mut config = TrainConfig::default();
        config.model.support_augment = SupportAugment::Flip;
        config.model.n_aug = 0;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn imagenet_weights_need_resnet18() {
        let mut config = TrainConfig::default();
        config.init.backbone_weights = Some(PathBuf::from("resnet18.pth"));
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("model.backbone = conv4"), "{message}");
    }

    #[test]
    fn step_schedule_drops_at_milestone() {
        let schedule = LrSchedule::default();
        assert_eq!(schedule.learning_rate(1e-3, 4.99, 10), 1e-3);
        assert!((schedule.learning_rate(1e-3, 5.0, 10) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn cosine_schedule_ends_at_min() {
        let schedule = LrSchedule {
            kind: ScheduleKind::Cosine,
            min_lr: 1e-5,
            ..LrSchedule::default()
        };
        assert!((schedule.learning_rate(1e-3, 0.0, 4) - 1e-3).abs() < 1e-12);
        assert!((schedule.learning_rate(1e-3, 4.0, 4) - 1e-5).abs() < 1e-12);
    }
}
