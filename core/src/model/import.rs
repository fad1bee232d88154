//! Loading torchvision's ImageNet ResNet-18 checkpoint (`resnet18-f37072fd.pth`) into
//! [`ResNet`].
//!
//! torchvision's state-dict keys are this crate's field names with two exceptions. The
//! projection shortcut is a `Sequential` in torchvision, so `downsample.0` is mapped to
//! `downsample.conv` and `downsample.1` to `downsample.bn`. BatchNorm's `weight` and `bias`
//! become `gamma` and `beta` through burn-store's `PyTorchToBurnAdapter`. The classifier
//! (`fc.*`) and BatchNorm's `num_batches_tracked` counters have no place in the backbone and
//! are ignored. Any other missing, unexpected or wrong-shape tensor is an error that names its
//! checkpoint key.
//!
//! A file whose name ends in `.safetensors` is read as SafeTensors with the same keys; any
//! other file is read as a `torch.save` state dict.

use crate::generator::ImportError;
use crate::generator::import::{PYTORCH_FORMAT, check_exists, check_result, unreadable};
use crate::model::{ResNet, ResNetConfig};
use burn::prelude::*;
use burn::store::{
    ApplyResult, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use std::path::Path;

const SAFETENSORS_FORMAT: &str = "SafeTensors file";

/// Key remappings from torchvision's `downsample.N` to this crate's `Downsample` fields.
const DOWNSAMPLE_REMAPPING: [(&str, &str); 2] = [
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.bn."),
];

/// Loads torchvision's ResNet-18 checkpoint, or any state dict with its keys, into a ResNet-18
/// backbone.
///
/// BatchNorm layers use the loaded running statistics on devices without autodiff.
///
/// # Errors
/// A missing or unreadable file, or tensors that do not match ResNet-18.
pub fn load_resnet18(path: &Path, device: &Device) -> Result<ResNet, ImportError> {
    load_resnet(path, &ResNetConfig::new(), device)
}

/// Loads a checkpoint with torchvision's ResNet keys into a ResNet of configuration `config`.
///
/// # Errors
/// A missing or unreadable file, or tensors that do not match the configuration.
pub fn load_resnet(
    path: &Path,
    config: &ResNetConfig,
    device: &Device,
) -> Result<ResNet, ImportError> {
    check_exists(path)?;
    let mut model = config.init(device);
    let result = if is_safetensors(path) {
        load_safetensors(&mut model, path)?
    } else {
        load_pytorch(&mut model, path)?
    };
    let ignored_unused =
        |name: &str| name.starts_with("fc.") || name.ends_with(".num_batches_tracked");
    check_result(
        path,
        "ResNet",
        format!("{config:?}"),
        &result,
        |_| false,
        ignored_unused,
        torchvision_key,
    )?;
    Ok(model)
}

fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("safetensors"))
}

fn load_pytorch(model: &mut ResNet, path: &Path) -> Result<ApplyResult, ImportError> {
    let mut store = PytorchStore::from_file(path)
        .map_indices_contiguous(false)
        .allow_partial(true)
        .validate(false);
    for (from, to) in DOWNSAMPLE_REMAPPING {
        store = store.with_key_remapping(from, to);
    }
    model
        .load_from(&mut store)
        .map_err(|e| unreadable(path, PYTORCH_FORMAT, e))
}

fn load_safetensors(model: &mut ResNet, path: &Path) -> Result<ApplyResult, ImportError> {
    // SafetensorsStore does not rename BatchNorm parameters unless it is given the adapter
    // that PytorchStore always uses.
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .map_indices_contiguous(false)
        .allow_partial(true)
        .validate(false);
    for (from, to) in DOWNSAMPLE_REMAPPING {
        store = store.with_key_remapping(from, to);
    }
    model
        .load_from(&mut store)
        .map_err(|e| unreadable(path, SAFETENSORS_FORMAT, e))
}

