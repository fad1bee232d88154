//! Helpers shared by the subcommands: devices, image loading with progress, cache folders.

use crate::progress::Bars;
use anyhow::{Context, Result};
use metairnet::data::{Dataset, ImageSize, ImageStore, LoadOptions, Split};
use metairnet::device::{DeviceChoice, SelectedDevice, select_device};
use metairnet::train::Progress;
use std::path::{Path, PathBuf};

/// Options for reading photos, shared by `train` and `eval`.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset folder: CUB_200_2011 (with images/ and classes.txt), its parent, or a folder with
    /// one subfolder of photos per class.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,

    /// Leave out missing or undecodable photos instead of stopping, and report how many.
    #[arg(long)]
    pub skip_bad_images: bool,

    /// Folder for decoded photos, so later runs skip JPEG decoding [default:
    /// $XDG_CACHE_HOME/metairnet/images or ~/.cache/metairnet/images].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Keep decoded photos in memory only.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

impl DataArgs {
    fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("metairnet").join("images"))
    }
}

/// Decodes the photos of one split with a progress bar and reports skipped files.
pub fn load_split(
    dataset: &Dataset,
    split: Split,
    size: ImageSize,
    args: &DataArgs,
    bars: &Bars,
) -> Result<ImageStore> {
    let subset = dataset.split(split);
    let options = LoadOptions {
        skip_bad_images: args.skip_bad_images,
        cache_dir: args.cache_dir(),
        threads: 0,
    };
    bars.begin(&format!("load {split}"), subset.num_images() as u64);
    let result = ImageStore::load(&subset, size, &options, &|n| bars.advance(n));
    bars.finish();
    let (store, report) = result?;
    log::info!(
        "{split} split: {} classes, {} photos{}",
        store.class_names.len(),
        store.len(),
        if report.from_cache {
            " (from cache)"
        } else {
            ""
        }
    );
    if !report.skipped.is_empty() {
        log::warn!(
            "skipped {} unusable photos in the {split} split:",
            report.skipped.len()
        );
        for skipped in report.skipped.iter().take(10) {
            log::warn!("  {}: {}", skipped.path.display(), skipped.reason);
        }
        if report.skipped.len() > 10 {
            log::warn!("  ... and {} more", report.skipped.len() - 10);
        }
    }
    Ok(store)
}

/// Decodes the generated images of every photo of `photos` when `config` reads them, with a
/// progress bar.
pub fn load_generated(
    config: &metairnet::train::TrainConfig,
    dataset: &Dataset,
    photos: &ImageStore,
    split: Split,
    bars: &Bars,
) -> Result<Option<metairnet::data::GeneratedImages>> {
    if !config.model.support_augment.needs_generated() {
        return Ok(None);
    }
    let root = config
        .model
        .generated
        .as_ref()
        .context("the support augmentation reads generated images; pass --generated DIR")?;
    load_generated_from(root, config.model.n_aug, dataset, photos, split, bars).map(Some)
}

/// Decodes, for every photo of `photos`, the generated images stored under `root`.
pub fn load_generated_from(
    root: &Path,
    needed: usize,
    dataset: &Dataset,
    photos: &ImageStore,
    split: Split,
    bars: &Bars,
) -> Result<metairnet::data::GeneratedImages> {
    if !root.is_dir() {
        anyhow::bail!(
            "generated image folder {} not found; create it with `metairnet generate --data DIR --out {}`",
            root.display(),
            root.display()
        );
    }
    let index = metairnet::generator::store::GeneratedStore::open(root)
        .with_context(|| format!("failed to read generated image folder {}", root.display()))?;
    let total: usize = photos
        .paths
        .iter()
        .map(|photo| {
            let relative = photo.strip_prefix(&dataset.root).unwrap_or(photo);
            index.images_for(relative).len()
        })
        .sum();
    bars.begin(&format!("load generated {split}"), total as u64);
    let result = metairnet::data::GeneratedImages::load(
        photos,
        &dataset.root,
        &index,
        root,
        needed,
        0,
        &|n| bars.advance(n),
    );
    bars.finish();
    let generated = result?;
    log::info!(
        "{split} split: {total} generated images from {}",
        root.display()
    );
    Ok(generated)
}

