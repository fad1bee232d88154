//! `metairnet picture`: support photos beside their generated, fused and Block Dropout images,
//! and the loading of a run with its photos that `picture` and `tsne` share.

use crate::common::{DataArgs, DeviceArgs, checkpoint_dir, load_generated_from, open_run};
use crate::progress::Bars;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use metairnet::data::{Dataset, GeneratedImages, ImageStore, Split};
use metairnet::episodes::{EpisodeSampler, EpisodeShape};
use metairnet::model::{BlockDropoutConfig, FewShotNet, SupportAugment, VarianceFix};
use metairnet::pictures::{FusionRow, SplitMix64, chw_to_rgb, render_fusion_sheet};
use metairnet::train::{SupportPlan, TrainConfig, load_model};
use std::path::{Path, PathBuf};

/// The largest `--photos`.
const MAX_PHOTOS: usize = 32;
/// The largest `--zoom`.
const MAX_ZOOM: u32 = 8;
/// The minimum side, in pixels, that the automatic zoom enlarges images to.
const SHOWN_SIDE: u32 = 252;

/// The source of a picture's model and photos, shared by `picture` and `tsne`.
#[derive(clap::Args, Debug)]
pub struct SourceArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// Run folder created by `metairnet train`. Its best checkpoint is used.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,

    /// Folder of generated images written by `metairnet generate` [default: the one the run
    /// was trained with].
    #[arg(long, value_name = "DIR")]
    pub generated: Option<PathBuf>,

    /// Classes to take photos from: novel (test), val (validation), base (training) or all.
    #[arg(long, default_value = "novel")]
    pub split: Split,

    /// Seed of the episode the photos come from and of the random draws (generated images,
    /// Block Dropout masks, t-SNE's start). The same seed gives the same picture.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,

    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(clap::Args, Debug)]
pub struct PictureArgs {
    #[command(flatten)]
    source: SourceArgs,

    /// PNG file to write. Its folder is created when missing.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,

    /// Support photos to show, one row each. They come from episode 0 of the split (seeded by
    /// --seed), one photo per class while the split has enough classes.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 4,
        value_name = "N"
    )]
    photos: usize,

    /// Enlargement of each 84- or 224-pixel image, by nearest neighbour, in times [default:
    /// the smallest that shows images at 252 pixels or more: 3 at 84, 2 at 224].
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    zoom: Option<u32>,
}

/// A run's model in evaluation mode, with the photos of one split and their generated images.
pub struct LoadedRun {
    pub config: TrainConfig,
    pub model: FewShotNet,
    pub epoch: usize,
    pub device: Device,
    pub dataset: Dataset,
    pub store: ImageStore,
    pub generated: Option<GeneratedImages>,
}

impl LoadedRun {
    /// Returns the side of the network input in pixels.
    pub fn side(&self) -> usize {
        self.config.model.image_size.pixels() as usize
    }
}

/// Loads a run's best checkpoint and the photos of `args.split`, with their generated images
/// when `needs_generated` is set or when a folder of them is known.
///
/// # Errors
/// A missing run folder or checkpoint, unreadable photos, and a missing generated image folder
/// when `needs_generated` is set.
pub fn load_run(args: &SourceArgs, needs_generated: bool, bars: &Bars) -> Result<LoadedRun> {
    let run = open_run(&args.run)?;
    let config = run.config()?;
    let (epoch, checkpoint) = checkpoint_dir(&run, false)?;
    let selected = args.device.select()?;
    let model = load_model(&checkpoint, &config, &selected.device)?.valid();

    let dataset = Dataset::open(&args.data.data)?;
    let size = config.model.image_size;
    let store = crate::common::load_split(&dataset, args.split, size, &args.data, bars)?;
    let root = args.generated.clone().or(config.model.generated.clone());
    let generated = match root {
        Some(root) => Some(load_generated_from(
            &root, 1, &dataset, &store, args.split, bars,
        )?),
        None if needs_generated => bail!(
            "run {} was trained without generated images; pass --generated DIR with a folder written by `metairnet generate`",
            args.run.display()
        ),
        None => None,
    };
    Ok(LoadedRun {
        config,
        model,
        epoch,
        device: selected.device,
        dataset,
        store,
        generated,
    })
}

