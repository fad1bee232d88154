//! `metairnet classify`.

use crate::common::{DeviceArgs, checkpoint_dir, open_run};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use image::RgbImage;
use metairnet::bundle::{BundleManifest, MANIFEST_FILE, WEIGHTS_FILE};
use metairnet::classify::{class_prototypes, classify_photos};
use metairnet::data::{DataError, Dataset, ImageSize, display_class_name, load_photo};
use metairnet::model::Backbone;
use metairnet::train::load_model;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("model").required(true).args(["run", "bundle"]))]
pub struct ClassifyArgs {
    /// Run folder created by `metairnet train`.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,

    /// Model bundle written by `metairnet export-web` (such as assets/web), instead of a run
    /// folder. Only the bundle's backbone is used; its built-in species are not.
    #[arg(long, value_name = "DIR", conflicts_with = "last")]
    bundle: Option<PathBuf>,

    /// Folder with one subfolder per species, each holding one or more photos of it.
    #[arg(long, value_name = "DIR")]
    support: PathBuf,

    /// Photos to classify.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    query: Vec<PathBuf>,

    /// Use the run's newest checkpoint instead of its best one.
    #[arg(long)]
    last: bool,

    /// Print one JSON object per query photo, one per line: `query`, `predicted` (the support
    /// folder name) and `scores`, a list of `{class, name, score}` sorted by score.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    device: DeviceArgs,
}

/// One line of `--json` output.
#[derive(Serialize)]
struct QueryResult {
    query: String,
    /// The support folder name of the predicted class.
    predicted: String,
    /// Every class with its softmax score, best first.
    scores: Vec<ClassScore>,
}

#[derive(Serialize)]
struct ClassScore {
    /// The support folder name, e.g. `017.Cardinal`.
    class: String,
    /// The folder name without a numeric prefix and underscores, e.g. `Cardinal`.
    name: String,
    score: f32,
}

/// Reads one photo, with an error that speaks of support and query photos rather than datasets.
fn read_photo(path: &Path, role: &str, size: ImageSize) -> Result<RgbImage> {
    match load_photo(path, size) {
        Ok(photo) => Ok(photo),
        Err(DataError::MissingImage { .. }) => bail!("{role} photo {} not found", path.display()),
        Err(DataError::BadImage { reason, .. }) => {
            bail!(
                "{role} photo {} could not be used: {reason}; replace it with a JPEG or PNG photo",
                path.display()
            )
        }
        Err(other) => Err(other.into()),
    }
}

/// Where the backbone comes from.
enum ModelSource {
    Run {
        config: Box<metairnet::train::TrainConfig>,
        checkpoint: PathBuf,
    },
    Bundle {
        manifest: BundleManifest,
        dir: PathBuf,
    },
}

impl ModelSource {
    fn open(args: &ClassifyArgs) -> Result<ModelSource> {
        if let Some(dir) = &args.bundle {
            let path = dir.join(MANIFEST_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read {}; pass a folder written by `metairnet export-web`",
                    path.display()
                )
            })?;
            let manifest = BundleManifest::from_json(&text)
                .with_context(|| format!("cannot use {}", path.display()))?;
            return Ok(ModelSource::Bundle {
                manifest,
                dir: dir.clone(),
            });
        }
        let run = open_run(args.run.as_ref().expect("clap requires --run or --bundle"))?;
        let config = run.config()?;
        let (_, checkpoint) = checkpoint_dir(&run, args.last)?;
        Ok(ModelSource::Run {
            config: Box::new(config),
            checkpoint,
        })
    }

    fn image_size(&self) -> ImageSize {
        match self {
            ModelSource::Run { config, .. } => config.model.image_size,
            ModelSource::Bundle { manifest, .. } => manifest.image_size,
        }
    }

    fn backbone(&self, device: &burn::prelude::Device) -> Result<Backbone> {
        match self {
            // Photos given on the command line have no generated images, so the support set is
            // the photos alone, also for a MetaIRNet run.
            ModelSource::Run { config, checkpoint } => {
                Ok(load_model(checkpoint, config, device)?.valid().backbone)
            }
            ModelSource::Bundle { manifest, dir } => {
                let path = dir.join(WEIGHTS_FILE);
                let weights = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                manifest
                    .load_backbone(weights, device)
                    .with_context(|| format!("cannot use {}", path.display()))
            }
        }
    }
}

pub fn run(args: ClassifyArgs, _quiet: bool) -> Result<()> {
    let source = ModelSource::open(&args)?;
    let size = source.image_size();

    if args.support.is_file() {
        bail!(
            "--support {} is a file; pass a folder with one subfolder of photos per species",
            args.support.display()
        );
    }
    if !args.support.is_dir() {
        bail!(
            "support folder {} not found; pass a folder with one subfolder of photos per species",
            args.support.display()
        );
    }
    // Name every missing query photo at once, before any work.
    let missing: Vec<String> = args
        .query
        .iter()
        .filter(|path| !path.is_file())
        .map(|path| path.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!("query photo not found: {}", missing.join(", "));
    }
    let support = Dataset::open(&args.support)
        .with_context(|| format!("cannot read the support folder {}", args.support.display()))?;
    let mut class_photos = Vec::new();
    for class in &support.classes {
        if class.images.is_empty() {
            bail!(
                "support class folder {} has no photos; add at least one photo or remove the folder",
                support.root.join(&class.name).display()
            );
        }
        let photos = class
            .images
            .iter()
            .map(|path| read_photo(path, "support", size))
            .collect::<Result<Vec<_>>>()?;
        class_photos.push(photos);
    }
    if class_photos.len() < 2 {
        bail!(
            "the support folder {} has {} class; at least 2 are needed to choose between",
            args.support.display(),
            class_photos.len()
        );
    }
    let queries = args
        .query
        .iter()
        .map(|path| read_photo(path, "query", size))
        .collect::<Result<Vec<_>>>()?;

    let selected = args.device.select()?;
    let model = source.backbone(&selected.device)?;
    let prototypes = class_prototypes(&model, &class_photos, size, &selected.device);
    let scores = classify_photos(&model, prototypes, &queries, size, &selected.device);

    for (path, row) in args.query.iter().zip(scores) {
        let mut ranked: Vec<ClassScore> = support
            .classes
            .iter()
            .zip(row)
            .map(|(class, score)| ClassScore {
                class: class.name.clone(),
                name: display_class_name(&class.name),
                score,
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        let result = QueryResult {
            query: path.display().to_string(),
            predicted: ranked[0].class.clone(),
            scores: ranked,
        };
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            let best = &result.scores[0];
            println!(
                "{}: {} ({:.1}%)",
                result.query,
                best.name,
                100.0 * best.score
            );
            for entry in result.scores.iter().take(5) {
                println!("  {:>6.2}%  {}", 100.0 * entry.score, entry.name);
            }
        }
    }
    Ok(())
}
