//! Loading the generator and the perceptual network from the PyTorch checkpoints users have:
//! BigGAN-PyTorch's `G_ema.pth` (or `G.pth`) and torchvision's VGG16 (`vgg16-397923af.pth`).
//!
//! Both files are state dicts saved with `torch.save`. They are read through burn-store's
//! PyTorch reader, with the module paths of BigGAN-PyTorch and torchvision mapped onto this
//! crate's modules. A missing tensor, a tensor of the wrong shape, or a tensor the module has
//! no place for is an error that names it. There are three exceptions. `.sv0` entries
//! (BigGAN-PyTorch's last singular-value estimate, which this crate recomputes) are ignored, and
//! so are VGG16's layers after `relu4_2` and its classifier. The per-channel scale and shift of
//! the generator are not in checkpoints and keep their identity values.

use crate::generator::{BigGan, BigGanConfig, BigGanConfigError, Vgg16Config, Vgg16Features};
use burn::prelude::*;
use burn::store::{ApplyError, ApplyResult, ModuleSnapshot, PytorchStore};
use std::path::{Path, PathBuf};

/// A failed checkpoint import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("checkpoint {path} not found")]
    NotFound { path: PathBuf },
    #[error("cannot read checkpoint {path} as a {format}: {reason}")]
    Unreadable {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Config(#[from] BigGanConfigError),
    #[error(
        "checkpoint {path} does not match the {model} configuration ({config}):\n{problems}\nCheck that the file is the {model} checkpoint and that the configuration is the one it was trained with."
    )]
    Mismatch {
        path: PathBuf,
        model: &'static str,
        config: String,
        problems: String,
    },
}

/// Loads a BigGAN-PyTorch generator checkpoint into a generator of configuration `config`.
///
/// # Errors
/// A missing or unreadable file, an invalid configuration, or tensors that do not match it.
pub fn load_biggan(
    path: &Path,
    config: &BigGanConfig,
    device: &Device,
) -> Result<BigGan, ImportError> {
    config.validate()?;
    check_exists(path)?;
    let mut model = config.init(device);
    let mut store = PytorchStore::from_file(path)
        .map_indices_contiguous(false)
        .allow_partial(true)
        .validate(false)
        .with_key_remapping(r"^shared\.weight$", "shared")
        .with_key_remapping(r"^blocks\.(\d+)\.0\.", "blocks.$1.block.")
        .with_key_remapping(r"^blocks\.(\d+)\.1\.", "blocks.$1.attention.")
        .with_key_remapping(r"^output_layer\.0\.", "output_layer.bn.")
        .with_key_remapping(r"^output_layer\.2\.", "output_layer.conv.");
    let result = model
        .load_from(&mut store)
        .map_err(|e| unreadable(path, PYTORCH_FORMAT, e))?;
    let expected_missing = |name: &str| name == "linear_scale" || name == "linear_shift";
    let ignored_unused = |name: &str| name.ends_with(".sv0");
    check_result(
        path,
        "BigGAN generator",
        format!("{config:?}"),
        &result,
        expected_missing,
        ignored_unused,
        str::to_string,
    )?;
    Ok(model)
}