/// Checks that `path` names a PNG file and creates its folder.
pub fn prepare_png_path(path: &Path) -> Result<()> {
    let is_png = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("png"));
    if !is_png {
        bail!(
            "invalid --out {}; expected a file name ending in .png",
            path.display()
        );
    }
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("failed to create folder {}", folder.display()))?;
    }
    Ok(())
}

/// Copies `[count, 3, side, side]` host values to `device`.
pub fn to_tensor(values: &[f32], side: usize, device: &Device) -> Tensor<4> {
    let count = values.len() / (3 * side * side);
    Tensor::from_data(
        TensorData::new(values.to_vec(), [count, 3, side, side]),
        device,
    )
}

/// Copies a tensor's values to the host.
pub fn to_host<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .try_to_vec::<f32>()
        .expect("the model computes in f32")
}

/// Returns a photo's path relative to the dataset folder, for messages and CSV files.
pub fn photo_name(loaded: &LoadedRun, image: usize) -> String {
    let path = &loaded.store.paths[image];
    path.strip_prefix(&loaded.dataset.root)
        .unwrap_or(path)
        .display()
        .to_string()
}

pub fn run(args: PictureArgs, quiet: bool) -> Result<()> {
    if !(1..=MAX_PHOTOS).contains(&args.photos) {
        bail!(
            "invalid --photos {}; expected 1 to {MAX_PHOTOS}",
            args.photos
        );
    }
    if let Some(zoom) = args.zoom
        && !(1..=MAX_ZOOM).contains(&zoom)
    {
        bail!("invalid --zoom {zoom}; expected 1 to {MAX_ZOOM}");
    }
    prepare_png_path(&args.out)?;
    let bars = Bars::new(quiet);
    let loaded = load_run(&args.source, true, &bars)?;
    let generated = loaded.generated.as_ref().expect("load_run loads them");
    let side = loaded.side();
    let device = &loaded.device;

    // Episode 0 of a sampler with one support photo per class (more per class only when the
    // split has fewer classes than photos requested) and no queries.
    let classes = loaded.store.class_names.len();
    let n_way = args.photos.min(classes);
    let shape = EpisodeShape {
        n_way,
        n_shot: args.photos.div_ceil(n_way),
        n_query: 0,
    };
    let sampler = EpisodeSampler::new(&loaded.store, args.source.split, shape, args.source.seed)?;
    let plan = SupportPlan {
        augment: SupportAugment::Generated,
        copies: 1,
        embedding_dim: 0,
        block_dropout: None,
        seed: args.source.seed,
    };
    let prepared = plan.prepare(sampler.episode(0, false), 0, &loaded.store, Some(generated));
    let count = args.photos;
    let per_image = 3 * side * side;
    let support = to_tensor(&prepared.support[..count * per_image], side, device);
    let generated_values = prepared
        .generated
        .as_ref()
        .expect("plan reads generated images");
    let generated_images = to_tensor(&generated_values[..count * per_image], side, device);

    let fused = loaded.model.fusion.as_ref().map(|fusion| {
        let (images, weights) = fusion.fuse(support.clone(), generated_images.clone());
        (to_host(images), to_host(weights))
    });
    let dropout = display_dropout_config(&loaded.config.block_dropout);
    let masks = draw_visible_masks(&dropout, count, side, args.source.seed);
    let dropped = metairnet::ops::block_dropout(
        support.clone(),
        Tensor::from_data(TensorData::new(masks.masks.clone(), [count, 9]), device),
        Tensor::from_data(TensorData::new(masks.scales.clone(), [count]), device),
    );
    let dropped = to_host(dropped);

    let mut rows = Vec::with_capacity(count);
    for i in 0..count {
        let image = |values: &[f32]| chw_to_rgb(&values[i * per_image..(i + 1) * per_image], side);
        let fused = fused.as_ref().map(|(images, weights)| {
            let mut grid = [0.0f32; 9];
            grid.copy_from_slice(&weights[i * 9..(i + 1) * 9]);
            (image(images), grid)
        });
        rows.push(FusionRow {
            original: image(&prepared.support),
            generated: image(generated_values),
            fused,
            block_dropout: image(&dropped),
        });
    }
    let zoom = args
        .zoom
        .unwrap_or_else(|| SHOWN_SIDE.div_ceil(side as u32));
    let sheet = render_fusion_sheet(&rows, zoom);
    sheet
        .save(&args.out)
        .with_context(|| format!("failed to write {}", args.out.display()))?;

    println!(
        "picture: {} ({} rows, images of {side}x{side} pixels shown {zoom} times larger), run {} at epoch {}",
        args.out.display(),
        count,
        args.source.run.display(),
        loaded.epoch
    );
    print_columns(&loaded, &dropout, fused.is_some());
    for (i, &image) in prepared.episode.support.iter().take(count).enumerate() {
        let mut line = format!(
            "row {}: {}, generated image {}",
            i + 1,
            photo_name(&loaded, image),
            prepared.generated_choice[i]
        );
        if let Some((_, weights)) = &fused {
            let grid: Vec<String> = weights[i * 9..(i + 1) * 9]
                .iter()
                .map(|w| format!("{w:.2}"))
                .collect();
            line.push_str(&format!(", fusion weights [{}]", grid.join(", ")));
        }
        let kept = masks.masks[i * 9..(i + 1) * 9]
            .iter()
            .filter(|&&m| m == 1.0)
            .count();
        line.push_str(&format!(
            ", Block Dropout keeps {kept} of 9 blocks, scale {:.2}",
            masks.scales[i]
        ));
        println!("{line}");
    }
    Ok(())
}

