//! `metairnet classify`.

use crate::common::{DeviceArgs, checkpoint_dir, open_run};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use metairnet::classify::{class_prototypes, classify_photos};
use metairnet::data::{Dataset, display_class_name, load_photo};
use metairnet::train::load_model;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// Run folder created by `metairnet train`.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,

    /// Folder with one subfolder per species, each holding one or more photos of it.
    #[arg(long, value_name = "DIR")]
    support: PathBuf,

    /// Photos to classify.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    query: Vec<PathBuf>,

    /// Use the newest checkpoint instead of the best one.
    #[arg(long)]
    last: bool,

    /// Print one JSON object per query photo, one per line.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Serialize)]
struct QueryResult {
    query: String,
    predicted: String,
    /// Class folder names with their softmax scores, best first.
    scores: Vec<(String, f32)>,
}

pub fn run(args: ClassifyArgs, _quiet: bool) -> Result<()> {
    let run = open_run(&args.run)?;
    let config = run.config()?;
    let size = config.model.image_size;
    let (_, checkpoint) = checkpoint_dir(&run, args.last)?;

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
            .map(|path| load_photo(path, size))
            .collect::<Result<Vec<_>, _>>()?;
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
        .map(|path| load_photo(path, size))
        .collect::<Result<Vec<_>, _>>()?;

    let selected = args.device.select()?;
    let model = load_model(&checkpoint, &selected.device)?.valid();
    let prototypes = class_prototypes(&model, &class_photos, size, &selected.device);
    let scores = classify_photos(&model, prototypes, &queries, size, &selected.device);

    for (path, row) in args.query.iter().zip(scores) {
        let mut ranked: Vec<(String, f32)> = support
            .classes
            .iter()
            .map(|class| class.name.clone())
            .zip(row)
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let result = QueryResult {
            query: path.display().to_string(),
            predicted: ranked[0].0.clone(),
            scores: ranked,
        };
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            println!(
                "{}: {} ({:.1}%)",
                result.query,
                display_class_name(&result.predicted),
                100.0 * result.scores[0].1
            );
            for (name, score) in result.scores.iter().take(5) {
                println!("  {:>6.2}%  {}", 100.0 * score, display_class_name(name));
            }
        }
    }
    Ok(())
}
