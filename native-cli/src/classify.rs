//! `metairnet classify`.

use crate::common::{DeviceArgs, checkpoint_dir, open_run};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::{Tensor, TensorData};
use image::RgbImage;
use metairnet::bundle::{BundleManifest, MANIFEST_FILE, PROTOTYPES_FILE, WEIGHTS_FILE};
use metairnet::classify::{class_prototypes, classify_photos};
use metairnet::data::{DataError, Dataset, ImageSize, display_class_name, load_photo};
use metairnet::model::Backbone;
use metairnet::train::load_model;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("model").required(true).args(["run", "bundle"]))]
pub struct ClassifyArgs {
    /// Run folder created by `metairnet train`.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,

    /// Model bundle written by `metairnet export-web` (such as assets/web), instead of a run
    /// folder. Without --support, the query photos are scored against the bundle's built-in
    /// species.
    #[arg(long, value_name = "DIR", conflicts_with = "last")]
    bundle: Option<PathBuf>,

    /// Folder with one subfolder per species, each holding one or more photos of it. Required
    /// with --run.
    #[arg(long, value_name = "DIR", required_unless_present = "bundle")]
    support: Option<PathBuf>,

    /// Score against the bundle's built-in species as well as the --support species, as the
    /// browser demo does with its built-in species on. A support folder named like a built-in
    /// species (for example `Cardinal`) replaces it.
    #[arg(long)]
    builtin: bool,

    /// Photos to classify.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    query: Vec<PathBuf>,

    /// Use the run's newest checkpoint instead of its best one.
    #[arg(long)]
    last: bool,

    /// Print one JSON object per query photo, one per line: `query`, `predicted` (the species'
    /// folder name) and `scores`, a list of `{class, name, builtin, score}` sorted by score.
    /// A score is the softmax over species of minus the squared distance to each species'
    /// prototype, from 0 to 1; it is not a calibrated probability.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    device: DeviceArgs,
}

/// One line of `--json` output.
#[derive(Serialize)]
struct QueryResult {
    query: String,
    /// The folder name of the predicted species.
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
    /// Whether the species is one of the bundle's built-in species.
    builtin: bool,
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

/// The source of the backbone: a run's checkpoint or a bundle.
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

/// A species to score against: its folder name, the name shown, and whether it is built in.
struct Species {
    class: String,
    name: String,
    builtin: bool,
}

/// Reads the support folder's photos, one list per species.
fn support_photos(dir: &Path, size: ImageSize) -> Result<(Vec<Species>, Vec<Vec<RgbImage>>)> {
    if dir.is_file() {
        bail!(
            "--support {} is a file; pass a folder with one subfolder of photos per species",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!(
            "support folder {} not found; pass a folder with one subfolder of photos per species",
            dir.display()
        );
    }
    let support = Dataset::open(dir)
        .with_context(|| format!("cannot read the support folder {}", dir.display()))?;
    let mut species = Vec::new();
    let mut photos = Vec::new();
    for class in &support.classes {
        if class.images.is_empty() {
            bail!(
                "support class folder {} has no photos; add at least one photo or remove the folder",
                support.root.join(&class.name).display()
            );
        }
        let images = class
            .images
            .iter()
            .map(|path| read_photo(path, "support", size))
            .collect::<Result<Vec<_>>>()?;
        photos.push(images);
        species.push(Species {
            class: class.name.clone(),
            name: display_class_name(&class.name),
            builtin: false,
        });
    }
    Ok((species, photos))
}

pub fn run(args: ClassifyArgs, _quiet: bool) -> Result<()> {
    if args.builtin && args.bundle.is_none() {
        bail!(
            "--builtin scores against a bundle's built-in species; pass --bundle DIR (such as assets/web) instead of --run"
        );
    }
    let source = ModelSource::open(&args)?;
    let size = source.image_size();

    if let Some(folder) = args.query.iter().find(|path| path.is_dir()) {
        bail!(
            "--query {} is a folder; pass photo files (a shell pattern such as {}/*.jpg works)",
            folder.display(),
            folder.display()
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
    let (mut species, class_photos) = match &args.support {
        Some(dir) => support_photos(dir, size)?,
        None => (Vec::new(), Vec::new()),
    };
    let builtin = match &source {
        ModelSource::Bundle { manifest, dir } if args.builtin || args.support.is_none() => {
            let path = dir.join(PROTOTYPES_FILE);
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let values = manifest
                .read_prototypes(&bytes)
                .with_context(|| format!("cannot use {}", path.display()))?;
            // As in the browser demo, a support species named like a built-in one (ignoring case
            // and surrounding spaces) takes its place.
            let key = |name: &str| name.trim().to_lowercase();
            let replaced: HashSet<String> = species.iter().map(|s| key(&s.class)).collect();
            let dim = manifest.embedding_dim;
            let mut builtin_values = Vec::new();
            for (entry, row) in manifest.species.iter().zip(values.chunks_exact(dim)) {
                if replaced.contains(&key(&entry.name)) {
                    continue;
                }
                builtin_values.extend_from_slice(row);
                species.push(Species {
                    class: entry.class.clone(),
                    name: entry.name.clone(),
                    builtin: true,
                });
            }
            Some((builtin_values, dim))
        }
        _ => None,
    };
    if species.len() < 2 {
        let origin = match &args.support {
            Some(dir) => format!("the support folder {}", dir.display()),
            None => "the bundle".to_string(),
        };
        bail!(
            "{origin} has {} species; at least 2 are needed to choose between",
            species.len()
        );
    }
    let queries = args
        .query
        .iter()
        .map(|path| read_photo(path, "query", size))
        .collect::<Result<Vec<_>>>()?;

    let selected = args.device.select()?;
    let model = source.backbone(&selected.device)?;
    let mut parts = Vec::new();
    if !class_photos.is_empty() {
        parts.push(class_prototypes(
            &model,
            &class_photos,
            size,
            &selected.device,
        ));
    }
    if let Some((values, dim)) = builtin.filter(|(values, _)| !values.is_empty()) {
        let count = values.len() / dim;
        parts.push(Tensor::<2>::from_data(
            TensorData::new(values, [count, dim]),
            &selected.device,
        ));
    }
    let prototypes = Tensor::cat(parts, 0);
    let scores = classify_photos(&model, prototypes, &queries, size, &selected.device);

    for (path, row) in args.query.iter().zip(scores) {
        let mut ranked: Vec<ClassScore> = species
            .iter()
            .zip(row)
            .map(|(entry, score)| ClassScore {
                class: entry.class.clone(),
                name: entry.name.clone(),
                builtin: entry.builtin,
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