/// Returns `path` made absolute, so that a run folder's configuration names the same folder
/// from any working directory.
pub fn absolute(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The `--device` option.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Device to compute on: auto (a GPU through wgpu when one exists, else the CPU), wgpu
    /// (any wgpu adapter, software ones included) or cpu.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceChoice,
}

impl DeviceArgs {
    pub fn select(&self) -> Result<SelectedDevice> {
        let selected = select_device(self.device).map_err(anyhow::Error::msg)?;
        log::info!("device: {}", selected.description);
        configure_backend(&selected);
        Ok(selected)
    }
}

/// Fails early, with advice, when an episode's largest activation does not fit in one buffer of
/// the device (wgpu adapters cap it, 128 MiB on lavapipe). The backbone embeds the episode's
/// photos and `extra_per_support` augmented images per support photo in one batch.
///
/// NOTE: the estimate is Conv4's first activation, whatever the backbone, so a ResNet-18 run
/// may still exceed the limit.
pub fn check_episode_fits(
    selected: &SelectedDevice,
    shape: &metairnet::episodes::EpisodeShape,
    extra_per_support: usize,
    size: ImageSize,
) -> Result<()> {
    let images = shape.num_images() + shape.n_way * shape.n_shot * extra_per_support;
    let bytes = metairnet::model::Conv4Config::new()
        .largest_activation_bytes(images, size.pixels() as usize);
    let what = format!("an episode of {images} images at {0}x{0}", size.pixels());
    selected
        .check_buffer(bytes, &what)
        .map_err(anyhow::Error::msg)
}

/// Returns the epoch and folder of the checkpoint that `eval` and `classify` use: the best
/// epoch's, or the newest one when `newest` is set. Fallbacks are logged as warnings.
pub fn checkpoint_dir(run: &metairnet::train::RunFolder, newest: bool) -> Result<(usize, PathBuf)> {
    let chosen = metairnet::train::choose_checkpoint(run, newest)?;
    if let Some(reason) = &chosen.fallback {
        log::warn!("{reason}");
    }
    log::info!(
        "using the checkpoint of epoch {} ({})",
        chosen.epoch,
        chosen.dir.display()
    );
    Ok((chosen.epoch, chosen.dir))
}

/// Opens a run folder, adding its path to any error.
pub fn open_run(path: &Path) -> Result<metairnet::train::RunFolder> {
    metairnet::train::RunFolder::open(path)
        .with_context(|| format!("cannot use run folder {}", path.display()))
}

/// Sets process-wide backend settings for the chosen device, unless the user set them.
///
/// Burn places tensors that it creates without a device (optimizer state read from a
/// checkpoint) on the default backend, which `BURN_DEVICE` names. Without it, a CPU run would
/// start the Vulkan driver. On a software rasteriser, autotuning every kernel takes minutes,
/// so CubeCL's autotuning is reduced to its minimal level there.
fn configure_backend(selected: &SelectedDevice) {
    let backend = match selected.backend {
        metairnet::device::BackendKind::Cpu => "flex",
        metairnet::device::BackendKind::Wgpu => "wgpu",
    };
    // SAFETY: commands call this before they start any thread, so no other thread can read or
    // write the environment at the same time.
    unsafe {
        if std::env::var_os("BURN_DEVICE").is_none() {
            std::env::set_var("BURN_DEVICE", backend);
        }
        if selected.software_adapter && std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_none() {
            std::env::set_var("CUBECL_AUTOTUNE_LEVEL", "minimal");
        }
    }
}

/// Replaces Rust's panic output (a bug report, with a backtrace only when RUST_BACKTRACE is
/// set) by one line with the panic message.
pub fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            default_hook(info);
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown cause");
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("internal error{location}: {message}");
        eprintln!(
            "This is a bug or a device limit; set RUST_BACKTRACE=1 for details and report it."
        );
    }));
}
