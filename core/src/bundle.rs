//! Model bundles: a trained backbone with the prototypes of a set of species, in files that a
//! browser can fetch and that `metairnet classify --bundle` reads too.
//!
//! A bundle is a folder of three files:
//! - [`MANIFEST_FILE`]: a [`BundleManifest`] in JSON (network, input size, species, provenance);
//! - [`WEIGHTS_FILE`]: the backbone's weights in Burn's burnpack format;
//! - [`PROTOTYPES_FILE`]: one prototype per species, `embedding_dim` little-endian `f32` values
//!   each, in the manifest's species order.
//!
//! Reading a bundle takes bytes, not paths, so the same code serves the browser, where the files
//! arrive over HTTP, and the command line.

use crate::data::ImageSize;
use crate::hash::fnv64_hex;
use crate::model::{Backbone, BackboneKind};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

/// The manifest's file name inside a bundle folder.
pub const MANIFEST_FILE: &str = "model.json";
/// The weights' file name inside a bundle folder.
pub const WEIGHTS_FILE: &str = "backbone.bpk";
/// The prototypes' file name inside a bundle folder.
pub const PROTOTYPES_FILE: &str = "prototypes.f32";
/// The manifest layout this build writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;

/// The contents and provenance of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    /// Layout version, [`BUNDLE_FORMAT`].
    pub format: u32,
    pub backbone: BackboneKind,
    pub image_size: ImageSize,
    /// Length of one embedding and of one prototype.
    pub embedding_dim: usize,
    /// FNV-1a hash of [`WEIGHTS_FILE`], so that a stale or damaged copy is rejected.
    pub weights_fnv64: String,
    /// FNV-1a hash of [`PROTOTYPES_FILE`].
    pub prototypes_fnv64: String,
    /// The built-in species, in the order of their prototypes.
    pub species: Vec<BundleSpecies>,
    /// The run, commits and data that produced the bundle.
    pub source: BundleSource,
    /// The run's test accuracy, when it had been evaluated before the export.
    pub accuracy: Option<BundleAccuracy>,
}

/// One built-in species.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleSpecies {
    /// The dataset folder name, e.g. `017.Cardinal`.
    pub class: String,
    /// The name shown to people, e.g. `Cardinal`.
    pub name: String,
    /// How many photos the prototype averages.
    pub photos: usize,
}

/// Provenance of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleSource {
    /// The run folder the weights come from, as given to the exporter.
    pub run: String,
    /// The checkpoint folder inside that run.
    pub checkpoint: String,
    /// The training seed of the run.
    pub seed: u64,
    /// The git commit that trained the run.
    pub trained_by: String,
    /// The git commit that exported the bundle.
    pub exported_by: String,
    /// The dataset whose photos gave the prototypes, as given to the exporter.
    pub data: String,
    /// The choice of photos that gave each species its prototype.
    pub prototype_photos: String,
}

/// A test accuracy, in percent, as `metairnet eval` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleAccuracy {
    pub accuracy: f64,
    pub ci95: f64,
    pub episodes: usize,
    pub split: String,
    pub n_way: usize,
    pub n_shot: usize,
    pub n_query: usize,
    pub seed: u64,
}

/// Errors while reading a bundle.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BundleError {
    #[error("the manifest is not valid JSON for a model bundle: {0}")]
    Manifest(String),
    #[error(
        "the bundle has format {found} but this build reads format {BUNDLE_FORMAT}; export it again with this version"
    )]
    Format { found: u32 },
    #[error(
        "{file} does not match its manifest (hash {actual}, expected {expected}); copy the bundle's files together"
    )]
    Checksum {
        file: &'static str,
        actual: String,
        expected: String,
    },
    #[error(
        "{PROTOTYPES_FILE} holds {bytes} bytes; {species} species of {dim} values need {expected}"
    )]
    PrototypeSize {
        bytes: usize,
        species: usize,
        dim: usize,
        expected: usize,
    },
    #[error(
        "the manifest's embedding_dim {found} is not the {expected} of a {backbone} at {side}x{side}"
    )]
    EmbeddingDim {
        found: usize,
        expected: usize,
        backbone: BackboneKind,
        side: u32,
    },
    #[error("the weights do not fit a {backbone}: {message}")]
    Weights {
        backbone: BackboneKind,
        message: String,
    },
}

