//! `metairnet generate`: fine-tunes the generator on every photo of a dataset and writes the
//! generated images in the layout that MetaIRNet training reads.

use crate::common::DeviceArgs;
use crate::progress::Bars;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use image::{RgbImage, imageops};
use metairnet::data::{Dataset, decode_image, resize_and_center_crop};
use metairnet::generator::store::{
    GeneratedStore, METADATA_FILE, sample_file_name, sample_folder, sample_folder_name,
};
use metairnet::generator::{
    BigGan, BigGanConfig, FineTuneConfig, Vgg16Config, Vgg16Features, fine_tune, load_biggan,
    load_vgg16, sample,
};
use metairnet::hash::fnv64_hex;
use metairnet::train::Progress;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Dataset folder: CUB_200_2011 (with images/ and classes.txt), its parent, or a folder with
    /// one subfolder of photos per class. Every photo of every class is processed.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,

    /// Output folder. Each photo gets `<class>/<file name>.<id>/img_iter<N>_batch<k>.jpg`.
    /// Photos whose folder is complete are skipped, so an interrupted run resumes.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// BigGAN-PyTorch generator checkpoint (`G_ema.pth` of BigGAN-128). Without it, a reduced
    /// generator with random weights is used, for trying the pipeline only.
    #[arg(long, value_name = "FILE")]
    generator_weights: Option<PathBuf>,

    /// torchvision VGG16 checkpoint (`vgg16-397923af.pth`) for the perceptual loss. Without
    /// it, a reduced VGG16 with random weights is used.
    #[arg(long, value_name = "FILE")]
    vgg_weights: Option<PathBuf>,

    /// Generator width multiplier `G_ch` [default: 96 with --generator-weights, else 4].
    #[arg(long, value_name = "N")]
    channels: Option<usize>,

    /// Side of the generated images in pixels, 32, 64, 128 or 256 [default: 128 with
    /// --generator-weights, else 32].
    #[arg(long, value_name = "PIXELS")]
    resolution: Option<usize>,

    /// Divisor of VGG16's channel counts [default: 1 with --vgg-weights, else 16].
    #[arg(long, value_name = "N")]
    vgg_width_divisor: Option<usize>,

    /// Fine-tuning iterations per photo [default: 500 with --generator-weights, else 50].
    #[arg(long, value_name = "N")]
    iterations: Option<usize>,

    /// Generated images kept per photo.
    #[arg(long, default_value_t = 10, value_name = "N")]
    samples: usize,

    /// Seed of the fine-tuning noise and the sampling latents (combined with each photo's path).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Process only the first N photos (in class and file order), for a quick look.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,

    /// Leave out photos that cannot be decoded instead of stopping, and report them.
    #[arg(long)]
    skip_bad_images: bool,

    /// Write OUT/preview.png: for the first N photos, the photo beside its generated images.
    #[arg(long, value_name = "N")]
    preview: Option<usize>,

    #[command(flatten)]
    device: DeviceArgs,
}

/// The settings of a store, written to `OUT/metairnet-generator.json` and compared on resume so
/// that one store never mixes configurations.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct StoreMetadata {
    /// True when the generator and VGG16 have random weights: the images are then noise-like
    /// and only exercise the pipeline.
    random_weights: bool,
    generator_weights: Option<String>,
    vgg_weights: Option<String>,
    channels: usize,
    resolution: usize,
    dim_z: usize,
    vgg_width_divisor: usize,
    iterations: usize,
    samples: usize,
    seed: u64,
    git_commit: String,
}

