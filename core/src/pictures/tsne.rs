//! Exact t-SNE (van der Maaten and Hinton, 2008) to two dimensions, for a few hundred points.
//!
//! The steps:
//! 1. For each point i, a binary search finds the precision of a Gaussian over the squared
//!    distances to the other points whose entropy matches log(perplexity); this gives the
//!    conditional probabilities p(j|i).
//! 2. P is symmetrised, `p_ij = (p(j|i) + p(i|j)) / 2n`.
//! 3. The 2-D points start from N(0, 1e-4) and follow gradient descent on KL(P || Q), where Q
//!    uses a Student-t kernel `1 / (1 + |y_i - y_j|^2)`, with momentum and per-coordinate gains.
//!    P is multiplied by the early exaggeration for the first iterations.
//!
//! Time and memory grow with the square of the point count (an n x n matrix of f64), so this
//! suits up to a few thousand points. The result depends only on the input and the seed: every
//! sum runs in a fixed order on one thread.

use super::random::SplitMix64;

/// t-SNE settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TsneConfig {
    /// The effective number of neighbours each point's Gaussian covers, from 1 to the point
    /// count minus 1.
    pub perplexity: f64,
    /// Gradient-descent steps.
    pub iterations: usize,
    /// The factor on P during the first `exaggeration_iterations` steps.
    pub early_exaggeration: f64,
    pub exaggeration_iterations: usize,
    /// Step size; `None` takes `max(n / early_exaggeration / 4, 50)` for n points.
    pub learning_rate: Option<f64>,
    /// Seed of the initial 2-D points.
    pub seed: u64,
}

impl Default for TsneConfig {
    fn default() -> Self {
        TsneConfig {
            perplexity: 30.0,
            iterations: 1000,
            early_exaggeration: 12.0,
            exaggeration_iterations: 250,
            learning_rate: None,
            seed: 0,
        }
    }
}

/// The 2-D embedding and how well it fits.
#[derive(Clone, Debug, PartialEq)]
pub struct TsneResult {
    /// One (x, y) per input point, centred on the origin.
    pub points: Vec<[f64; 2]>,
    /// KL(P || Q) after the last step, in nats.
    pub kl_divergence: f64,
}

/// Errors for inputs t-SNE cannot embed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TsneError {
    #[error("t-SNE needs at least 3 points, got {count}")]
    TooFewPoints { count: usize },
    #[error("expected a multiple of the dimension {dim} input values, got {len}")]
    Shape { len: usize, dim: usize },
    #[error("invalid perplexity {perplexity} for {count} points; expected a value from 1 to {max}")]
    Perplexity {
        perplexity: f64,
        count: usize,
        max: usize,
    },
    #[error("invalid t-SNE setting {name} = {value}; {expected}")]
    Setting {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("point {index} has a value that is NaN or infinite")]
    NonFinite { index: usize },
}

/// Embeds `values`, `n` rows of `dim` numbers each, in two dimensions.
///
/// # Errors
/// Fewer than 3 points, a length that is not a multiple of `dim`, a perplexity outside
/// [1, n - 1], a learning rate or exaggeration that is not positive, and non-finite input.
pub fn tsne(values: &[f32], dim: usize, config: &TsneConfig) -> Result<TsneResult, TsneError> {
    if dim == 0 || !values.len().is_multiple_of(dim) {
        return Err(TsneError::Shape {
            len: values.len(),
            dim,
        });
    }
    let count = values.len() / dim;
    if count < 3 {
        return Err(TsneError::TooFewPoints { count });
    }
    check_config(config, count)?;
    if let Some(position) = values.iter().position(|v| !v.is_finite()) {
        return Err(TsneError::NonFinite {
            index: position / dim,
        });
    }

    let distances = squared_distances(values, dim);
    let affinities = joint_probabilities(&distances, count, config.perplexity);
    let learning_rate = config
        .learning_rate
        .unwrap_or_else(|| (count as f64 / config.early_exaggeration / 4.0).max(50.0));
    let mut descent = Descent::new(count, config.seed);
    for iteration in 0..config.iterations {
        let exaggerated = iteration < config.exaggeration_iterations;
        let exaggeration = if exaggerated {
            config.early_exaggeration
        } else {
            1.0
        };
        let momentum = if exaggerated { 0.5 } else { 0.8 };
        descent.step(&affinities, exaggeration, momentum, learning_rate);
    }

    let kl_divergence = descent.kl_divergence(&affinities);
    Ok(TsneResult {
        points: descent.points,
        kl_divergence,
    })
}