impl BundleManifest {
    /// Parses and checks a manifest.
    ///
    /// # Errors
    /// Invalid JSON, another format version, or an embedding size that the network cannot have.
    pub fn from_json(text: &str) -> Result<BundleManifest, BundleError> {
        let manifest: BundleManifest =
            serde_json::from_str(text).map_err(|e| BundleError::Manifest(e.to_string()))?;
        if manifest.format != BUNDLE_FORMAT {
            return Err(BundleError::Format {
                found: manifest.format,
            });
        }
        let side = manifest.image_size.pixels();
        let expected = manifest.backbone.embedding_dim(side as usize);
        if manifest.embedding_dim != expected {
            return Err(BundleError::EmbeddingDim {
                found: manifest.embedding_dim,
                expected,
                backbone: manifest.backbone,
                side,
            });
        }
        Ok(manifest)
    }

    /// Builds the backbone from the bytes of [`WEIGHTS_FILE`], in evaluation mode.
    ///
    /// # Errors
    /// Bytes that do not match the manifest's hash, or weights of another network.
    pub fn load_backbone(
        &self,
        weights: Vec<u8>,
        device: &Device,
    ) -> Result<Backbone, BundleError> {
        check_hash(WEIGHTS_FILE, &weights, &self.weights_fnv64)?;
        let mut backbone = self.backbone.init(device);
        let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(weights)));
        let result = backbone
            .load_from(&mut store)
            .map_err(|e| BundleError::Weights {
                backbone: self.backbone,
                message: e.to_string(),
            })?;
        if !result.missing.is_empty() || !result.errors.is_empty() {
            let mut problems: Vec<String> = result
                .missing
                .iter()
                .map(|(name, _)| format!("missing {name}"))
                .collect();
            problems.extend(result.errors.iter().map(|e| e.to_string()));
            return Err(BundleError::Weights {
                backbone: self.backbone,
                message: problems.join(", "),
            });
        }
        Ok(backbone.valid())
    }

    /// Reads the bytes of [`PROTOTYPES_FILE`] into `species.len() * embedding_dim` values.
    ///
    /// # Errors
    /// Bytes that do not match the manifest's hash or the species count.
    pub fn read_prototypes(&self, bytes: &[u8]) -> Result<Vec<f32>, BundleError> {
        check_hash(PROTOTYPES_FILE, bytes, &self.prototypes_fnv64)?;
        let expected = self.species.len() * self.embedding_dim * 4;
        if bytes.len() != expected {
            return Err(BundleError::PrototypeSize {
                bytes: bytes.len(),
                species: self.species.len(),
                dim: self.embedding_dim,
                expected,
            });
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// Encodes prototypes as the bytes of [`PROTOTYPES_FILE`].
pub fn prototype_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn check_hash(file: &'static str, bytes: &[u8], expected: &str) -> Result<(), BundleError> {
    let actual = fnv64_hex(bytes);
    if actual != expected {
        return Err(BundleError::Checksum {
            file,
            actual,
            expected: expected.to_string(),
        });
    }
    Ok(())
}

/// Returns the softmax over prototypes of minus the squared Euclidean distance between `query`
/// and each prototype: the ProtoNet class probabilities.
///
/// `prototypes` contains `prototypes.len() / query.len()` rows of `query.len()` values.
///
/// # Panics
/// When `prototypes` is not a whole number of rows.
pub fn prototype_scores(query: &[f32], prototypes: &[f32]) -> Vec<f32> {
    let dim = query.len();
    assert!(
        dim > 0 && prototypes.len().is_multiple_of(dim),
        "prototypes are not rows of {dim} values"
    );
    let logits: Vec<f64> = prototypes
        .chunks_exact(dim)
        .map(|row| {
            -row.iter()
                .zip(query)
                .map(|(p, q)| {
                    let d = (*p - *q) as f64;
                    d * d
                })
                .sum::<f64>()
        })
        .collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / total) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(weights: &[u8], prototypes: &[u8], species: usize) -> BundleManifest {
        BundleManifest {
            format: BUNDLE_FORMAT,
            backbone: BackboneKind::Conv4,
            image_size: ImageSize::S84,
            embedding_dim: 1600,
            weights_fnv64: fnv64_hex(weights),
            prototypes_fnv64: fnv64_hex(prototypes),
            species: (0..species)
                .map(|i| BundleSpecies {
                    class: format!("{i:03}.Bird"),
                    name: "Bird".into(),
                    photos: 1,
                })
                .collect(),
            source: BundleSource {
                run: "run".into(),
                checkpoint: "checkpoints/epoch-0001".into(),
                seed: 0,
                trained_by: "x".into(),
                exported_by: "y".into(),
                data: "data".into(),
                prototype_photos: "all".into(),
            },
            accuracy: None,
        }
    }

    #[test]
    fn scores_are_softmax_of_distances() {
        let query = [1.0f32, 2.0];
        let prototypes = [1.0f32, 2.0, 2.0, 2.0, 1.0, 4.0];
        let scores = prototype_scores(&query, &prototypes);
        // Squared distances 0, 1, 4.
        let z = 1.0 + (-1.0f64).exp() + (-4.0f64).exp();
        let expected = [1.0 / z, (-1.0f64).exp() / z, (-4.0f64).exp() / z];
        for (s, e) in scores.iter().zip(expected) {
            assert!((*s as f64 - e).abs() < 1e-6, "{scores:?}");
        }
        // Large distances do not underflow to NaN.
        let far = prototype_scores(&[0.0], &[1000.0, 1001.0]);
        assert!((far[0] - 1.0).abs() < 1e-6, "{far:?}");
        assert!(far[1] >= 0.0, "{far:?}");
    }

    #[test]
    fn weights_round_trip_through_bytes() {
        let device = Device::flex();
        let backbone = BackboneKind::Conv4.init(&device).valid();
        let mut store = BurnpackStore::from_bytes(None);
        backbone.save_into(&mut store).unwrap();
        let weights = store.get_bytes().unwrap().to_vec();
        let prototypes = prototype_bytes(&vec![0.5; 2 * 1600]);
        let manifest = manifest(&weights, &prototypes, 2);

        let text = serde_json::to_string(&manifest).unwrap();
        let parsed = BundleManifest::from_json(&text).unwrap();
        let loaded = parsed.load_backbone(weights.clone(), &device).unwrap();
        let images = Tensor::<4>::random(
            [2, 3, 84, 84],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        loaded
            .forward(images.clone())
            .into_data()
            .assert_approx_eq::<f32>(&backbone.forward(images).into_data(), Default::default());
        assert_eq!(parsed.read_prototypes(&prototypes).unwrap().len(), 3200);
    }

    #[test]
    fn damaged_bundle_files_are_rejected() {
        let device = Device::flex();
        let backbone = BackboneKind::Conv4.init(&device);
        let mut store = BurnpackStore::from_bytes(None);
        backbone.save_into(&mut store).unwrap();
        let weights = store.get_bytes().unwrap().to_vec();
        let prototypes = prototype_bytes(&vec![0.0; 1600]);
        let good = manifest(&weights, &prototypes, 1);

        let mut cut = weights.clone();
        cut.truncate(cut.len() / 2);
        let error = good.load_backbone(cut, &device).unwrap_err();
        assert!(
            matches!(
                error,
                BundleError::Checksum {
                    file: WEIGHTS_FILE,
                    ..
                }
            ),
            "{error}"
        );

        let mut two = good.clone();
        two.species.push(good.species[0].clone());
        let error = two.read_prototypes(&prototypes).unwrap_err();
        assert!(
            matches!(
                error,
                BundleError::PrototypeSize {
                    expected: 12800,
                    ..
                }
            ),
            "{error}"
        );

        let mut resnet = manifest(&weights, &prototypes, 1);
        resnet.backbone = BackboneKind::Resnet18;
        resnet.embedding_dim = 512;
        let error = resnet.load_backbone(weights, &device).unwrap_err();
        assert!(matches!(error, BundleError::Weights { .. }), "{error}");

        let mut newer = serde_json::to_value(&good).unwrap();
        newer["format"] = 99.into();
        let error = BundleManifest::from_json(&newer.to_string()).unwrap_err();
        assert_eq!(error, BundleError::Format { found: 99 });
        let mut wrong_dim = serde_json::to_value(&good).unwrap();
        wrong_dim["embedding_dim"] = 64.into();
        let error = BundleManifest::from_json(&wrong_dim.to_string()).unwrap_err();
        assert!(error.to_string().contains("1600"), "{error}");
    }
}