/// Chooses the generator configuration: BigGAN-128 with weights, a reduced one without.
fn generator_config(args: &GenerateArgs) -> Result<BigGanConfig> {
    let pretrained = args.generator_weights.is_some();
    let channels = args.channels.unwrap_or(if pretrained { 96 } else { 4 });
    let resolution = args.resolution.unwrap_or(if pretrained { 128 } else { 32 });
    let mut config = BigGanConfig::new()
        .with_channels(channels)
        .with_resolution(resolution);
    let blocks = config
        .block_multipliers()
        .map_err(|e| anyhow::anyhow!("{e} (--resolution)"))?
        .len();
    // BigGAN-128 has 6 latent chunks of 20; other resolutions keep chunks of 20.
    config = config.with_dim_z(20 * (blocks + 1));
    if !pretrained {
        config = config
            .with_shared_dim(16)
            .with_n_classes(10)
            .with_attention_resolution(if channels % 16 == 0 { 64 } else { 0 });
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{e} (--channels, --resolution)"))?;
    Ok(config)
}

pub fn run(args: GenerateArgs, quiet: bool) -> Result<()> {
    if args.samples == 0 || args.samples > 1000 {
        bail!("invalid --samples {}: use 1 to 1000", args.samples);
    }
    if args.iterations == Some(0) {
        bail!("invalid --iterations 0: use at least 1");
    }
    if args.out.is_file() {
        bail!("--out {} is a file; give a folder", args.out.display());
    }
    let config = generator_config(&args)?;
    let vgg_divisor = args
        .vgg_width_divisor
        .unwrap_or(if args.vgg_weights.is_some() { 1 } else { 16 });
    if vgg_divisor == 0 || vgg_divisor > 64 {
        bail!("invalid --vgg-width-divisor {vgg_divisor}: use 1 to 64");
    }
    let iterations = args
        .iterations
        .unwrap_or(if args.generator_weights.is_some() {
            500
        } else {
            50
        });
    let tune = FineTuneConfig::new().with_iterations(iterations);

    let dataset = Dataset::open(&args.data)?;
    let mut photos: Vec<PathBuf> = dataset
        .classes
        .iter()
        .flat_map(|class| class.images.iter().cloned())
        .collect();
    if let Some(limit) = args.limit {
        photos.truncate(limit);
    }

    let selected = args.device.select()?;
    let device = selected.device.clone().autodiff();
    device.seed(args.seed);
    let random_weights = args.generator_weights.is_none() || args.vgg_weights.is_none();
    let generator: BigGan = match &args.generator_weights {
        Some(path) => load_biggan(path, &config, &device)?,
        None => config.init(&device),
    };
    let vgg_config = Vgg16Config::new().with_width_divisor(vgg_divisor);
    let vgg: Vgg16Features = match &args.vgg_weights {
        Some(path) => load_vgg16(path, &vgg_config, &device)?,
        None => vgg_config.init(&device),
    };
    if random_weights {
        log::warn!(
            "no pretrained {} given: using random weights (generator width {}, {}x{} images, VGG16 channels / {vgg_divisor}). The images only exercise the pipeline; pass --generator-weights G_ema.pth and --vgg-weights vgg16.pth for real ones.",
            match (&args.generator_weights, &args.vgg_weights) {
                (None, None) => "generator and VGG16",
                (None, Some(_)) => "generator",
                _ => "VGG16",
            },
            config.channels,
            config.resolution,
            config.resolution
        );
    }

    let metadata = StoreMetadata {
        random_weights,
        generator_weights: args
            .generator_weights
            .as_ref()
            .map(|p| p.display().to_string()),
        vgg_weights: args.vgg_weights.as_ref().map(|p| p.display().to_string()),
        channels: config.channels,
        resolution: config.resolution,
        dim_z: config.dim_z,
        vgg_width_divisor: vgg_divisor,
        iterations,
        samples: args.samples,
        seed: args.seed,
        git_commit: metairnet::GIT_COMMIT.to_string(),
    };
    prepare_store(&args.out, &metadata)?;

    let bars = Bars::new(quiet);
    let started = Instant::now();
    let mut done = 0usize;
    let mut skipped_existing = 0usize;
    let mut bad = Vec::new();
    bars.begin("generate", photos.len() as u64);
    for photo in &photos {
        let relative = photo.strip_prefix(&dataset.root).unwrap_or(photo);
        let folder = sample_folder(&args.out, relative);
        if folder.is_dir() {
            skipped_existing += 1;
            bars.advance(1);
            continue;
        }
        let target = match read_target(photo, config.resolution) {
            Ok(target) => target,
            Err(error) if args.skip_bad_images => {
                bad.push(format!("{}: {error:#}", photo.display()));
                bars.advance(1);
                continue;
            }
            Err(error) => {
                bars.finish();
                return Err(error.context("pass --skip-bad-images to leave such photos out"));
            }
        };
        let seed =
            args.seed ^ u64::from_str_radix(&fnv64_hex(relative.to_string_lossy().as_bytes()), 16)?;
        let target = to_tensor(&target, &device);
        let tuned = fine_tune(&generator, &vgg, target, &tune, seed);
        let images = sample(&tuned, args.samples, &tune, seed.wrapping_add(1));
        write_samples(&folder, relative, &images, iterations)?;
        done += 1;
        bars.set_message(&format!("loss {:.3}", tuned.final_loss));
        bars.advance(1);
    }
    bars.finish();

    let seconds = started.elapsed().as_secs_f64();
    println!(
        "generated {} images for each of {done} photos in {:.0} s ({:.2} s per photo); {skipped_existing} photos already had them; store {}",
        args.samples,
        seconds,
        if done > 0 { seconds / done as f64 } else { 0.0 },
        args.out.display()
    );
    // Read the store back as training reads it, as a check of what was written.
    let store = GeneratedStore::open(&args.out)
        .with_context(|| format!("cannot read the store {}", args.out.display()))?;
    println!("the store has generated images for {} photos", store.len());
    if !bad.is_empty() {
        println!("skipped {} photos that could not be read:", bad.len());
        for line in &bad {
            println!("  {line}");
        }
    }
    if random_weights {
        println!("note: random weights; see {} in the store", METADATA_FILE);
    }
    if let Some(count) = args.preview {
        let path = write_preview(
            &args.out,
            &store,
            &dataset,
            &photos,
            count,
            config.resolution,
        )?;
        println!("preview: {}", path.display());
    }
    Ok(())
}

/// Creates the store folder and its metadata, or checks that an existing store was made with
/// the same settings. Also removes folders left half-written by an interrupted run.
fn prepare_store(out: &Path, metadata: &StoreMetadata) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create --out {}", out.display()))?;
    let path = out.join(METADATA_FILE);
    if path.is_file() {
        let text = std::fs::read_to_string(&path)?;
        let existing: StoreMetadata = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a metadata file of this tool", path.display()))?;
        let same = StoreMetadata {
            git_commit: metadata.git_commit.clone(),
            ..existing
        };
        if &same != metadata {
            bail!(
                "{} was generated with other settings ({text}); use a new --out folder or the same options",
                out.display()
            );
        }
    }
    let text = serde_json::to_string_pretty(metadata)?;
    std::fs::write(&path, text + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;

    for entry in std::fs::read_dir(out)?.flatten() {
        remove_partial(&entry.path())?;
        if entry.path().is_dir() {
            for inner in std::fs::read_dir(entry.path())?.flatten() {
                remove_partial(&inner.path())?;
            }
        }
    }
    Ok(())
}

fn remove_partial(path: &Path) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if name.starts_with('.') && name.ends_with(".partial") && path.is_dir() {
        std::fs::remove_dir_all(path)
            .with_context(|| format!("cannot remove the unfinished folder {}", path.display()))?;
    }
    Ok(())
}

