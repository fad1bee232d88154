//! Classifiers fitted on the frozen embeddings of one episode: the Nearest Neighbour, Logistic
//! Regression (one-vs-rest) and Softmax Regression (multinomial) baselines.
//!
//! All three work on L2-normalised embeddings: every support and query vector is divided by its
//! Euclidean norm, and a zero vector stays zero. This removes the scale of the backbone's
//! features, so that one regularisation strength suits every backbone and image size. It also
//! makes the nearest neighbour the support embedding with the largest cosine similarity.
//!
//! Both regressions minimise `sum_i loss_i + ||W||^2 / (2 C)` with `C = 1`
//! ([`REGULARISATION_C`]) and unpenalised intercepts. The loss is the binary log-loss of each
//! class against the rest (one-vs-rest) or the cross-entropy of the softmax (multinomial). The
//! optimal weights are a combination of the support embeddings, `W = X^T A` (representer
//! theorem), so the fit works with the `n x n` Gram matrix `K = X X^T` and never with the
//! embedding dimension. Newton's method with a backtracking line search then converges to
//! machine precision in a few steps, in `f64`, with no random numbers. Each step solves a
//! dense linear system of `(n + 1) * n_way` unknowns: 30 for 5-way 1-shot, 130 for 5-way
//! 5-shot. The cost grows as the cube of that number, which suits episodes but not thousands
//! of support embeddings.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The inverse regularisation strength `C` of both regressions: the default of scikit-learn's
/// `LogisticRegression` (version 1.4 documentation).
pub const REGULARISATION_C: f64 = 1.0;

/// The maximum number of Newton steps of one fit.
const MAX_NEWTON_STEPS: usize = 50;
/// The fit stops when every entry of the optimality residual is below this value.
const RESIDUAL_TOLERANCE: f64 = 1e-10;
/// The fraction of the predicted decrease that a line-search step must achieve (Armijo).
const ARMIJO_FRACTION: f64 = 1e-4;
/// The smallest step length tried by the line search before the fit stops.
const MIN_STEP: f64 = 1e-10;

/// A classifier fitted on one episode's support embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingClassifier {
    /// Scores a class by minus the Euclidean distance to its nearest support embedding.
    #[serde(rename = "nn")]
    NearestNeighbour,
    /// One binary L2-regularised logistic regression per class, that class against the rest.
    #[serde(rename = "logistic")]
    LogisticRegression,
    /// One L2-regularised multinomial logistic regression over all classes.
    #[serde(rename = "softmax")]
    SoftmaxRegression,
}

impl EmbeddingClassifier {
    /// All classifiers: nearest neighbour, one-vs-rest, multinomial.
    pub const ALL: [EmbeddingClassifier; 3] = [
        EmbeddingClassifier::NearestNeighbour,
        EmbeddingClassifier::LogisticRegression,
        EmbeddingClassifier::SoftmaxRegression,
    ];
}

impl fmt::Display for EmbeddingClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            EmbeddingClassifier::NearestNeighbour => "nn",
            EmbeddingClassifier::LogisticRegression => "logistic",
            EmbeddingClassifier::SoftmaxRegression => "softmax",
        })
    }
}

impl std::str::FromStr for EmbeddingClassifier {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "nn" => Ok(EmbeddingClassifier::NearestNeighbour),
            "logistic" => Ok(EmbeddingClassifier::LogisticRegression),
            "softmax" => Ok(EmbeddingClassifier::SoftmaxRegression),
            other => Err(format!(
                "unknown embedding classifier {other:?}; expected nn, logistic or softmax"
            )),
        }
    }
}

