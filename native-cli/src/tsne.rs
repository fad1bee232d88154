//! `metairnet tsne`: a t-SNE map of the backbone embeddings of support photos, their fused (or
//! generated) images and query photos of a few classes.

use crate::picture::{
    LoadedRun, SourceArgs, load_run, photo_name, prepare_png_path, to_host, to_tensor,
};
use crate::progress::Bars;
use anyhow::{Context, Result, bail};
use metairnet::data::display_class_name;
use metairnet::episodes::{Episode, EpisodeSampler, EpisodeShape};
use metairnet::model::SupportAugment;
use metairnet::pictures::{
    CLASS_COLORS, KindStyle, Marker, Scatter, TsneConfig, render_scatter, tsne,
};
use metairnet::train::SupportPlan;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The default perplexity when the points allow it.
const DEFAULT_PERPLEXITY: f64 = 30.0;
/// Width of the PNG in pixels.
const PLOT_WIDTH: u32 = 800;
/// Images per backbone call. BatchNorm in evaluation mode makes the result independent of it.
const BATCH: usize = 32;
const MAX_ITERATIONS: usize = 100_000;

#[derive(clap::Args, Debug)]
pub struct TsneArgs {
    #[command(flatten)]
    source: SourceArgs,

    /// PNG file to write. The 2-D coordinates go to a CSV file of the same path with the .csv
    /// extension. Its folder is created when missing.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,

    /// Classes to plot, 2 to 10, taken from episode 0 of the split (seeded by --seed). Each
    /// class contributes one support photo, its fused images and its other photos as queries.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 2,
        value_name = "N"
    )]
    classes: usize,

    /// The maximum number of query photos per class [default: every photo of the class but the support
    /// photo].
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    queries: Option<usize>,

    /// Fused images per support photo, each from another generated image [default: as many as
    /// every support photo has generated images].
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    n_aug: Option<usize>,

    /// t-SNE perplexity, the effective number of neighbours of each point, from 1 to the point
    /// count minus 1 [default: 30, or a third of the point count minus 1 when that is smaller].
    #[arg(long, allow_negative_numbers = true, value_name = "P")]
    perplexity: Option<f64>,

    /// t-SNE gradient-descent steps. The first 250 exaggerate the input affinities 12 times.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 1000,
        value_name = "N"
    )]
    iterations: usize,
}

/// The kind of image behind a point of the plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Support = 0,
    Extra = 1,
    Query = 2,
}

/// One embedded image.
struct Point {
    kind: Kind,
    /// Index into the episode's classes: the plotted class.
    class: usize,
    /// Index into the store's classes.
    store_class: usize,
    /// The photo in the store.
    image: usize,
    /// The generated image used, for fused and generated points.
    generated_index: Option<usize>,
}