/// Loads torchvision's VGG16 checkpoint (or any state dict with its `features.N` keys) into
/// the perceptual network.
///
/// # Errors
/// A missing or unreadable file, or tensors that do not match VGG16 up to `relu4_2`.
pub fn load_vgg16(
    path: &Path,
    config: &Vgg16Config,
    device: &Device,
) -> Result<Vgg16Features, ImportError> {
    check_exists(path)?;
    let mut model = config.init(device);
    let mut store = PytorchStore::from_file(path)
        .map_indices_contiguous(false)
        .allow_partial(true)
        .validate(false);
    // torchvision numbers ReLU and pooling layers too; map each convolution index to its
    // position among the convolutions. Ascending order keeps one rule from feeding another.
    for i in 0..model.features.len() {
        let from = format!(r"^features\.{}\.", Vgg16Features::torchvision_index(i));
        store = store.with_key_remapping(from, format!("features.{i}."));
    }
    let result = model
        .load_from(&mut store)
        .map_err(|e| unreadable(path, PYTORCH_FORMAT, e))?;
    // Layers past relu4_2 and the classifier are not used by the perceptual loss.
    let deep_layers = |name: &str| {
        name.starts_with("classifier.")
            || name
                .strip_prefix("features.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|index| index.parse::<usize>().ok())
                .is_some_and(|index| index >= 21)
    };
    check_result(
        path,
        "VGG16",
        format!("{config:?}"),
        &result,
        |_| false,
        deep_layers,
        str::to_string,
    )?;
    Ok(model)
}

/// The file format that `PytorchStore` reads, as error messages name it.
pub(crate) const PYTORCH_FORMAT: &str = "PyTorch state dict";

pub(crate) fn unreadable(
    path: &Path,
    format: &'static str,
    error: impl std::fmt::Display,
) -> ImportError {
    ImportError::Unreadable {
        path: path.to_path_buf(),
        format,
        reason: error.to_string(),
    }
}

pub(crate) fn check_exists(path: &Path) -> Result<(), ImportError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ImportError::NotFound {
            path: path.to_path_buf(),
        })
    }
}

