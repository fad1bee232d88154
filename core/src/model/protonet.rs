//! The ProtoNet head: a class prototype is the plain mean of its support embeddings, logits are
//! minus the squared Euclidean distance to each prototype (no temperature, no normalisation), and
//! the loss is the cross-entropy of the queries.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Averages support embeddings into one prototype per class.
///
/// # Shapes
/// - `support`: `[n_way * n_shot, dim]`, class-major (all shots of class 0 first)
/// - output: `[n_way, dim]`
pub fn prototypes(support: Tensor<2>, n_way: usize) -> Tensor<2> {
    let [count, dim] = support.dims();
    assert!(
        n_way > 0 && count % n_way == 0,
        "{count} support embeddings cannot be split evenly over {n_way} classes"
    );
    support
        .reshape([n_way, count / n_way, dim])
        .mean_dim(1)
        .reshape([n_way, dim])
}

/// Computes minus the squared Euclidean distance of every query to every prototype.
///
/// # Shapes
/// - `queries`: `[n_query, dim]`
/// - `prototypes`: `[n_way, dim]`
/// - output: `[n_query, n_way]`
pub fn query_logits(queries: Tensor<2>, prototypes: Tensor<2>) -> Tensor<2> {
    let [n_query, dim] = queries.dims();
    let [n_way, _] = prototypes.dims();
    let difference = queries.reshape([n_query, 1, dim]) - prototypes.reshape([1, n_way, dim]);
    difference
        .square()
        .sum_dim(2)
        .reshape([n_query, n_way])
        .neg()
}

/// Splits an episode's embeddings into support (first `n_support` rows, class-major) and
/// queries (the rest) and returns the query logits against the class prototypes.
///
/// # Shapes
/// - `embeddings`: `[n_support + n_query, dim]`
/// - output: `[n_query, n_way]`
pub fn protonet_logits(embeddings: Tensor<2>, n_support: usize, n_way: usize) -> Tensor<2> {
    let [count, _] = embeddings.dims();
    let support = embeddings.clone().narrow(0, 0, n_support);
    let queries = embeddings.narrow(0, n_support, count - n_support);
    query_logits(queries, prototypes(support, n_way))
}

/// Computes the mean cross-entropy of `logits` against integer `labels`.
///
/// # Shapes
/// - `logits`: `[n_query, n_way]`
/// - `labels`: `[n_query]`
/// - output: `[1]`
pub fn protonet_loss(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [n_query, _] = logits.dims();
    let log_probabilities = log_softmax(logits, 1);
    let picked = log_probabilities.gather(1, labels.reshape([n_query, 1]));
    picked.mean().neg()
}

/// Returns the fraction of rows of `logits` whose largest entry is at `labels`.
pub fn accuracy(logits: &[f32], labels: &[i64], n_way: usize) -> f64 {
    let correct = logits
        .chunks(n_way)
        .zip(labels)
        .filter(|(row, label)| argmax(row) == **label as usize)
        .count();
    correct as f64 / labels.len().max(1) as f64
}

/// Returns the index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &value) in values.iter().enumerate() {
        if value > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototypes_average_shots() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let support =
            Tensor::<2>::from_floats([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [0.0, 6.0]], &device);
        let result = prototypes(support, 2)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(result, vec![2.0, 1.0, 0.0, 5.0]);
    }

    #[test]
    fn logits_are_negative_squared_distances() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let queries = Tensor::<2>::from_floats([[0.0, 0.0], [1.0, 1.0]], &device);
        let protos = Tensor::<2>::from_floats([[3.0, 4.0], [1.0, 0.0]], &device);
        let result = query_logits(queries, protos)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(result, vec![-25.0, -1.0, -13.0, -1.0]);
    }

    #[test]
    fn loss_matches_hand_computation() {
        let _rng = crate::test_support::lock_rng();
        let device = Device::flex();
        let logits = Tensor::<2>::from_floats([[0.0, 0.0], [2.0, 0.0]], &device);
        let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
        let loss = protonet_loss(logits, labels).into_scalar::<f32>();
        // Row 1: -ln(0.5); row 2: -ln(1 / (1 + e^2)).
        let expected = (-(0.5f64.ln()) + (1.0 + 2f64.exp()).ln()) / 2.0;
        assert!(
            (loss as f64 - expected).abs() < 1e-5,
            "{loss} vs {expected}"
        );
    }

    #[test]
    fn accuracy_counts_argmax_hits() {
        let _rng = crate::test_support::lock_rng();
        let logits = [0.1, 0.9, 0.8, 0.2, 0.3, 0.7];
        assert!((accuracy(&logits, &[1, 0, 0], 2) - 2.0 / 3.0).abs() < 1e-12);
    }
}