fn check_config(config: &TsneConfig, count: usize) -> Result<(), TsneError> {
    let max = count - 1;
    if !(config.perplexity >= 1.0 && config.perplexity <= max as f64) {
        return Err(TsneError::Perplexity {
            perplexity: config.perplexity,
            count,
            max,
        });
    }
    if !(config.early_exaggeration.is_finite() && config.early_exaggeration > 0.0) {
        return Err(TsneError::Setting {
            name: "early_exaggeration",
            value: config.early_exaggeration,
            expected: "expected a positive number",
        });
    }
    if let Some(rate) = config.learning_rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(TsneError::Setting {
            name: "learning_rate",
            value: rate,
            expected: "expected a positive number",
        });
    }
    Ok(())
}

/// Returns the `n x n` matrix of squared Euclidean distances, row-major.
fn squared_distances(values: &[f32], dim: usize) -> Vec<f64> {
    let count = values.len() / dim;
    let mut distances = vec![0.0f64; count * count];
    for i in 0..count {
        let a = &values[i * dim..(i + 1) * dim];
        for j in i + 1..count {
            let b = &values[j * dim..(j + 1) * dim];
            let distance: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| {
                    let d = (*x - *y) as f64;
                    d * d
                })
                .sum();
            distances[i * count + j] = distance;
            distances[j * count + i] = distance;
        }
    }
    distances
}

/// Returns the symmetric joint probabilities P, row-major, each at least 1e-12.
fn joint_probabilities(distances: &[f64], count: usize, perplexity: f64) -> Vec<f64> {
    let mut conditional = vec![0.0f64; count * count];
    for i in 0..count {
        let row = &distances[i * count..(i + 1) * count];
        let probabilities = calibrate_row(row, i, perplexity);
        conditional[i * count..(i + 1) * count].copy_from_slice(&probabilities);
    }
    let mut joint = vec![0.0f64; count * count];
    let norm = 2.0 * count as f64;
    for i in 0..count {
        for j in 0..count {
            let p = (conditional[i * count + j] + conditional[j * count + i]) / norm;
            joint[i * count + j] = if i == j { 0.0 } else { p.max(1e-12) };
        }
    }
    joint
}

/// Finds by binary search the precision `beta = 1 / (2 sigma^2)` whose Gaussian over `row`
/// (squared distances from point `own`) has entropy ln(perplexity), and returns p(j|i).
fn calibrate_row(row: &[f64], own: usize, perplexity: f64) -> Vec<f64> {
    const TOLERANCE: f64 = 1e-5;
    const MAX_STEPS: usize = 200;
    let target = perplexity.ln();
    // Subtracting the nearest distance leaves the normalised probabilities unchanged and keeps
    // exp() from underflowing for every neighbour when distances are large.
    let nearest = row
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != own)
        .map(|(_, d)| *d)
        .fold(f64::INFINITY, f64::min);
    let shifted: Vec<f64> = row.iter().map(|d| d - nearest).collect();

    let mut beta = 1.0;
    let (mut low, mut high) = (0.0f64, f64::INFINITY);
    let mut probabilities = vec![0.0; row.len()];
    for _ in 0..MAX_STEPS {
        let mut sum = 0.0;
        let mut weighted = 0.0;
        for (j, d) in shifted.iter().enumerate() {
            let p = if j == own { 0.0 } else { (-beta * d).exp() };
            probabilities[j] = p;
            sum += p;
            weighted += p * d;
        }
        // H = ln(sum) + beta * E[d] for p_j = exp(-beta d_j) / sum.
        let entropy = sum.ln() + beta * weighted / sum;
        let difference = entropy - target;
        if difference.abs() < TOLERANCE {
            break;
        }
        if difference > 0.0 {
            // Too flat: sharpen.
            low = beta;
            beta = if high.is_finite() {
                (beta + high) / 2.0
            } else {
                beta * 2.0
            };
        } else {
            high = beta;
            beta = (beta + low) / 2.0;
        }
    }
    let sum: f64 = probabilities.iter().sum();
    probabilities.iter_mut().for_each(|p| *p /= sum);
    probabilities
}