/// Reads a photo and crops it as the generator's target: shorter side resized to
/// `146 / 128` of the output side, then the centre square.
fn read_target(path: &Path, resolution: usize) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let image =
        decode_image(&bytes).with_context(|| format!("cannot decode {}", path.display()))?;
    let short = ((resolution as f64) * 146.0 / 128.0).round() as u32;
    Ok(resize_and_center_crop(
        &image.to_rgb8(),
        short,
        resolution as u32,
    ))
}

/// Returns `[1, 3, side, side]` in [-1, 1].
fn to_tensor(image: &RgbImage, device: &Device) -> Tensor<4> {
    let (width, height) = image.dimensions();
    let plane = (width * height) as usize;
    let mut values = vec![0.0f32; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            values[c * plane + i] = pixel[c] as f32 / 127.5 - 1.0;
        }
    }
    Tensor::from_data(
        TensorData::new(values, [1, 3, height as usize, width as usize]),
        device,
    )
}

/// Converts `[count, 3, side, side]` images in [-1, 1] to RGB images.
fn to_images(images: Tensor<4>) -> Result<Vec<RgbImage>> {
    let [count, _, height, width] = images.dims();
    let values = images
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read generated images: {e:?}"))?;
    let plane = height * width;
    Ok((0..count)
        .map(|n| {
            let image = &values[n * 3 * plane..(n + 1) * 3 * plane];
            RgbImage::from_fn(width as u32, height as u32, |x, y| {
                let i = y as usize * width + x as usize;
                let channel = |c: usize| {
                    ((image[c * plane + i] + 1.0) * 127.5)
                        .round()
                        .clamp(0.0, 255.0) as u8
                };
                image::Rgb([channel(0), channel(1), channel(2)])
            })
        })
        .collect())
}