pub fn run(args: TsneArgs, quiet: bool) -> Result<()> {
    if !(2..=CLASS_COLORS.len()).contains(&args.classes) {
        bail!(
            "invalid --classes {}; expected 2 to {} (one colour each)",
            args.classes,
            CLASS_COLORS.len()
        );
    }
    if args.queries == Some(0) {
        bail!("invalid --queries 0; expected at least 1, or leave it out for every photo");
    }
    if args.n_aug == Some(0) {
        bail!("invalid --n-aug 0; expected at least 1, or leave it out for every generated image");
    }
    if !(1..=MAX_ITERATIONS).contains(&args.iterations) {
        bail!(
            "invalid --iterations {}; expected 1 to {MAX_ITERATIONS}",
            args.iterations
        );
    }
    if let Some(perplexity) = args.perplexity
        && !(perplexity.is_finite() && perplexity >= 1.0)
    {
        bail!("invalid --perplexity {perplexity}; expected a number of at least 1");
    }
    prepare_png_path(&args.out)?;
    let bars = Bars::new(quiet);
    let has_fusion = crate::common::open_run(&args.source.run)?
        .config()?
        .model
        .support_augment
        == SupportAugment::Fusion;
    let loaded = load_run(&args.source, has_fusion, &bars)?;
    let split_classes = loaded.store.class_names.len();
    if args.classes > split_classes {
        bail!(
            "invalid --classes {}: the {} split has {split_classes} classes; expected at most {split_classes}",
            args.classes,
            args.source.split
        );
    }

    let episode = plotted_episode(&loaded, &args)?;
    let copies = extra_count(&loaded, &episode, args.n_aug)?;
    let (values, points) = embed_points(&loaded, episode, copies, args.source.seed)?;
    let dim = values.len() / points.len();

    let max_perplexity = (points.len() - 1) as f64;
    let perplexity = match args.perplexity {
        Some(perplexity) if perplexity > max_perplexity => bail!(
            "invalid --perplexity {perplexity} for {} points; expected at most {max_perplexity}, or leave it out for {:.1}",
            points.len(),
            default_perplexity(points.len())
        ),
        Some(perplexity) => perplexity,
        None => default_perplexity(points.len()),
    };
    let config = TsneConfig {
        perplexity,
        iterations: args.iterations,
        seed: args.source.seed,
        ..TsneConfig::default()
    };
    let result = tsne(&values, dim, &config)?;

    let class_names: Vec<String> = (0..args.classes)
        .map(|c| display_class_name(&loaded.store.class_names[store_class(&points, c)]))
        .collect();
    let extra_name = if has_fusion { "fused" } else { "generated" };
    let csv_path = args.out.with_extension("csv");
    write_csv(&csv_path, &loaded, &points, &result.points, extra_name)?;
    let styles = vec![
        KindStyle {
            name: "support".into(),
            marker: Marker::Square,
            radius: 9.0,
        },
        KindStyle {
            name: extra_name.into(),
            marker: Marker::Triangle,
            radius: 7.0,
        },
        KindStyle {
            name: "query".into(),
            marker: Marker::Circle,
            radius: 5.0,
        },
    ];
    let classes: Vec<usize> = points.iter().map(|p| p.class).collect();
    let kinds: Vec<usize> = points.iter().map(|p| p.kind as usize).collect();
    let title = format!(
        "T-SNE, {} POINTS, PERPLEXITY {perplexity:.1}, EPOCH {}",
        points.len(),
        loaded.epoch
    );
    let plot = Scatter {
        points: &result.points,
        classes: &classes,
        kinds: &kinds,
        class_names: &class_names,
        kind_styles: &styles,
        title: &title,
    };
    render_scatter(&plot, PLOT_WIDTH)
        .save(&args.out)
        .with_context(|| format!("failed to write {}", args.out.display()))?;

    let count = |kind: Kind| points.iter().filter(|p| p.kind == kind).count();
    println!(
        "t-SNE of {} backbone embeddings ({dim} values each) of {} classes: {} support photos, {} {extra_name} images, {} query photos",
        points.len(),
        args.classes,
        count(Kind::Support),
        count(Kind::Extra),
        count(Kind::Query)
    );
    if !has_fusion && loaded.generated.is_none() {
        println!(
            "(no fused or generated points: the run has no fusion network and no generated image folder is known; pass --generated DIR to add generated images)"
        );
    } else if !has_fusion {
        println!(
            "(generated images, not fused ones: the run was trained with support_augment = \"{}\" and has no fusion network)",
            loaded.config.model.support_augment
        );
    }
    println!(
        "perplexity {perplexity:.1}, {} iterations, KL divergence {:.3}, run {} at epoch {}",
        args.iterations,
        result.kl_divergence,
        args.source.run.display(),
        loaded.epoch
    );
    println!(
        "classes: {}",
        class_names
            .iter()
            .enumerate()
            .map(|(c, name)| format!("{} ({})", name, color_name(c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("markers: square = support, triangle = {extra_name}, circle = query");
    println!("plot: {}", args.out.display());
    println!("coordinates: {}", csv_path.display());
    Ok(())
}

/// Returns a perplexity the point count allows: 30, or a third of the points minus 1 when that
/// is smaller, and at least 1.
fn default_perplexity(points: usize) -> f64 {
    DEFAULT_PERPLEXITY.min((points as f64 - 1.0) / 3.0).max(1.0)
}

/// Returns the store class of plotted class `class`.
fn store_class(points: &[Point], class: usize) -> usize {
    points
        .iter()
        .find(|p| p.class == class)
        .map(|p| p.store_class)
        .expect("every class has a support photo")
}

/// Picks the classes and support photos of episode 0 and, as queries, the other photos of each
/// class (the first `--queries` of them in file order).
fn plotted_episode(loaded: &LoadedRun, args: &TsneArgs) -> Result<Episode> {
    let shape = EpisodeShape {
        n_way: args.classes,
        n_shot: 1,
        n_query: 1,
    };
    let sampler = EpisodeSampler::new(&loaded.store, args.source.split, shape, args.source.seed)?;
    let drawn = sampler.episode(0, false);
    let mut query = Vec::new();
    for (&class, &support) in drawn.classes.iter().zip(&drawn.support) {
        let others = loaded.store.class_images[class]
            .iter()
            .copied()
            .filter(|&image| image != support);
        query.extend(others.take(args.queries.unwrap_or(usize::MAX)));
    }
    let flips = vec![false; drawn.support.len() + query.len()];
    Ok(Episode {
        classes: drawn.classes,
        support: drawn.support,
        query,
        flips,
    })
}

/// Returns the number of fused (or generated) images per support photo: `requested`, or every
/// generated image that all support photos have.
fn extra_count(loaded: &LoadedRun, episode: &Episode, requested: Option<usize>) -> Result<usize> {
    let Some(generated) = &loaded.generated else {
        return Ok(0);
    };
    let (fewest, photo) = episode
        .support
        .iter()
        .map(|&image| (generated.count(image), image))
        .min()
        .expect("an episode has support photos");
    match requested {
        Some(count) if count > fewest => bail!(
            "invalid --n-aug {count}: support photo {} has {fewest} generated images; expected at most {fewest}",
            photo_name(loaded, photo)
        ),
        Some(count) => Ok(count),
        None => Ok(fewest),
    }
}

/// Embeds the support photos, their fused (or generated) images and the queries with the
/// backbone, and returns the embeddings, row-major, with what each row is.
fn embed_points(
    loaded: &LoadedRun,
    episode: Episode,
    copies: usize,
    seed: u64,
) -> Result<(Vec<f32>, Vec<Point>)> {
    let side = loaded.side();
    let device = &loaded.device;
    let plan = SupportPlan {
        augment: if copies > 0 {
            SupportAugment::Generated
        } else {
            SupportAugment::None
        },
        copies,
        embedding_dim: 0,
        block_dropout: None,
        seed,
    };
    let prepared = plan.prepare(episode, 0, &loaded.store, loaded.generated.as_ref());
    let episode = &prepared.episode;
    let n_support = episode.support.len();

    let mut points = Vec::new();
    for (class, &image) in episode.support.iter().enumerate() {
        points.push(Point {
            kind: Kind::Support,
            class,
            store_class: episode.classes[class],
            image,
            generated_index: None,
        });
    }
    let mut images = vec![prepared.support.clone()];
    if let Some(generated) = &prepared.generated {
        let extra = match &loaded.model.fusion {
            Some(fusion) => {
                let support = to_tensor(&prepared.support, side, device);
                let [count, channels, height, width] = support.dims();
                let repeated = support
                    .reshape([count, 1, channels, height, width])
                    .repeat_dim(1, copies)
                    .reshape([count * copies, channels, height, width]);
                let (fused, _) = fusion.fuse(repeated, to_tensor(generated, side, device));
                to_host(fused)
            }
            None => generated.clone(),
        };
        images.push(extra);
        for slot in 0..n_support * copies {
            let class = slot / copies;
            points.push(Point {
                kind: Kind::Extra,
                class,
                store_class: episode.classes[class],
                image: episode.support[class],
                generated_index: Some(prepared.generated_choice[slot]),
            });
        }
    }
    images.push(prepared.query.clone());
    for &image in &episode.query {
        let store_class = loaded
            .store
            .class_images
            .iter()
            .position(|members| members.contains(&image))
            .expect("a query photo belongs to a class");
        let class = episode
            .classes
            .iter()
            .position(|&c| c == store_class)
            .expect("queries come from the episode's classes");
        points.push(Point {
            kind: Kind::Query,
            class,
            store_class,
            image,
            generated_index: None,
        });
    }

    let values: Vec<f32> = images.concat();
    let per_image = 3 * side * side;
    let mut embeddings = Vec::new();
    for chunk in values.chunks(BATCH * per_image) {
        let batch = to_tensor(chunk, side, device);
        embeddings.extend(to_host(loaded.model.backbone.forward(batch)));
    }
    if let Some(index) = embeddings.iter().position(|v| !v.is_finite()) {
        let dim = embeddings.len() / points.len();
        bail!(
            "the backbone returned a value that is NaN or infinite for point {}; the checkpoint may have diverged, so try another run",
            index / dim
        );
    }
    Ok((embeddings, points))
}

/// Writes one CSV row per point: the 2-D coordinates, the kind, the class, the photo and the
/// generated image used.
fn write_csv(
    path: &std::path::Path,
    loaded: &LoadedRun,
    points: &[Point],
    coordinates: &[[f64; 2]],
    extra_name: &str,
) -> Result<()> {
    let mut text = String::from("x,y,kind,class,photo,generated_index\n");
    for (point, [x, y]) in points.iter().zip(coordinates) {
        let kind = match point.kind {
            Kind::Support => "support",
            Kind::Extra => extra_name,
            Kind::Query => "query",
        };
        let class = &loaded.store.class_names[point.store_class];
        let generated = point
            .generated_index
            .map_or(String::new(), |k| k.to_string());
        writeln!(
            text,
            "{x:.6},{y:.6},{kind},{},{},{generated}",
            csv_field(class),
            csv_field(&photo_name(loaded, point.image))
        )
        .expect("writing to a String cannot fail");
    }
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

/// Quotes a CSV field that contains a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Returns the colour name of class `index` in [`CLASS_COLORS`] for the stdout legend.
fn color_name(index: usize) -> &'static str {
    [
        "blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan",
    ][index]
}
