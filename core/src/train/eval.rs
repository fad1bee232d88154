//! Scoring a model on fixed-seed episodes: mean accuracy and its 95% confidence interval.

use super::progress::Progress;
use super::prepare::{PreparedEpisode, SupportPlan};
use crate::data::{GeneratedImages, ImageStore, Split};
use crate::episodes::EpisodeSampler;
use crate::model::{FewShotNet, SupportAugment, accuracy};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// The episodes to score.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub split: Split,
    pub episodes: usize,
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            split: Split::Novel,
            episodes: 600,
            seed: 123,
        }
    }
}

/// The result of an evaluation. Accuracies are in percent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSummary {
    pub accuracy: f64,
    pub ci95: f64,
    pub episodes: usize,
    pub split: Split,
    pub seed: u64,
    pub n_way: usize,
    pub n_shot: usize,
    pub n_query: usize,
    /// The support augmentation and its number of copies per support image.
    #[serde(default)]
    pub support_augment: SupportAugment,
    #[serde(default)]
    pub n_aug: usize,
    /// The epoch of the evaluated checkpoint.
    pub checkpoint_epoch: usize,
    /// The dataset folder and the fingerprint of the split's class and photo names.
    pub data: String,
    pub data_fingerprint: String,
    pub device: String,
    /// Seconds since the Unix epoch when the evaluation finished.
    pub unix_time: u64,
    pub seconds: f64,
    /// Accuracy of every episode in percent, in episode order.
    pub per_episode: Vec<f64>,
}

/// Returns the mean and the half-width of the 95% confidence interval, `1.96 * std /
/// sqrt(n)` with the population standard deviation, of `values`.
pub fn mean_and_ci95(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.96 * variance.sqrt() / n.sqrt())
}

/// The photos of a split and, for augmentations that read them, their generated images.
#[derive(Clone, Copy)]
pub struct EpisodeData<'a> {
    pub photos: &'a ImageStore,
    pub generated: Option<&'a GeneratedImages>,
}

/// Computes the query logits of a prepared episode, row-major `[n_query_total, n_way]`.
///
/// `model` must be in evaluation mode (see [`Module::valid`]) and `device` a plain device, so
/// BatchNorm uses its running statistics.
pub fn episode_logits(
    model: &FewShotNet,
    prepared: &PreparedEpisode,
    n_way: usize,
    device: &Device,
) -> Vec<f32> {
    let output = model.episode(prepared.input(n_way, device), &prepared.augment);
    output
        .logits
        .into_data()
        .try_to_vec::<f32>()
        .expect("logits are f32")
}

/// Scores `model` on episodes `0..count` of `sampler` and returns each episode's accuracy in
/// percent.
pub fn evaluate_episodes(
    model: &FewShotNet,
    data: EpisodeData<'_>,
    sampler: &EpisodeSampler,
    plan: &SupportPlan,
    count: usize,
    device: &Device,
    progress: &dyn Progress,
) -> Vec<f64> {
    let shape = sampler.shape();
    let mut accuracies = Vec::with_capacity(count);
    for index in 0..count {
        let episode = sampler.episode(index as u64, false);
        let labels = episode.query_labels(&shape);
        let prepared = plan.prepare(episode, index as u64, data.photos, data.generated);
        let logits = episode_logits(model, &prepared, shape.n_way, device);
        accuracies.push(100.0 * accuracy(&logits, &labels, shape.n_way));
        progress.advance(1);
        if index % 10 == 9 {
            let (mean, ci) = mean_and_ci95(&accuracies);
            progress.set_message(&format!("acc {mean:.2}% ± {ci:.2}"));
        }
    }
    accuracies
}

/// Scores `model` on `options.episodes` episodes of `data` drawn with `options.seed`.
pub fn evaluate(
    model: &FewShotNet,
    data: EpisodeData<'_>,
    shape: crate::episodes::EpisodeShape,
    plan: &SupportPlan,
    options: &EvalOptions,
    device: &Device,
    progress: &dyn Progress,
) -> Result<(Vec<f64>, f64, f64), crate::data::DataError> {
    let sampler = EpisodeSampler::new(data.photos, options.split, shape, options.seed)?;
    progress.begin(&format!("eval {}", options.split), options.episodes as u64);
    let model = model.valid();
    let accuracies =
        evaluate_episodes(&model, data, &sampler, plan, options.episodes, device, progress);
    progress.finish();
    let (mean, ci95) = mean_and_ci95(&accuracies);
    Ok((accuracies, mean, ci95))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_uses_population_std() {
        let _rng = crate::test_support::lock_rng();
        // Values 0 and 100: mean 50, population std 50, so ci = 1.96 * 50 / sqrt(2).
        let (mean, ci) = mean_and_ci95(&[0.0, 100.0]);
        assert_eq!(mean, 50.0);
        assert!((ci - 1.96 * 50.0 / 2f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn constant_values_have_zero_ci() {
        let _rng = crate::test_support::lock_rng();
        let (mean, ci) = mean_and_ci95(&[40.0; 600]);
        assert_eq!(mean, 40.0);
        assert_eq!(ci, 0.0);
    }
}
