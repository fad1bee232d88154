//! The first weights of a new run: fresh, from an earlier run's best checkpoint (the two-stage
//! recipe: ProtoNet first, then MetaIRNet), or from ImageNet checkpoints.

use super::checkpoint::{choose_checkpoint, load_model, model_skeleton};
use super::config::TrainConfig;
use super::run::RunFolder;
use crate::model::{Backbone, FewShotNet, SupportAugment, with_fresh_ids};
use burn::prelude::*;
use std::path::PathBuf;

/// A new run's first weights could not be set.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot start from run {path} (init.from_run): {reason}")]
    FromRun { path: PathBuf, reason: String },
    #[error(
        "run {path} (init.from_run) has a {found} backbone but this run's model.backbone is {expected}; start from a run with the same backbone"
    )]
    BackboneMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("cannot load ImageNet weights for {what}: {reason}")]
    Weights { what: &'static str, reason: String },
}

/// Returns the model a new run with `config` starts from.
///
/// # Errors
/// An `init.from_run` folder without a usable checkpoint or with another backbone, and
/// unreadable weight files.
pub fn initial_model(config: &TrainConfig, device: &Device) -> Result<FewShotNet, BuildError> {
    let mut model = model_skeleton(config, device);

    if let Some(path) = &config.init.from_run {
        let from_run = |reason: String| BuildError::FromRun {
            path: path.clone(),
            reason,
        };
        let run = RunFolder::open(path).map_err(|e| from_run(e.to_string()))?;
        let run_config = run.config().map_err(|e| from_run(e.to_string()))?;
        let chosen = choose_checkpoint(&run, false).map_err(|e| from_run(e.to_string()))?;
        let earlier = load_model(&chosen.dir, &run_config, device)
            .map_err(|e| from_run(e.to_string()))?;
        if earlier.backbone.kind() != config.model.backbone {
            return Err(BuildError::BackboneMismatch {
                path: path.clone(),
                found: earlier.backbone.kind().to_string(),
                expected: config.model.backbone.to_string(),
            });
        }
        log::info!(
            "backbone initialised from epoch {} of {}",
            chosen.epoch,
            path.display()
        );
        model.backbone = earlier.backbone;
    } else if let Some(weights) = &config.init.backbone_weights {
        model.backbone = imagenet_backbone(weights, "the backbone", device)?;
    }

    if config.model.support_augment == SupportAugment::Fusion
        && let Some(fusion) = model.fusion.as_mut()
    {
        let encoder = config.fusion.encoder;
        let source = if let Some(weights) = &config.fusion.encoder_weights {
            Some(imagenet_backbone(weights, "the fusion encoders", device)?)
        } else if config.fusion.encoders_from_backbone && encoder == model.backbone.kind() {
            Some(model.backbone.clone())
        } else {
            None
        };
        if let Some(source) = source {
            // Copies need their own parameter identities: the optimizer keys its state by
            // them, and the encoders train apart from the backbone.
            fusion.original = with_fresh_ids(source.clone());
            if fusion.generated.is_some() {
                fusion.generated = Some(with_fresh_ids(source));
            }
        }
    }
    Ok(model)
}

/// Loads a torchvision ResNet-18 checkpoint as a backbone.
fn imagenet_backbone(
    path: &std::path::Path,
    what: &'static str,
    device: &Device,
) -> Result<Backbone, BuildError> {
    crate::model::load_resnet18(path, device)
        .map(Backbone::ResNet18)
        .map_err(|error| BuildError::Weights {
            what,
            reason: error.to_string(),
        })
}