/// The state of gradient descent: points, their last update and per-coordinate gains.
struct Descent {
    points: Vec<[f64; 2]>,
    update: Vec<[f64; 2]>,
    gains: Vec<[f64; 2]>,
    /// Scratch for the Student-t kernel values, `n x n`.
    kernel: Vec<f64>,
}

impl Descent {
    fn new(count: usize, seed: u64) -> Descent {
        let mut random = SplitMix64::new(seed);
        let points = (0..count)
            .map(|_| [1e-2 * random.normal(), 1e-2 * random.normal()])
            .collect();
        Descent {
            points,
            update: vec![[0.0; 2]; count],
            gains: vec![[1.0; 2]; count],
            kernel: vec![0.0; count * count],
        }
    }

    /// Fills the kernel `1 / (1 + |y_i - y_j|^2)` (0 on the diagonal) and returns its sum.
    fn fill_kernel(&mut self) -> f64 {
        let count = self.points.len();
        let mut sum = 0.0;
        for i in 0..count {
            for j in i + 1..count {
                let dx = self.points[i][0] - self.points[j][0];
                let dy = self.points[i][1] - self.points[j][1];
                let value = 1.0 / (1.0 + dx * dx + dy * dy);
                self.kernel[i * count + j] = value;
                self.kernel[j * count + i] = value;
                sum += 2.0 * value;
            }
        }
        sum
    }

    fn step(&mut self, affinities: &[f64], exaggeration: f64, momentum: f64, learning_rate: f64) {
        const MIN_GAIN: f64 = 0.01;
        let count = self.points.len();
        let sum = self.fill_kernel();

        for i in 0..count {
            // dC/dy_i = 4 sum_j (p_ij - q_ij) k_ij (y_i - y_j), with q_ij = k_ij / sum.
            let mut gradient = [0.0f64; 2];
            for j in 0..count {
                if i == j {
                    continue;
                }
                let k = self.kernel[i * count + j];
                let q = (k / sum).max(1e-12);
                let strength = (exaggeration * affinities[i * count + j] - q) * k;
                gradient[0] += strength * (self.points[i][0] - self.points[j][0]);
                gradient[1] += strength * (self.points[i][1] - self.points[j][1]);
            }
            for axis in 0..2 {
                let g = 4.0 * gradient[axis];
                // Gains grow while the gradient keeps pointing against the last step and
                // shrink when it flips.
                let gain = &mut self.gains[i][axis];
                if (g > 0.0) != (self.update[i][axis] > 0.0) {
                    *gain += 0.2;
                } else {
                    *gain = (*gain * 0.8).max(MIN_GAIN);
                }
                self.update[i][axis] = momentum * self.update[i][axis] - learning_rate * *gain * g;
            }
        }

        for (point, update) in self.points.iter_mut().zip(&self.update) {
            point[0] += update[0];
            point[1] += update[1];
        }
        let mean = self.points.iter().fold([0.0; 2], |acc, p| {
            [acc[0] + p[0] / count as f64, acc[1] + p[1] / count as f64]
        });
        for point in &mut self.points {
            point[0] -= mean[0];
            point[1] -= mean[1];
        }
    }

