//! Naming the class of photos from a few labelled photos per class, with a trained backbone.

use crate::data::{ImageSize, write_normalized_chw};
use crate::model::{Backbone, query_logits};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use image::RgbImage;

/// Largest number of photos embedded in one forward pass; evaluation-mode BatchNorm makes the
/// result independent of this split.
const BATCH: usize = 64;

/// Embeds cropped photos with `model`, which must be in evaluation mode on a plain device.
///
/// # Shapes
/// - output: `[photos.len(), embedding_dim]`
pub fn embed_photos(
    model: &Backbone,
    photos: &[&RgbImage],
    size: ImageSize,
    device: &Device,
) -> Tensor<2> {
    let side = size.pixels() as usize;
    let per_image = size.num_values();
    let mut parts = Vec::new();
    for chunk in photos.chunks(BATCH) {
        let mut values = vec![0.0f32; chunk.len() * per_image];
        for (slot, photo) in chunk.iter().enumerate() {
            write_normalized_chw(
                photo.as_raw(),
                side,
                false,
                &mut values[slot * per_image..(slot + 1) * per_image],
            );
        }
        let images = Tensor::<4>::from_data(
            TensorData::new(values, [chunk.len(), 3, side, side]),
            device,
        );
        parts.push(model.forward(images));
    }
    Tensor::cat(parts, 0)
}

/// Computes each class's prototype, the mean embedding of its support photos.
///
/// # Shapes
/// - output: `[classes.len(), embedding_dim]`
///
/// # Panics
/// When a class has no photo.
pub fn class_prototypes(
    model: &Backbone,
    classes: &[Vec<RgbImage>],
    size: ImageSize,
    device: &Device,
) -> Tensor<2> {
    let prototypes: Vec<Tensor<2>> = classes
        .iter()
        .map(|photos| {
            assert!(
                !photos.is_empty(),
                "every class needs at least one support photo"
            );
            let refs: Vec<&RgbImage> = photos.iter().collect();
            embed_photos(model, &refs, size, device).mean_dim(0)
        })
        .collect();
    Tensor::cat(prototypes, 0)
}

/// Returns, for each query photo, the softmax over classes of minus the squared distance to each
/// prototype.
pub fn classify_photos(
    model: &Backbone,
    prototypes: Tensor<2>,
    queries: &[RgbImage],
    size: ImageSize,
    device: &Device,
) -> Vec<Vec<f32>> {
    let [n_classes, _] = prototypes.dims();
    let refs: Vec<&RgbImage> = queries.iter().collect();
    let embeddings = embed_photos(model, &refs, size, device);
    let scores = softmax(query_logits(embeddings, prototypes), 1);
    let values = scores
        .into_data()
        .try_to_vec::<f32>()
        .expect("scores are f32");
    values.chunks(n_classes).map(<[f32]>::to_vec).collect()
}
