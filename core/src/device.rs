//! Choosing where tensors live: a GPU through wgpu, or the CPU.

use burn::prelude::*;
use std::fmt;
use std::str::FromStr;

/// The device a user asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A GPU adapter through wgpu when one exists, else the CPU backend.
    Auto,
    /// wgpu's default adapter, whatever it is (lavapipe on a machine without a GPU).
    Wgpu,
    /// Burn's CPU backend (flex).
    Cpu,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            _ => Err(format!(
                "invalid device '{text}'; expected auto, wgpu or cpu"
            )),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Cpu => "cpu",
        })
    }
}

/// The backend a device runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Wgpu,
    Cpu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "cpu",
        })
    }
}

/// A resolved device with a human-readable account of the choice.
#[derive(Clone, Debug)]
pub struct SelectedDevice {
    pub device: Device,
    pub backend: BackendKind,
    /// For example "wgpu: NVIDIA GeForce RTX 4090 (Vulkan, DiscreteGpu)".
    pub description: String,
    /// The largest buffer a kernel may bind, in bytes; `None` when the backend sets no limit.
    pub max_buffer_bytes: Option<u64>,
    /// Whether this is a wgpu adapter that runs on the CPU (lavapipe, llvmpipe, WARP).
    pub software_adapter: bool,
}

impl SelectedDevice {
    /// Checks that a tensor of `bytes` bytes fits in one buffer of this device.
    ///
    /// # Errors
    /// A message naming the size, the device limit and `what` needed it.
    pub fn check_buffer(&self, bytes: u64, what: &str) -> Result<(), String> {
        match self.max_buffer_bytes {
            Some(limit) if bytes > limit => Err(format!(
                "{what} needs a {:.1} MiB buffer, above the {:.1} MiB that this device allows in one buffer ({}); use fewer images per episode (--n-query) or --device cpu",
                bytes as f64 / MIB,
                limit as f64 / MIB,
                self.description
            )),
            _ => Ok(()),
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// A wgpu adapter found on this machine.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub is_gpu: bool,
    /// The largest storage buffer one kernel may bind, in bytes (128 MiB on lavapipe and in
    /// browsers by default).
    pub max_buffer_bytes: u64,
}

/// Lists the wgpu adapters of this machine (GPUs and software rasterisers alike).
#[cfg(feature = "wgpu")]
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            AdapterSummary {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                is_gpu: info.device_type != wgpu::DeviceType::Cpu,
                max_buffer_bytes: adapter.limits().max_storage_buffer_binding_size,
            }
        })
        .collect()
}

/// Lists the wgpu adapters of this machine; none in a build without wgpu.
#[cfg(not(feature = "wgpu"))]
pub fn list_adapters() -> Vec<AdapterSummary> {
    Vec::new()
}

/// Resolves a [`DeviceChoice`].
///
/// `Auto` takes wgpu only when an adapter is a real GPU: a software rasteriser such as lavapipe
/// runs the same kernels about ten times slower than the CPU backend.
///
/// # Errors
/// `Wgpu` in a build without the `wgpu` feature.
pub fn select_device(choice: DeviceChoice) -> Result<SelectedDevice, String> {
    let cpu = || SelectedDevice {
        device: Device::flex(),
        backend: BackendKind::Cpu,
        description: format!("cpu: Burn flex backend, {} threads", available_threads()),
        max_buffer_bytes: None,
        software_adapter: false,
    };
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Wgpu => wgpu_device(None),
        DeviceChoice::Auto => {
            let adapters = list_adapters();
            match adapters.iter().find(|adapter| adapter.is_gpu) {
                Some(gpu) => wgpu_device(Some(gpu)),
                None => {
                    let mut selected = cpu();
                    let reason = if adapters.is_empty() {
                        "no wgpu adapter found".to_string()
                    } else {
                        let names: Vec<&str> = adapters.iter().map(|a| a.name.as_str()).collect();
                        format!("only software adapters found ({})", names.join(", "))
                    };
                    selected.description = format!("{} (auto: {reason})", selected.description);
                    Ok(selected)
                }
            }
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device(adapter: Option<&AdapterSummary>) -> Result<SelectedDevice, String> {
    let adapter = match adapter {
        Some(adapter) => Some(adapter.clone()),
        None => {
            let adapters = list_adapters();
            adapters
                .iter()
                .find(|a| a.is_gpu)
                .or(adapters.first())
                .cloned()
        }
    };
    let Some(adapter) = adapter else {
        return Err(
            "no wgpu adapter found; install a Vulkan, Metal or DX12 driver (on Debian: mesa-vulkan-drivers), or use --device cpu"
                .to_string(),
        );
    };
    Ok(SelectedDevice {
        device: Device::wgpu(DeviceKind::DefaultDevice),
        backend: BackendKind::Wgpu,
        description: format!(
            "wgpu: {} ({}, {})",
            adapter.name, adapter.backend, adapter.device_type
        ),
        max_buffer_bytes: Some(adapter.max_buffer_bytes),
        software_adapter: !adapter.is_gpu,
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_adapter: Option<&AdapterSummary>) -> Result<SelectedDevice, String> {
    Err(
        "this build has no wgpu support; rebuild with the `wgpu` feature or use --device cpu"
            .to_string(),
    )
}

fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