/// Fits `kind` on the support embeddings and scores every query against every class.
///
/// The scores are minus the Euclidean distance to the class's nearest support embedding (NN),
/// the decision value `w_c . x + b_c` of each one-vs-rest classifier (logistic) or the logits
/// (softmax), all on L2-normalised embeddings. The largest score of a row is the prediction.
///
/// # Shapes
/// - `support`: `[n_support, dim]` row-major, with `support_labels[i]` in `0..n_way`
/// - `queries`: `[n_query, dim]` row-major
/// - output: `[n_query, n_way]` row-major
///
/// # Panics
/// When `dim` is 0, a slice length does not fit the shapes, `n_way < 2`, a label is not below
/// `n_way`, a class has no support embedding, or an embedding has a NaN or infinite value.
pub fn classify(
    kind: EmbeddingClassifier,
    support: &[f32],
    support_labels: &[usize],
    queries: &[f32],
    dim: usize,
    n_way: usize,
) -> Vec<f32> {
    check_inputs(support, support_labels, queries, dim, n_way);
    let support = l2_normalised_rows(support, dim);
    let queries = l2_normalised_rows(queries, dim);

    let scores = match kind {
        EmbeddingClassifier::NearestNeighbour => {
            nearest_neighbour_scores(&support, support_labels, &queries, dim, n_way)
        }
        EmbeddingClassifier::LogisticRegression | EmbeddingClassifier::SoftmaxRegression => {
            let loss = match kind {
                EmbeddingClassifier::LogisticRegression => Loss::OneVsRest,
                _ => Loss::Multinomial,
            };
            let gram = inner_products(&support, &support, dim);
            let model = fit_kernel_model(loss, &gram, support_labels, n_way, REGULARISATION_C);
            let cross = inner_products(&queries, &support, dim);
            model.scores(&cross)
        }
    };
    scores.into_iter().map(|score| score as f32).collect()
}

fn check_inputs(
    support: &[f32],
    support_labels: &[usize],
    queries: &[f32],
    dim: usize,
    n_way: usize,
) {
    assert!(dim > 0, "the embedding dimension must be positive");
    assert!(
        n_way >= 2,
        "n_way is {n_way}; a classifier needs at least 2 classes"
    );
    assert_eq!(
        support.len(),
        support_labels.len() * dim,
        "support has {} values but {} labels of dimension {dim} need {}",
        support.len(),
        support_labels.len(),
        support_labels.len() * dim
    );
    assert!(
        queries.len().is_multiple_of(dim),
        "queries have {} values, not a multiple of the dimension {dim}",
        queries.len()
    );
    let mut counts = vec![0usize; n_way];
    for (index, &label) in support_labels.iter().enumerate() {
        assert!(
            label < n_way,
            "support label {label} of embedding {index} is not below n_way = {n_way}"
        );
        counts[label] += 1;
    }
    if let Some(empty) = counts.iter().position(|&count| count == 0) {
        panic!("class {empty} of {n_way} has no support embedding");
    }
    for (name, values) in [("support", support), ("query", queries)] {
        if let Some(position) = values.iter().position(|value| !value.is_finite()) {
            panic!(
                "{name} embedding {} has the value {} at index {}; the backbone produced non-finite features",
                position / dim,
                values[position],
                position % dim
            );
        }
    }
}

/// Converts rows of `dim` values to `f64` and divides each by its Euclidean norm. Zero rows
/// stay zero.
fn l2_normalised_rows(values: &[f32], dim: usize) -> Vec<f64> {
    let mut rows: Vec<f64> = values.iter().map(|&value| value as f64).collect();
    for row in rows.chunks_mut(dim) {
        let norm = row.iter().map(|value| value * value).sum::<f64>().sqrt();
        if norm > 0.0 {
            for value in row.iter_mut() {
                *value /= norm;
            }
        }
    }
    rows
}

/// Returns the `[rows(a), rows(b)]` matrix of inner products between the rows of `a` and `b`.
fn inner_products(a: &[f64], b: &[f64], dim: usize) -> Vec<f64> {
    let mut products = Vec::with_capacity((a.len() / dim) * (b.len() / dim));
    for row_a in a.chunks(dim) {
        for row_b in b.chunks(dim) {
            products.push(row_a.iter().zip(row_b).map(|(x, y)| x * y).sum());
        }
    }
    products
}