/// Returns torchvision's key for a module path or a remapped checkpoint key.
fn torchvision_key(name: &str) -> String {
    let name = name
        .replace(".downsample.conv.", ".downsample.0.")
        .replace(".downsample.bn.", ".downsample.1.");
    // Every `gamma` and `beta` in ResNet belongs to a BatchNorm.
    if let Some(prefix) = name.strip_suffix(".gamma") {
        format!("{prefix}.weight")
    } else if let Some(prefix) = name.strip_suffix(".beta") {
        format!("{prefix}.bias")
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::pth_writer::write_state_dict;
    use burn::store::bridge;
    use std::collections::BTreeMap;

    /// A checkpoint tensor: key, shape and row-major values.
    type Entry = (String, Vec<usize>, Vec<f32>);

    const BN_FIELDS: [&str; 5] = [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ];

    fn batch_norm_keys(prefix: &str, channels: usize) -> Vec<(String, Vec<usize>)> {
        BN_FIELDS
            .iter()
            .map(|field| {
                // torchvision stores `num_batches_tracked` as a 0-d tensor.
                let shape = if *field == "num_batches_tracked" {
                    vec![]
                } else {
                    vec![channels]
                };
                (format!("{prefix}.{field}"), shape)
            })
            .collect()
    }

    /// torchvision's ResNet state-dict keys and shapes for `blocks` basic blocks per stage, in
    /// torchvision's order and with its classifier.
    fn torchvision_keys(blocks: [usize; 4]) -> Vec<(String, Vec<usize>)> {
        let mut keys = vec![("conv1.weight".to_string(), vec![64, 3, 7, 7])];
        keys.extend(batch_norm_keys("bn1", 64));
        let mut in_channels = 64;
        for (stage, (width, count)) in [64, 128, 256, 512].into_iter().zip(blocks).enumerate() {
            for block in 0..count {
                let prefix = format!("layer{}.{block}", stage + 1);
                let conv1 = vec![width, in_channels, 3, 3];
                keys.push((format!("{prefix}.conv1.weight"), conv1));
                keys.extend(batch_norm_keys(&format!("{prefix}.bn1"), width));
                let conv2 = vec![width, width, 3, 3];
                keys.push((format!("{prefix}.conv2.weight"), conv2));
                keys.extend(batch_norm_keys(&format!("{prefix}.bn2"), width));
                if stage > 0 && block == 0 {
                    let projection = vec![width, in_channels, 1, 1];
                    keys.push((format!("{prefix}.downsample.0.weight"), projection));
                    keys.extend(batch_norm_keys(&format!("{prefix}.downsample.1"), width));
                }
                in_channels = width;
            }
        }
        keys.push(("fc.weight".into(), vec![1000, 512]));
        keys.push(("fc.bias".into(), vec![1000]));
        keys
    }

    /// Returns the values of `formula` in `native-cli/reference/resnet_reference.py`: a sine over
    /// the element index, phase-shifted by the byte sum of the key, scaled by tensor role.
    fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
        let count = shape.iter().product();
        let seed: usize = name.bytes().map(usize::from).sum();
        let fan_in: usize = shape.iter().skip(1).product();
        (0..count)
            .map(|i| {
                let s = (0.7 * (i + 1) as f64 + 0.01 * seed as f64).sin();
                let value = if name.ends_with("num_batches_tracked") {
                    7.0
                } else if name.ends_with("running_var") {
                    1.0 + 0.5 * s.abs()
                } else if shape.len() == 1 && name.ends_with("weight") {
                    0.5 + 0.2 * s
                } else if shape.len() == 1 {
                    0.1 * s
                } else {
                    s * (2.0 / fan_in as f64).sqrt()
                };
                value as f32
            })
            .collect()
    }

    fn formula_tensors(keys: Vec<(String, Vec<usize>)>) -> Vec<Entry> {
        keys.into_iter()
            .map(|(name, shape)| {
                let values = formula(&name, &shape);
                (name, shape, values)
            })
            .collect()
    }

    fn small_config() -> ResNetConfig {
        ResNetConfig::new().with_blocks([1, 1, 1, 1])
    }

    /// Writes the small configuration's checkpoint, changed by `edit`, and returns the error
    /// message of loading it.
    fn small_checkpoint_error(edit: impl FnOnce(&mut Vec<Entry>)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resnet.pth");
        let mut tensors = formula_tensors(torchvision_keys([1, 1, 1, 1]));
        edit(&mut tensors);
        write_state_dict(&path, &tensors);
        load_resnet(&path, &small_config(), &Device::flex())
            .err()
            .expect("a mismatched checkpoint must be rejected")
            .to_string()
    }

    /// Returns the float tensors of `model` by module path.
    fn module_tensors(model: &ResNet) -> BTreeMap<String, Vec<f32>> {
        model
            .collect(None, None, false)
            .into_iter()
            .filter_map(|tensor| {
                let values = bridge::to_data(&tensor).ok()?.try_to_vec::<f32>().ok()?;
                Some((tensor.name, values))
            })
            .collect()
    }

    /// Writes `tensors` as a SafeTensors file, with `num_batches_tracked` as int64 as PyTorch
    /// exports it.
    fn write_safetensors(path: &Path, tensors: &[Entry]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, shape, values) in tensors {
            let start = data.len();
            let dtype = if name.ends_with("num_batches_tracked") {
                data.extend(values.iter().flat_map(|&v| (v as i64).to_le_bytes()));
                "I64"
            } else {
                data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                "F32"
            };
            let entry = serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [start, data.len()],
            });
            header.insert(name.clone(), entry);
        }
        let mut header = serde_json::to_vec(&header).unwrap();
        // The SafeTensors writer pads the header with spaces to a multiple of 8 bytes.
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header);
        file.extend(data);
        std::fs::write(path, file).unwrap();
    }

    /// Returns the fixed input of the reference script: `sin(0.37 i)` over the row-major index.
    fn reference_images(device: &Device) -> Tensor<4> {
        let values: Vec<f32> = (0..2 * 3 * 32 * 32)
            .map(|i| (0.37 * i as f64).sin() as f32)
            .collect();
        Tensor::<4>::from_data(TensorData::new(values, [2, 3, 32, 32]), device)
    }

    #[test]
    fn resnet18_weights_land_in_place() {
        let _rng = crate::test_support::lock_rng();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resnet18.pth");
        let tensors = formula_tensors(torchvision_keys([2, 2, 2, 2]));
        write_state_dict(&path, &tensors);
        let model = load_resnet18(&path, &Device::flex()).unwrap();
        let loaded = module_tensors(&model);

        // Spot checks with the module paths written out.
        let places = [
            ("conv1.weight", "conv1.weight", vec![64, 3, 7, 7]),
            ("bn1.gamma", "bn1.weight", vec![64]),
            ("bn1.beta", "bn1.bias", vec![64]),
            (
                "layer1.1.conv2.weight",
                "layer1.1.conv2.weight",
                vec![64, 64, 3, 3],
            ),
            (
                "layer2.0.downsample.conv.weight",
                "layer2.0.downsample.0.weight",
                vec![128, 64, 1, 1],
            ),
            (
                "layer2.0.downsample.bn.gamma",
                "layer2.0.downsample.1.weight",
                vec![128],
            ),
            (
                "layer3.0.downsample.bn.running_mean",
                "layer3.0.downsample.1.running_mean",
                vec![256],
            ),
            (
                "layer4.1.bn2.running_var",
                "layer4.1.bn2.running_var",
                vec![512],
            ),
        ];
        for (module_path, key, shape) in places {
            let values = loaded
                .get(module_path)
                .unwrap_or_else(|| panic!("{module_path} is not in the model"));
            assert_eq!(values, &formula(key, &shape), "{key} -> {module_path}");
        }

        // Every float tensor of the model equals its checkpoint tensor, and the model has one
        // for each checkpoint tensor except the classifier and the batch counters.
        let expected: BTreeMap<&str, &Vec<f32>> = tensors
            .iter()
            .filter(|(name, _, _)| {
                !name.starts_with("fc.") && !name.ends_with("num_batches_tracked")
            })
            .map(|(name, _, values)| (name.as_str(), values))
            .collect();
        assert_eq!(loaded.len(), expected.len());
        for (module_path, values) in &loaded {
            let key = torchvision_key(module_path);
            let expected_values = expected
                .get(key.as_str())
                .unwrap_or_else(|| panic!("{module_path} ({key}) is not in the checkpoint"));
            assert_eq!(values, *expected_values, "{key} -> {module_path}");
        }
    }

    #[test]
    fn resnet18_forward_matches_pytorch() {
        let _rng = crate::test_support::lock_rng();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resnet18.pth");
        write_state_dict(&path, &formula_tensors(torchvision_keys([2, 2, 2, 2])));
        let device = Device::flex();
        let model = load_resnet18(&path, &device).unwrap();

        // A device without autodiff runs BatchNorm with the loaded running statistics, as
        // PyTorch's evaluation mode does.
        let embedding = model.forward(reference_images(&device));
        assert_eq!(embedding.dims(), [2, 512]);
        let values = embedding.into_data().try_to_vec::<f32>().unwrap();

        // Printed by `python3 native-cli/reference/resnet_reference.py` (PyTorch 2.15).
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let square_sum: f64 = values.iter().map(|&v| (v as f64).powi(2)).sum();
        assert!((sum - 8557.089472285472).abs() < 0.1, "sum {sum}");
        assert!(
            (square_sum - 195915.4611493821).abs() < 2.0,
            "square sum {square_sum}"
        );
        let first: [f64; 6] = [
            0.0,
            35.453975677490234,
            0.0,
            8.712919235229492,
            2.8794779777526855,
            1.2246296405792236,
        ];
        let last: [f64; 6] = [
            22.449787139892578,
            0.37534210085868835,
            0.0,
            2.133460521697998,
            21.83660125732422,
            0.0,
        ];
        let tail = &values[values.len() - 6..];
        for (i, (&actual, expected)) in values[..6]
            .iter()
            .zip(first)
            .chain(tail.iter().zip(last))
            .enumerate()
        {
            let tolerance = 1e-4 * (1.0 + expected.abs());
            assert!(
                (actual as f64 - expected).abs() < tolerance,
                "value {i}: {actual}, PyTorch gives {expected}"
            );
        }
    }

    #[test]
    fn safetensors_loads_like_pth() {
        let _rng = crate::test_support::lock_rng();
        let dir = tempfile::tempdir().unwrap();
        let tensors = formula_tensors(torchvision_keys([1, 1, 1, 1]));
        let pth = dir.path().join("resnet.pth");
        let safetensors = dir.path().join("resnet.safetensors");
        write_state_dict(&pth, &tensors);
        write_safetensors(&safetensors, &tensors);

        let device = Device::flex();
        let from_pth = load_resnet(&pth, &small_config(), &device).unwrap();
        let from_safetensors = load_resnet(&safetensors, &small_config(), &device).unwrap();
        let pth_values = module_tensors(&from_pth);
        assert_eq!(
            pth_values["layer2.0.downsample.bn.beta"],
            formula("layer2.0.downsample.1.bias", &[128])
        );
        assert_eq!(module_tensors(&from_safetensors), pth_values);
    }

    #[test]
    fn missing_tensor_is_named() {
        let _rng = crate::test_support::lock_rng();
        let error = small_checkpoint_error(|tensors| {
            tensors.retain(|(name, _, _)| name != "layer1.0.bn1.weight");
        });
        assert!(
            error.contains("missing tensor: layer1.0.bn1.weight"),
            "{error}"
        );
    }

    #[test]
    fn wrong_shape_is_named() {
        let _rng = crate::test_support::lock_rng();
        let error = small_checkpoint_error(|tensors| {
            let entry = tensors
                .iter_mut()
                .find(|(name, _, _)| name == "layer2.0.downsample.0.weight")
                .unwrap();
            entry.1 = vec![128, 64, 3, 3];
            entry.2 = formula(&entry.0, &entry.1);
        });
        assert!(
            error.contains("wrong shape for layer2.0.downsample.0.weight"),
            "{error}"
        );
        assert!(error.contains("[128, 64, 1, 1]"), "{error}");
        assert!(error.contains("[128, 64, 3, 3]"), "{error}");
    }

    #[test]
    fn unexpected_tensor_is_named() {
        let _rng = crate::test_support::lock_rng();
        let error = small_checkpoint_error(|tensors| {
            let shape = vec![512, 512, 3, 3];
            let values = formula("layer4.1.conv1.weight", &shape);
            tensors.push(("layer4.1.conv1.weight".into(), shape, values));
        });
        assert!(
            error.contains("tensor with no place in the model: layer4.1.conv1.weight"),
            "{error}"
        );
        // The classifier and the batch counters are in every torchvision checkpoint.
        assert!(!error.contains("fc."), "{error}");
        assert!(!error.contains("num_batches_tracked"), "{error}");
    }

    #[test]
    fn missing_checkpoint_is_named() {
        let _rng = crate::test_support::lock_rng();
        let error = load_resnet18(Path::new("/nonexistent/resnet18.pth"), &Device::flex())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(error, "checkpoint /nonexistent/resnet18.pth not found");
    }

    #[test]
    fn unreadable_checkpoint_is_named() {
        let _rng = crate::test_support::lock_rng();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resnet18.pth");
        std::fs::write(&path, b"not a zip archive").unwrap();
        let error = load_resnet18(&path, &Device::flex())
            .err()
            .unwrap()
            .to_string();
        let expected = format!(
            "cannot read checkpoint {} as a PyTorch state dict",
            path.display()
        );
        assert!(error.starts_with(&expected), "{error}");
    }
}