/// Turns missing, unused and mismatched tensors into one error that lists them.
///
/// `expected_missing` receives module paths and `ignored_unused` checkpoint keys after key
/// remapping. `checkpoint_key` turns either into the key the user sees in the checkpoint, so
/// that the error names tensors as the file does.
pub(crate) fn check_result(
    path: &Path,
    model: &'static str,
    config: String,
    result: &ApplyResult,
    expected_missing: impl Fn(&str) -> bool,
    ignored_unused: impl Fn(&str) -> bool,
    checkpoint_key: impl Fn(&str) -> String,
) -> Result<(), ImportError> {
    let mut problems = Vec::new();
    for error in &result.errors {
        let problem = match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "  wrong shape for {}: the model expects {:?}, the checkpoint has {:?}",
                checkpoint_key(path),
                expected.as_slice(),
                found.as_slice()
            ),
            other => format!("  {other}"),
        };
        problems.push(problem);
    }
    for (name, _) in result
        .missing
        .iter()
        .filter(|(name, _)| !expected_missing(name))
    {
        problems.push(format!("  missing tensor: {}", checkpoint_key(name)));
    }
    for name in result.unused.iter().filter(|name| !ignored_unused(name)) {
        problems.push(format!(
            "  tensor with no place in the model: {}",
            checkpoint_key(name)
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 20;
    let total = problems.len();
    problems.truncate(SHOWN);
    if total > SHOWN {
        problems.push(format!("  ... and {} more", total - SHOWN));
    }
    Err(ImportError::Mismatch {
        path: path.to_path_buf(),
        model,
        config,
        problems: problems.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::pth_writer::write_state_dict;
    use std::collections::BTreeMap;

    /// Returns the configuration of `native-cli/reference/biggan_reference.py`.
    fn small_config() -> BigGanConfig {
        BigGanConfig::new()
            .with_channels(16)
            .with_resolution(64)
            .with_dim_z(100)
            .with_shared_dim(16)
            .with_n_classes(4)
    }

    /// BigGAN-PyTorch's state-dict keys and shapes for `small_config`, written from its module
    /// layout (`blocks.i.0` residual blocks, `blocks.i.1` attention, `output_layer.0` BatchNorm
    /// and `output_layer.2` convolution).
    fn pytorch_keys() -> BTreeMap<String, Vec<usize>> {
        let (ch, chunk, condition) = (16, 20, 16 + 20);
        let mut keys = BTreeMap::new();
        keys.insert("shared.weight".to_string(), vec![4, 16]);
        let mut sn = |prefix: &str, shape: Vec<usize>, bias: bool| {
            keys.insert(format!("{prefix}.u0"), vec![1, shape[0]]);
            keys.insert(format!("{prefix}.sv0"), vec![1]);
            if bias {
                keys.insert(format!("{prefix}.bias"), vec![shape[0]]);
            }
            keys.insert(format!("{prefix}.weight"), shape);
        };
        sn("linear", vec![16 * ch * 16, chunk], true);

        // Residual blocks, with attention after the last one (64x64).
        let mut plain = Vec::new();
        for (i, (a, b)) in [(16, 16), (16, 8), (8, 4), (4, 2)].into_iter().enumerate() {
            let (a, b) = (a * ch, b * ch);
            let p = format!("blocks.{i}.0");
            for (bn, channels) in [("bn1", a), ("bn2", b)] {
                sn(&format!("{p}.{bn}.gain"), vec![channels, condition], false);
                sn(&format!("{p}.{bn}.bias"), vec![channels, condition], false);
                plain.push((format!("{p}.{bn}.stored_mean"), vec![channels]));
                plain.push((format!("{p}.{bn}.stored_var"), vec![channels]));
            }
            sn(&format!("{p}.conv1"), vec![b, a, 3, 3], true);
            sn(&format!("{p}.conv2"), vec![b, b, 3, 3], true);
            sn(&format!("{p}.conv_sc"), vec![b, a, 1, 1], true);
            if i == 3 {
                let q = "blocks.3.1";
                sn(&format!("{q}.theta"), vec![b / 8, b, 1, 1], false);
                sn(&format!("{q}.phi"), vec![b / 8, b, 1, 1], false);
                sn(&format!("{q}.g"), vec![b / 2, b, 1, 1], false);
                sn(&format!("{q}.o"), vec![b, b / 2, 1, 1], false);
                plain.push((format!("{q}.gamma"), vec![1]));
            }
        }

        let last = 2 * ch;
        sn("output_layer.2", vec![3, last, 3, 3], true);
        for name in ["gain", "bias", "stored_mean", "stored_var"] {
            plain.push((format!("output_layer.0.{name}"), vec![last]));
        }
        keys.extend(plain);
        keys
    }

    /// Returns the element values of the reference script; `t` is the key's position in
    /// sorted order.
    fn formula(name: &str, t: usize, count: usize) -> Vec<f32> {
        (0..count)
            .map(|i| {
                let phase = 0.7 * (i + 1) as f64 + 0.3 * t as f64;
                if name.ends_with("gamma") {
                    0.5
                } else if name.ends_with("stored_var") {
                    (1.0 + 0.5 * phase.sin().abs()) as f32
                } else {
                    (0.1 * phase.sin()) as f32
                }
            })
            .collect()
    }

    fn write_checkpoint(path: &Path, keys: &BTreeMap<String, Vec<usize>>) {
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = keys
            .iter()
            .enumerate()
            .map(|(t, (name, shape))| {
                let values = formula(name, t, shape.iter().product());
                (name.clone(), shape.clone(), values)
            })
            .collect();
        write_state_dict(path, &tensors);
    }

    #[test]
    fn import_matches_pytorch_reference() {
        let _rng = crate::test_support::lock_rng();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("G_ema.pth");
        write_checkpoint(&path, &pytorch_keys());
        let device = Device::flex();
        let model = load_biggan(&path, &small_config(), &device).unwrap();

        let z: Vec<f32> = (0..2)
            .flat_map(|b| (0..100).map(move |j| (0.5 * j as f64 + b as f64).sin() as f32))
            .collect();
        let z = Tensor::<2>::from_data(TensorData::new(z, [2, 100]), &device);
        let images = model.forward(z, model.class_vectors(&[1, 3]));
        assert_eq!(images.dims(), [2, 3, 64, 64]);
        let values = images.into_data().try_to_vec::<f32>().unwrap();

        // Printed by `python3 native-cli/reference/biggan_reference.py` (PyTorch 2.15).
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let abs_sum: f64 = values.iter().map(|&v| v.abs() as f64).sum();
        assert!((sum - -899.0816438039183).abs() < 0.1, "sum {sum}");
        assert!(
            (abs_sum - 1325.42463737441).abs() < 0.1,
            "absolute sum {abs_sum}"
        );
        let first = [
            0.11891139, 0.16266961, 0.16267179, 0.1626828, 0.16268438, 0.162686,
        ];
        let last = [
            -0.00980343,
            -0.00980246,
            -0.00980358,
            -0.00984965,
            -0.01007208,
            -0.06444822,
        ];
        let tail = &values[values.len() - 6..];
        for (i, (a, e)) in values[..6]
            .iter()
            .zip(first)
            .chain(tail.iter().zip(last))
            .enumerate()
        {
            assert!((a - e).abs() < 1e-4, "value {i}: {a}, PyTorch gives {e}");
        }
    }

    #[test]
    fn mismatched_checkpoint_names_the_tensors() {
        let _rng = crate::test_support::lock_rng();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("G_ema.pth");
        let mut keys = pytorch_keys();
        keys.remove("blocks.1.0.conv1.weight");
        keys.insert("blocks.0.0.conv2.bias".into(), vec![7]);
        keys.insert("blocks.9.0.conv1.weight".into(), vec![2, 2, 3, 3]);
        write_checkpoint(&path, &keys);

        let error = load_biggan(&path, &small_config(), &Device::flex())
            .err()
            .expect("a mismatched checkpoint must be rejected")
            .to_string();
        assert!(error.contains("blocks.1.block.conv1.weight"), "{error}");
        assert!(error.contains("blocks.0.block.conv2.bias"), "{error}");
        assert!(error.contains("blocks.9.block.conv1.weight"), "{error}");
        assert!(!error.contains("sv0"), "{error}");
    }

    #[test]
    fn missing_checkpoint_is_named() {
        let _rng = crate::test_support::lock_rng();
        let error = load_biggan(
            Path::new("/nonexistent/G_ema.pth"),
            &small_config(),
            &Device::flex(),
        )
        .err()
        .unwrap()
        .to_string();
        assert_eq!(error, "checkpoint /nonexistent/G_ema.pth not found");
    }

    #[test]
    fn vgg16_loads_torchvision_keys() {
        let _rng = crate::test_support::lock_rng();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgg16.pth");
        // torchvision's `vgg16().features` convolution indices and their widths, divided by 16.
        let convolutions = [
            (0, 4, 3),
            (2, 4, 4),
            (5, 8, 4),
            (7, 8, 8),
            (10, 16, 8),
            (12, 16, 16),
            (14, 16, 16),
            (17, 32, 16),
            (19, 32, 32),
            (21, 32, 32),
        ];
        let mut tensors = Vec::new();
        for (index, outputs, inputs) in convolutions {
            let shape = vec![outputs, inputs, 3, 3];
            let count = shape.iter().product();
            let values = (0..count).map(|i| (index * 1000 + i) as f32).collect();
            tensors.push((format!("features.{index}.weight"), shape, values));
            tensors.push((
                format!("features.{index}.bias"),
                vec![outputs],
                vec![index as f32; outputs],
            ));
        }
        tensors.push(("classifier.0.weight".into(), vec![2, 3], vec![0.0; 6]));
        write_state_dict(&path, &tensors);

        let config = Vgg16Config::new().with_width_divisor(16);
        let model = load_vgg16(&path, &config, &Device::flex()).unwrap();
        for (i, conv) in model.features.iter().enumerate() {
            let index = Vgg16Features::torchvision_index(i);
            let bias = conv.bias.val().into_data().try_to_vec::<f32>().unwrap();
            assert!(
                bias.iter().all(|&b| b == index as f32),
                "features.{index} went to {i}"
            );
            let weight = conv.weight.val().into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(
                weight[1],
                (index * 1000 + 1) as f32,
                "features.{index} weight"
            );
        }
    }
}