/// Writes the samples of one photo into a hidden folder, then renames it into place, so that a
/// folder under its final name is always complete.
fn write_samples(
    folder: &Path,
    relative: &Path,
    images: &Tensor<4>,
    iterations: usize,
) -> Result<()> {
    let parent = folder.parent().expect("sample folders have a parent");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let partial = parent.join(format!(".{}.partial", sample_folder_name(relative)));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    for (index, image) in to_images(images.clone())?.iter().enumerate() {
        let path = partial.join(sample_file_name(iterations, index));
        image
            .save_with_format(&path, image::ImageFormat::Jpeg)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::rename(&partial, folder)
        .with_context(|| format!("cannot move {} to {}", partial.display(), folder.display()))?;
    Ok(())
}

/// Writes a grid: one row per photo, the cropped photo first, then its generated images.
fn write_preview(
    out: &Path,
    store: &GeneratedStore,
    dataset: &Dataset,
    photos: &[PathBuf],
    count: usize,
    resolution: usize,
) -> Result<PathBuf> {
    let rows: Vec<(RgbImage, Vec<PathBuf>)> = photos
        .iter()
        .filter_map(|photo| {
            let relative = photo.strip_prefix(&dataset.root).unwrap_or(photo);
            let generated = store.images_for(relative).to_vec();
            let source = read_target(photo, resolution).ok()?;
            (!generated.is_empty()).then_some((source, generated))
        })
        .take(count)
        .collect();
    if rows.is_empty() {
        bail!("no generated images in {} to preview", out.display());
    }

    let side = resolution as u32;
    let gap = 4;
    let columns = 1 + rows.iter().map(|(_, g)| g.len()).max().unwrap_or(0) as u32;
    let width = columns * side + (columns + 1) * gap;
    let height = rows.len() as u32 * side + (rows.len() as u32 + 1) * gap;
    let mut grid = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));

    for (row, (source, generated)) in rows.iter().enumerate() {
        let y = gap + row as u32 * (side + gap);
        imageops::overlay(&mut grid, source, gap as i64, y as i64);
        for (column, path) in generated.iter().enumerate() {
            let image = image::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .to_rgb8();
            let image = imageops::resize(&image, side, side, imageops::FilterType::Triangle);
            let x = gap + (column as u32 + 1) * (side + gap);
            imageops::overlay(&mut grid, &image, x as i64, y as i64);
        }
    }

    let path = out.join("preview.png");
    grid.save(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