    fn kl_divergence(&mut self, affinities: &[f64]) -> f64 {
        let count = self.points.len();
        let sum = self.fill_kernel();
        let mut divergence = 0.0;
        for i in 0..count {
            for j in 0..count {
                if i == j {
                    continue;
                }
                let p = affinities[i * count + j];
                let q = (self.kernel[i * count + j] / sum).max(1e-12);
                divergence += p * (p / q).ln();
            }
        }
        divergence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian clusters of `per_cluster` points in `dim` dimensions, unit variance, their
    /// centres `separation` apart along every axis.
    fn two_clusters(per_cluster: usize, dim: usize, separation: f64, seed: u64) -> Vec<f32> {
        let mut random = SplitMix64::new(seed);
        let mut values = Vec::with_capacity(2 * per_cluster * dim);
        for cluster in 0..2 {
            for _ in 0..per_cluster {
                for _ in 0..dim {
                    values.push((cluster as f64 * separation + random.normal()) as f32);
                }
            }
        }
        values
    }

    fn centroid(points: &[[f64; 2]]) -> [f64; 2] {
        let n = points.len() as f64;
        points
            .iter()
            .fold([0.0; 2], |acc, p| [acc[0] + p[0] / n, acc[1] + p[1] / n])
    }

    fn distance(a: [f64; 2], b: [f64; 2]) -> f64 {
        ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
    }

    #[test]
    fn separated_clusters_stay_separated() {
        let per_cluster = 30;
        let values = two_clusters(per_cluster, 50, 3.0, 1);
        let config = TsneConfig {
            perplexity: 10.0,
            iterations: 500,
            seed: 7,
            ..TsneConfig::default()
        };
        let result = tsne(&values, 50, &config).unwrap();
        assert_eq!(result.points.len(), 2 * per_cluster);
        let (first, second) = result.points.split_at(per_cluster);
        let centres = [centroid(first), centroid(second)];
        for (cluster, points) in [first, second].iter().enumerate() {
            for point in points.iter() {
                let own = distance(*point, centres[cluster]);
                let other = distance(*point, centres[1 - cluster]);
                assert!(
                    own < other,
                    "a point of cluster {cluster} sits nearer the other"
                );
            }
        }
        // The gap between clusters exceeds the spread within them.
        let spread = first
            .iter()
            .map(|p| distance(*p, centres[0]))
            .fold(0.0, f64::max);
        assert!(distance(centres[0], centres[1]) > 2.0 * spread);
        assert!(result.kl_divergence.is_finite());
        assert!(result.kl_divergence >= 0.0);
    }

    #[test]
    fn same_seed_gives_same_points() {
        let values = two_clusters(10, 8, 4.0, 2);
        let config = TsneConfig {
            perplexity: 5.0,
            iterations: 300,
            seed: 3,
            ..TsneConfig::default()
        };
        let a = tsne(&values, 8, &config).unwrap();
        let b = tsne(&values, 8, &config).unwrap();
        assert_eq!(a, b);
        let other = tsne(&values, 8, &TsneConfig { seed: 4, ..config }).unwrap();
        assert_ne!(a.points, other.points);
    }

    #[test]
    fn calibrated_rows_reach_the_perplexity() {
        let values = two_clusters(20, 5, 2.0, 5);
        let distances = squared_distances(&values, 5);
        let count = 40;
        for i in [0, 17, 39] {
            let row = calibrate_row(&distances[i * count..(i + 1) * count], i, 8.0);
            assert_eq!(row[i], 0.0);
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            let entropy: f64 = row.iter().filter(|p| **p > 0.0).map(|p| -p * p.ln()).sum();
            assert!(
                (entropy.exp() - 8.0).abs() < 1e-3,
                "perplexity {}",
                entropy.exp()
            );
        }
    }

    #[test]
    fn far_apart_points_calibrate_without_underflow() {
        // Squared distances near 1e6: exp(-d) underflows unless the nearest is subtracted.
        let values: Vec<f32> = (0..6).map(|i| 1000.0 * i as f32).collect();
        let result = tsne(
            &values,
            1,
            &TsneConfig {
                perplexity: 2.0,
                iterations: 50,
                ..TsneConfig::default()
            },
        )
        .unwrap();
        assert!(
            result
                .points
                .iter()
                .all(|p| p[0].is_finite() && p[1].is_finite())
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let config = TsneConfig::default();
        assert_eq!(
            tsne(&[0.0; 4], 2, &config),
            Err(TsneError::TooFewPoints { count: 2 })
        );
        assert_eq!(
            tsne(&[0.0; 7], 2, &config),
            Err(TsneError::Shape { len: 7, dim: 2 })
        );
        let error = tsne(&[0.0; 20], 2, &config).unwrap_err();
        assert_eq!(
            error,
            TsneError::Perplexity {
                perplexity: 30.0,
                count: 10,
                max: 9
            }
        );
        assert!(error.to_string().contains("from 1 to 9"), "{error}");
        let mut values = vec![0.0f32; 20];
        values[13] = f32::NAN;
        let small = TsneConfig {
            perplexity: 3.0,
            ..TsneConfig::default()
        };
        assert_eq!(
            tsne(&values, 2, &small),
            Err(TsneError::NonFinite { index: 6 })
        );
    }
}