/// Describes the columns of the picture on stdout.
fn print_columns(loaded: &LoadedRun, dropout: &BlockDropoutConfig, with_fused: bool) {
    println!("columns:");
    println!("  original: the support photo as the network sees it");
    println!("  generated: one of its generated images, drawn as training draws them");
    if with_fused {
        println!(
            "  fused: W * original + (1 - W) * generated, with the fusion network's weight W of each 3x3 block written on it (rows of blocks top to bottom)"
        );
    } else {
        println!(
            "  (no fused column: the run was trained with support_augment = \"{}\" and has no fusion network; train with --support-augment fusion to get one)",
            loaded.config.model.support_augment
        );
    }
    let [low, high] = dropout.keep_ratio;
    let fix = match dropout.variance_fix {
        VarianceFix::Mean => "mean",
        VarianceFix::Sample => "sample",
    };
    let source = if loaded.config.block_dropout.enabled {
        "the run's settings"
    } else {
        "the default settings, because the run trained without Block Dropout"
    };
    let centre = if dropout.centerness {
        "always kept"
    } else {
        "dropped like the others"
    };
    println!(
        "  block dropout: the original times a 3x3 mask drawn with p = 1 and {source} (keep ratio {low} to {high}, centre block {centre}, variance fix {fix}), redrawn until it drops at least one block. Dropped blocks show the ImageNet mean colour."
    );
}

/// Returns the Block Dropout settings shown: the run's when it trained with Block Dropout, the
/// defaults otherwise, with p = 1 so that every row shows a mask.
fn display_dropout_config(trained: &BlockDropoutConfig) -> BlockDropoutConfig {
    let base = if trained.enabled {
        trained.clone()
    } else {
        BlockDropoutConfig::default()
    };
    BlockDropoutConfig {
        enabled: true,
        p: 1.0,
        ..base
    }
}

/// Draws Block Dropout masks for `count` images, redrawing each until it drops a block, so that
/// no row of the picture looks unchanged. With a keep ratio of up to 1 a draw keeps all 9
/// blocks about a fifth of the time.
fn draw_visible_masks(
    config: &BlockDropoutConfig,
    count: usize,
    side: usize,
    seed: u64,
) -> metairnet::model::BlockMasks {
    const MAX_DRAWS: usize = 1000;
    let mut random = SplitMix64::new(seed);
    let mut masks = Vec::with_capacity(count * 9);
    let mut scales = Vec::with_capacity(count);
    for _ in 0..count {
        let mut draw = config.sample(1, side, side, &mut || random.uniform());
        for _ in 0..MAX_DRAWS {
            if draw.masks.contains(&0.0) {
                break;
            }
            draw = config.sample(1, side, side, &mut || random.uniform());
        }
        masks.extend(draw.masks);
        scales.extend(draw.scales);
    }
    metairnet::model::BlockMasks { masks, scales }
}