fn nearest_neighbour_scores(
    support: &[f64],
    labels: &[usize],
    queries: &[f64],
    dim: usize,
    n_way: usize,
) -> Vec<f64> {
    let mut scores = Vec::with_capacity((queries.len() / dim) * n_way);
    for query in queries.chunks(dim) {
        let mut nearest = vec![f64::INFINITY; n_way];
        for (point, &label) in support.chunks(dim).zip(labels) {
            let squared: f64 = query.iter().zip(point).map(|(q, s)| (q - s).powi(2)).sum();
            nearest[label] = nearest[label].min(squared);
        }
        scores.extend(nearest.iter().map(|squared| -squared.sqrt()));
    }
    scores
}

/// The per-sample loss of a regression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// The sum over classes of the binary log-loss of "this class" against "any other class".
    OneVsRest,
    /// The cross-entropy of the softmax over all classes.
    Multinomial,
}

impl Loss {
    /// Returns the loss of one sample with scores `f` and label `label`, and writes its gradient
    /// (`C` values) and Hessian (`C x C`, row-major) with respect to `f`.
    fn evaluate(self, f: &[f64], label: usize, gradient: &mut [f64], hessian: &mut [f64]) -> f64 {
        let classes = f.len();
        hessian.fill(0.0);
        match self {
            Loss::OneVsRest => {
                let mut loss = 0.0;
                for c in 0..classes {
                    let target = if c == label { 1.0 } else { 0.0 };
                    let probability = sigmoid(f[c]);
                    loss += softplus(f[c]) - target * f[c];
                    gradient[c] = probability - target;
                    hessian[c * classes + c] = probability * (1.0 - probability);
                }
                loss
            }
            Loss::Multinomial => {
                let max = f.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = f.iter().map(|value| (value - max).exp()).sum();
                let log_sum_exp = max + sum.ln();
                let probability = |c: usize| (f[c] - log_sum_exp).exp();
                for c in 0..classes {
                    let p_c = probability(c);
                    gradient[c] = p_c - if c == label { 1.0 } else { 0.0 };
                    hessian[c * classes + c] = p_c;
                    for d in 0..classes {
                        hessian[c * classes + d] -= p_c * probability(d);
                    }
                }
                log_sum_exp - f[label]
            }
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Computes `ln(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// A linear classifier in kernel form: the scores of a point `x` are
/// `sum_j k(x, x_j) * coefficients[j, c] + intercepts[c]`.
#[derive(Clone, Debug, PartialEq)]
struct KernelModel {
    /// `[n_support, n_way]` row-major.
    coefficients: Vec<f64>,
    intercepts: Vec<f64>,
}

impl KernelModel {
    fn zeros(n_support: usize, n_way: usize) -> KernelModel {
        KernelModel {
            coefficients: vec![0.0; n_support * n_way],
            intercepts: vec![0.0; n_way],
        }
    }

    /// Returns the `[rows, n_way]` scores from the `[rows, n_support]` kernel values `kernel`.
    fn scores(&self, kernel: &[f64]) -> Vec<f64> {
        let n_way = self.intercepts.len();
        let n_support = self.coefficients.len() / n_way;
        let mut scores = Vec::with_capacity(kernel.len() / n_support * n_way);
        for row in kernel.chunks(n_support) {
            for c in 0..n_way {
                let weighted: f64 = row
                    .iter()
                    .enumerate()
                    .map(|(j, k)| k * self.coefficients[j * n_way + c])
                    .sum();
                scores.push(weighted + self.intercepts[c]);
            }
        }
        scores
    }

    /// Returns `self + step * direction`.
    fn moved(&self, direction: &KernelModel, step: f64) -> KernelModel {
        let add = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, d)| x + step * d).collect();
        KernelModel {
            coefficients: add(&self.coefficients, &direction.coefficients),
            intercepts: add(&self.intercepts, &direction.intercepts),
        }
    }
}

/// The regularised objective at one model with the per-sample derivatives it needs.
struct Evaluation {
    value: f64,
    /// `[n, C]`: the gradient of each sample's loss with respect to its scores.
    sample_gradients: Vec<f64>,
    /// `[n, C, C]`: the Hessian of each sample's loss with respect to its scores.
    sample_hessians: Vec<f64>,
}

/// Evaluates `sum_i loss(f_i, y_i) + lambda / 2 * tr(A^T K A)` with `f = K A + 1 b^T`, where
/// `tr(A^T K A)` is `||W||^2` for the primal weights `W = X^T A`.
fn evaluate(
    loss: Loss,
    gram: &[f64],
    labels: &[usize],
    lambda: f64,
    model: &KernelModel,
) -> Evaluation {
    let n = labels.len();
    let classes = model.intercepts.len();
    let scores = model.scores(gram);
    let mut sample_gradients = vec![0.0; n * classes];
    let mut sample_hessians = vec![0.0; n * classes * classes];
    let mut value = 0.0;
    for (i, &label) in labels.iter().enumerate() {
        value += loss.evaluate(
            &scores[i * classes..(i + 1) * classes],
            label,
            &mut sample_gradients[i * classes..(i + 1) * classes],
            &mut sample_hessians[i * classes * classes..(i + 1) * classes * classes],
        );
    }

    // tr(A^T K A) = sum_c sum_ij A_ic K_ij A_jc.
    let mut penalty = 0.0;
    for i in 0..n {
        for j in 0..n {
            let k = gram[i * n + j];
            for c in 0..classes {
                penalty +=
                    model.coefficients[i * classes + c] * k * model.coefficients[j * classes + c];
            }
        }
    }
    Evaluation {
        value: value + 0.5 * lambda * penalty,
        sample_gradients,
        sample_hessians,
    }
}

/// Returns the gradient of the objective with respect to the coefficients (`K (G + lambda A)`)
/// and the intercepts (`G^T 1`).
fn objective_gradient(
    gram: &[f64],
    lambda: f64,
    model: &KernelModel,
    evaluation: &Evaluation,
) -> KernelModel {
    let residual = residual(lambda, model, evaluation);
    let classes = model.intercepts.len();
    let n = model.coefficients.len() / classes;
    let mut coefficients = vec![0.0; n * classes];
    for i in 0..n {
        for j in 0..n {
            for c in 0..classes {
                coefficients[i * classes + c] +=
                    gram[i * n + j] * residual.coefficients[j * classes + c];
            }
        }
    }
    KernelModel {
        coefficients,
        intercepts: residual.intercepts,
    }
}

/// Returns the optimality residual `(G + lambda A, G^T 1)`. It is zero exactly at the optimum,
/// where the primal weights satisfy `X^T G + lambda W = 0`, even when `K` is singular.
fn residual(lambda: f64, model: &KernelModel, evaluation: &Evaluation) -> KernelModel {
    let classes = model.intercepts.len();
    let coefficients = evaluation
        .sample_gradients
        .iter()
        .zip(&model.coefficients)
        .map(|(g, a)| g + lambda * a)
        .collect();
    let mut intercepts = vec![0.0; classes];
    for row in evaluation.sample_gradients.chunks(classes) {
        for (sum, g) in intercepts.iter_mut().zip(row) {
            *sum += g;
        }
    }
    KernelModel {
        coefficients,
        intercepts,
    }
}

/// Fits a regression in kernel form by Newton's method from zero coefficients.
///
/// Each step solves `M d = -r`, where `r` is the [`residual`] and `M` its Jacobian with respect
/// to `(A, b)`. The Hessian of the objective is `diag(K, I) M`, so `d` is the Newton direction
/// whenever `K` is invertible, and a descent direction in every case. The multinomial loss does
/// not change when a constant is added to all intercepts, so for it one intercept equation
/// (implied by the others) is replaced by `sum_c d_b[c] = 0`.
fn fit_kernel_model(
    loss: Loss,
    gram: &[f64],
    labels: &[usize],
    n_way: usize,
    c: f64,
) -> KernelModel {
    let lambda = 1.0 / c;
    let n = labels.len();
    let mut model = KernelModel::zeros(n, n_way);
    let mut evaluation = evaluate(loss, gram, labels, lambda, &model);

    for _ in 0..MAX_NEWTON_STEPS {
        let residual = residual(lambda, &model, &evaluation);
        let largest = residual
            .coefficients
            .iter()
            .chain(&residual.intercepts)
            .fold(0.0f64, |largest, value| largest.max(value.abs()));
        if largest < RESIDUAL_TOLERANCE {
            break;
        }

        let Some(direction) = newton_direction(loss, gram, lambda, &residual, &evaluation) else {
            break;
        };
        let gradient = objective_gradient(gram, lambda, &model, &evaluation);
        let slope: f64 = gradient
            .coefficients
            .iter()
            .chain(&gradient.intercepts)
            .zip(direction.coefficients.iter().chain(&direction.intercepts))
            .map(|(g, d)| g * d)
            .sum();
        if slope >= 0.0 {
            break;
        }

        // Backtracking: halve the step until the objective falls enough.
        let mut step = 1.0;
        let accepted = loop {
            let candidate = model.moved(&direction, step);
            let candidate_evaluation = evaluate(loss, gram, labels, lambda, &candidate);
            if candidate_evaluation.value <= evaluation.value + ARMIJO_FRACTION * step * slope {
                break Some((candidate, candidate_evaluation));
            }
            step /= 2.0;
            if step < MIN_STEP {
                break None;
            }
        };
        // No acceptable step means the objective is at its minimum to rounding precision.
        let Some((next_model, next_evaluation)) = accepted else {
            break;
        };
        model = next_model;
        evaluation = next_evaluation;
    }
    model
}

/// Solves the Newton system of [`fit_kernel_model`]; `None` when it is numerically singular.
fn newton_direction(
    loss: Loss,
    gram: &[f64],
    lambda: f64,
    residual: &KernelModel,
    evaluation: &Evaluation,
) -> Option<KernelModel> {
    let classes = residual.intercepts.len();
    let n = residual.coefficients.len() / classes;
    let size = (n + 1) * classes;
    let intercept_column = |c: usize| n * classes + c;
    let hessian =
        |i: usize, c: usize, d: usize| evaluation.sample_hessians[(i * classes + c) * classes + d];

    // Row (i, c): lambda dA[i, c] + sum_d H_i[c, d] (sum_j K[i, j] dA[j, d] + db[d]).
    // Row (b, c): sum_i sum_d H_i[c, d] (sum_j K[i, j] dA[j, d] + db[d]).
    let mut matrix = vec![0.0; size * size];
    let mut rhs = vec![0.0; size];
    for i in 0..n {
        for c in 0..classes {
            let row = i * classes + c;
            matrix[row * size + row] += lambda;
            for d in 0..classes {
                let h = hessian(i, c, d);
                if h == 0.0 {
                    continue;
                }
                for j in 0..n {
                    let value = h * gram[i * n + j];
                    matrix[row * size + j * classes + d] += value;
                    matrix[intercept_column(c) * size + j * classes + d] += value;
                }
                matrix[row * size + intercept_column(d)] += h;
                matrix[intercept_column(c) * size + intercept_column(d)] += h;
            }
            rhs[row] = -residual.coefficients[row];
        }
    }
    for c in 0..classes {
        rhs[intercept_column(c)] = -residual.intercepts[c];
    }
    if loss == Loss::Multinomial {
        let last = intercept_column(classes - 1);
        matrix[last * size..(last + 1) * size].fill(0.0);
        for c in 0..classes {
            matrix[last * size + intercept_column(c)] = 1.0;
        }
        rhs[last] = 0.0;
    }

    let solution = solve_dense(matrix, rhs)?;
    Some(KernelModel {
        coefficients: solution[..n * classes].to_vec(),
        intercepts: solution[n * classes..].to_vec(),
    })
}

/// Solves the square system `matrix x = rhs` (row-major) by Gaussian elimination with partial
/// pivoting. Returns `None` when a pivot is below `1e-14` times the largest entry of the matrix.
fn solve_dense(mut matrix: Vec<f64>, mut rhs: Vec<f64>) -> Option<Vec<f64>> {
    let size = rhs.len();
    let scale = matrix
        .iter()
        .fold(0.0f64, |largest, value| largest.max(value.abs()));
    if scale == 0.0 {
        return None;
    }
    for column in 0..size {
        let pivot_row = (column..size)
            .max_by(|&a, &b| {
                let a = matrix[a * size + column].abs();
                let b = matrix[b * size + column].abs();
                a.total_cmp(&b)
            })
            .expect("the range is not empty");
        let pivot = matrix[pivot_row * size + column];
        if !(pivot.abs() > 1e-14 * scale) {
            return None;
        }
        if pivot_row != column {
            for k in 0..size {
                matrix.swap(column * size + k, pivot_row * size + k);
            }
            rhs.swap(column, pivot_row);
        }
        for row in column + 1..size {
            let factor = matrix[row * size + column] / pivot;
            if factor == 0.0 {
                continue;
            }
            for k in column..size {
                matrix[row * size + k] -= factor * matrix[column * size + k];
            }
            rhs[row] -= factor * rhs[column];
        }
    }
    let mut solution = vec![0.0; size];
    for row in (0..size).rev() {
        let known: f64 = (row + 1..size)
            .map(|k| matrix[row * size + k] * solution[k])
            .sum();
        solution[row] = (rhs[row] - known) / matrix[row * size + row];
    }
    solution.iter().all(|x| x.is_finite()).then_some(solution)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a fixed pseudo-random sequence in [-1, 1), so that these tests need no shared RNG.
    fn noise(count: usize, salt: u64) -> Vec<f32> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Builds `per_class` points of each of `n_way` classes: a class direction along axis `c`
    /// plus `spread` times noise, in `dim` dimensions. Returns the points and labels.
    fn clusters(
        n_way: usize,
        per_class: usize,
        dim: usize,
        spread: f32,
        salt: u64,
    ) -> (Vec<f32>, Vec<usize>) {
        let noise = noise(n_way * per_class * dim, salt);
        let mut points = Vec::new();
        let mut labels = Vec::new();
        for c in 0..n_way {
            for k in 0..per_class {
                let offset = (c * per_class + k) * dim;
                for d in 0..dim {
                    let centre = if d == c { 1.0 } else { 0.0 };
                    points.push(centre + spread * noise[offset + d]);
                }
                labels.push(c);
            }
        }
        (points, labels)
    }

    fn predictions(scores: &[f32], n_way: usize) -> Vec<usize> {
        scores
            .chunks(n_way)
            .map(|row| crate::model::argmax(row))
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for kind in EmbeddingClassifier::ALL {
            let text = kind.to_string();
            assert_eq!(text.parse::<EmbeddingClassifier>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<EmbeddingClassifier>(&json).unwrap(),
                kind
            );
        }
        let error = "svm".parse::<EmbeddingClassifier>().unwrap_err();
        assert!(error.contains("nn, logistic or softmax"), "{error}");
    }

    #[test]
    fn separable_clusters_are_classified() {
        let (n_way, dim) = (5, 40);
        for per_class in [1, 5] {
            let (support, labels) = clusters(n_way, per_class, dim, 0.1, 1);
            let (queries, query_labels) = clusters(n_way, 10, dim, 0.1, 2);
            for kind in EmbeddingClassifier::ALL {
                let scores = classify(kind, &support, &labels, &queries, dim, n_way);
                assert_eq!(scores.len(), query_labels.len() * n_way);
                assert!(scores.iter().all(|s| s.is_finite()), "{kind}: {scores:?}");
                assert_eq!(
                    predictions(&scores, n_way),
                    query_labels,
                    "{kind} with {per_class} shots"
                );
            }
        }
    }

    #[test]
    fn nearest_neighbour_scores_are_distances() {
        // Two classes with two shots each in 2-d. The embeddings are already unit length.
        let support = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0];
        let labels = [0, 0, 1, 1];
        let angle = 0.3f32;
        let query = [angle.cos(), -angle.sin()];
        let scores = classify(
            EmbeddingClassifier::NearestNeighbour,
            &support,
            &labels,
            &query,
            2,
            2,
        );
        // Class 0's nearest point is (1, 0), and class 1's is (0, -1).
        let to_first = ((angle.cos() - 1.0).powi(2) + angle.sin().powi(2)).sqrt();
        let to_fourth = (angle.cos().powi(2) + (1.0 - angle.sin()).powi(2)).sqrt();
        assert!((scores[0] + to_first).abs() < 1e-6, "{scores:?}");
        assert!((scores[1] + to_fourth).abs() < 1e-6, "{scores:?}");
    }

    #[test]
    fn nearest_neighbour_ignores_scale() {
        // In raw distance the query is nearer class 0's long vector, but in angle it is nearer
        // class 1's short one.
        let support = [10.0, 0.0, 0.1, 0.1];
        let scores = classify(
            EmbeddingClassifier::NearestNeighbour,
            &support,
            &[0, 1],
            &[8.0, 7.0],
            2,
            2,
        );
        assert_eq!(predictions(&scores, 2), vec![1]);
    }

    #[test]
    fn loss_gradients_match_finite_differences() {
        for loss in [Loss::OneVsRest, Loss::Multinomial] {
            let f = [0.3, -1.2, 2.0, 0.1];
            let label = 2;
            let mut gradient = [0.0; 4];
            let mut hessian = [0.0; 16];
            loss.evaluate(&f, label, &mut gradient, &mut hessian);
            let h = 1e-6;
            for c in 0..4 {
                let mut plus = f;
                let mut minus = f;
                plus[c] += h;
                minus[c] -= h;
                let mut g_plus = [0.0; 4];
                let mut g_minus = [0.0; 4];
                let mut scratch = [0.0; 16];
                let l_plus = loss.evaluate(&plus, label, &mut g_plus, &mut scratch);
                let l_minus = loss.evaluate(&minus, label, &mut g_minus, &mut scratch);
                let numeric = (l_plus - l_minus) / (2.0 * h);
                assert!(
                    (numeric - gradient[c]).abs() < 1e-7,
                    "{loss:?} gradient {c}"
                );
                for d in 0..4 {
                    let numeric = (g_plus[d] - g_minus[d]) / (2.0 * h);
                    assert!(
                        (numeric - hessian[c * 4 + d]).abs() < 1e-7,
                        "{loss:?} Hessian {c} {d}"
                    );
                }
            }
        }
    }

    #[test]
    fn objective_gradient_matches_finite_differences() {
        let (dim, n_way) = (6, 3);
        let (support, labels) = clusters(n_way, 2, dim, 0.5, 3);
        let rows = l2_normalised_rows(&support, dim);
        let gram = inner_products(&rows, &rows, dim);
        let coefficients: Vec<f64> = noise(6 * n_way, 4).iter().map(|&x| x as f64).collect();
        let model = KernelModel {
            coefficients,
            intercepts: vec![0.2, -0.4, 0.1],
        };
        for loss in [Loss::OneVsRest, Loss::Multinomial] {
            let evaluation = evaluate(loss, &gram, &labels, 0.7, &model);
            let gradient = objective_gradient(&gram, 0.7, &model, &evaluation);
            let analytic: Vec<f64> = gradient
                .coefficients
                .iter()
                .chain(&gradient.intercepts)
                .copied()
                .collect();
            let h = 1e-6;
            for (index, expected) in analytic.iter().enumerate() {
                let mut direction = KernelModel::zeros(6, n_way);
                if index < 6 * n_way {
                    direction.coefficients[index] = 1.0;
                } else {
                    direction.intercepts[index - 6 * n_way] = 1.0;
                }
                let plus = evaluate(loss, &gram, &labels, 0.7, &model.moved(&direction, h));
                let minus = evaluate(loss, &gram, &labels, 0.7, &model.moved(&direction, -h));
                let numeric = (plus.value - minus.value) / (2.0 * h);
                assert!(
                    (numeric - expected).abs() < 1e-6,
                    "{loss:?} parameter {index}: numeric {numeric}, analytic {expected}"
                );
            }
        }
    }

    /// The kernel-form optimum must satisfy the primal optimality conditions in embedding space:
    /// `X^T G + lambda W = 0` and `sum_i G_i = 0` with `W = X^T A`.
    #[test]
    fn fit_reaches_primal_optimum() {
        let (dim, n_way) = (50, 5);
        for per_class in [1, 3] {
            let (support, labels) = clusters(n_way, per_class, dim, 0.8, 5);
            let rows = l2_normalised_rows(&support, dim);
            let gram = inner_products(&rows, &rows, dim);
            for loss in [Loss::OneVsRest, Loss::Multinomial] {
                let model = fit_kernel_model(loss, &gram, &labels, n_way, 1.0);
                let initial = evaluate(
                    loss,
                    &gram,
                    &labels,
                    1.0,
                    &KernelModel::zeros(labels.len(), n_way),
                );
                let fitted = evaluate(loss, &gram, &labels, 1.0, &model);
                assert!(
                    fitted.value < initial.value,
                    "{loss:?}: {} vs {}",
                    fitted.value,
                    initial.value
                );

                let n = labels.len();
                for c in 0..n_way {
                    for d in 0..dim {
                        let primal_gradient: f64 = (0..n)
                            .map(|i| {
                                let x = rows[i * dim + d];
                                let g = fitted.sample_gradients[i * n_way + c];
                                let a = model.coefficients[i * n_way + c];
                                x * (g + a)
                            })
                            .sum();
                        assert!(
                            primal_gradient.abs() < 1e-8,
                            "{loss:?} {per_class} shots: weight ({c}, {d}) gradient {primal_gradient}"
                        );
                    }
                    let intercept_gradient: f64 =
                        (0..n).map(|i| fitted.sample_gradients[i * n_way + c]).sum();
                    assert!(intercept_gradient.abs() < 1e-8, "{loss:?}: intercept {c}");
                }
            }
        }
    }

    #[test]
    fn duplicate_support_points_are_handled() {
        // Identical rows make the Gram matrix singular, and the fit must still be finite and right.
        let support = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let labels = [0, 0, 1, 1];
        let queries = [0.9, 0.1, 0.2, 0.8];
        for kind in EmbeddingClassifier::ALL {
            let scores = classify(kind, &support, &labels, &queries, 2, 2);
            assert!(scores.iter().all(|s| s.is_finite()), "{kind}: {scores:?}");
            assert_eq!(predictions(&scores, 2), vec![0, 1], "{kind}");
        }
    }

    #[test]
    fn one_shot_1600_dims_is_fast() {
        let (support, labels) = clusters(5, 1, 1600, 1.0, 6);
        let (queries, _) = clusters(5, 16, 1600, 1.0, 7);
        for kind in EmbeddingClassifier::ALL {
            let started = std::time::Instant::now();
            let scores = classify(kind, &support, &labels, &queries, 1600, 5);
            let elapsed = started.elapsed();
            assert_eq!(scores.len(), 80 * 5);
            // The limit is generous for debug builds and busy machines.
            assert!(elapsed.as_millis() < 200, "{kind} took {elapsed:?}");
        }
    }

    #[test]
    #[should_panic(expected = "class 1 of 3 has no support embedding")]
    fn class_without_support_panics() {
        classify(
            EmbeddingClassifier::SoftmaxRegression,
            &[1.0, 0.0],
            &[0, 2],
            &[],
            1,
            3,
        );
    }

    #[test]
    #[should_panic(expected = "non-finite")]
    fn nan_embedding_panics() {
        classify(
            EmbeddingClassifier::NearestNeighbour,
            &[1.0, f32::NAN],
            &[0, 1],
            &[1.0],
            1,
            2,
        );
    }
}
