//! `metairnet export-web`: writes a run's backbone and the prototypes of a dataset's species as a
//! model bundle for the browser demo (and for `classify --bundle`).

use crate::common::{DeviceArgs, checkpoint_dir, open_run};
use crate::progress::Bars;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use metairnet::bundle::{
    BUNDLE_FORMAT, BundleAccuracy, BundleManifest, BundleSource, BundleSpecies, MANIFEST_FILE,
    PROTOTYPES_FILE, WEIGHTS_FILE, prototype_bytes,
};
use metairnet::classify::embed_photos;
use metairnet::data::{Dataset, display_class_name, load_photo};
use metairnet::hash::fnv64_hex;
use metairnet::train::{Progress, load_model};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ExportWebArgs {
    /// Run folder created by `metairnet train`; its backbone is exported. Run `metairnet eval` on
    /// it first to record its test accuracy in the bundle.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,

    /// Dataset whose species become the built-in species: a CUB_200_2011 folder (or its parent),
    /// or a folder with one subfolder of photos per species (with --prototype-photos all).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,

    /// Folder to write model.json, backbone.bpk and prototypes.f32 into (created if missing;
    /// these three files are replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Photos that give each species' prototype: `train` (the photos that CUB's
    /// train_test_split.txt marks as training photos, so that its test photos stay unseen) or
    /// `all`.
    #[arg(long, value_name = "WHICH", default_value = "train")]
    prototype_photos: PrototypePhotos,

    /// Export the newest checkpoint instead of the best one.
    #[arg(long)]
    last: bool,

    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PrototypePhotos {
    Train,
    All,
}

pub fn run(args: ExportWebArgs, quiet: bool) -> Result<()> {
    let run = open_run(&args.run)?;
    let config = run.config()?;
    let info = run.info()?;
    let size = config.model.image_size;
    let (epoch, checkpoint) = checkpoint_dir(&run, args.last)?;
    let dataset = Dataset::open(&args.data)
        .with_context(|| format!("cannot read the dataset {}", args.data.display()))?;
    let (photos, which) = prototype_photos(&dataset, args.prototype_photos)?;
    if args.out.is_file() {
        bail!(
            "--out {} is a file; pass a folder for the bundle",
            args.out.display()
        );
    }

    let selected = args.device.select()?;
    let backbone = load_model(&checkpoint, &config, &selected.device)?
        .valid()
        .backbone;

    let bars = Bars::new(quiet);
    let total: usize = photos.iter().map(Vec::len).sum();
    bars.begin("prototypes", total as u64);
    let mut prototypes = Vec::with_capacity(dataset.classes.len() * backbone_dim(&config));
    let mut species = Vec::new();
    for (class, paths) in dataset.classes.iter().zip(&photos) {
        let images = paths
            .iter()
            .map(|path| {
                load_photo(path, size).with_context(|| {
                    format!("cannot use photo {} of species {}", path.display(), class.name)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<_> = images.iter().collect();
        let prototype = embed_photos(&backbone, &refs, size, &selected.device).mean_dim(0);
        prototypes.extend(
            prototype
                .into_data()
                .try_into_vec::<f32>()
                .expect("embeddings are f32"),
        );
        species.push(BundleSpecies {
            class: class.name.clone(),
            name: display_class_name(&class.name),
            photos: paths.len(),
        });
        bars.advance(paths.len() as u64);
    }
    bars.finish();

    let mut store = BurnpackStore::from_bytes(None);
    backbone
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot encode the backbone's weights: {e}"))?;
    let weights = store
        .get_bytes()
        .map_err(|e| anyhow::anyhow!("cannot encode the backbone's weights: {e}"))?
        .to_vec();
    let prototype_file = prototype_bytes(&prototypes);
    let embedding_dim = prototypes.len() / species.len();

    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        backbone: config.model.backbone,
        image_size: size,
        embedding_dim,
        weights_fnv64: fnv64_hex(&weights),
        prototypes_fnv64: fnv64_hex(&prototype_file),
        species,
        source: BundleSource {
            // Paths as given, so that the shipped manifest names no folder of the exporting machine.
            run: args.run.display().to_string(),
            checkpoint: format!("checkpoints/{}", checkpoint_name(&checkpoint)),
            seed: info.seed,
            trained_by: info.git_commit.clone(),
            exported_by: metairnet::GIT_COMMIT.to_string(),
            data: args.data.display().to_string(),
            prototype_photos: which,
        },
        accuracy: recorded_accuracy(&run.eval_dir(), epoch),
    };
    if manifest.accuracy.is_none() {
        log::warn!(
            "no novel-class evaluation of epoch {epoch} found in {}; run `metairnet eval --data {} --run {}{}` first to record the accuracy in the bundle",
            run.eval_dir().display(),
            args.data.display(),
            args.run.display(),
            if args.last { " --last" } else { "" }
        );
    }

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let manifest_text = serde_json::to_string_pretty(&manifest)? + "\n";
    // The manifest goes last: it names the other files' hashes, so a reader never pairs a new
    // manifest with old weights.
    for (name, bytes) in [
        (WEIGHTS_FILE, weights.as_slice()),
        (PROTOTYPES_FILE, prototype_file.as_slice()),
        (MANIFEST_FILE, manifest_text.as_bytes()),
    ] {
        write_replacing(&args.out.join(name), bytes)?;
    }
    println!(
        "wrote {} ({} species, {} backbone at {}x{}, weights {:.1} KiB, prototypes {:.1} KiB)",
        args.out.display(),
        manifest.species.len(),
        manifest.backbone,
        size.pixels(),
        size.pixels(),
        weights.len() as f64 / 1024.0,
        prototype_file.len() as f64 / 1024.0
    );
    Ok(())
}

fn backbone_dim(config: &metairnet::train::TrainConfig) -> usize {
    config
        .model
        .backbone
        .embedding_dim(config.model.image_size.pixels() as usize)
}

fn checkpoint_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes a file through a temporary name, so that an interrupted export leaves the old file.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Chooses each species' prototype photos and describes the choice for the manifest.
fn prototype_photos(
    dataset: &Dataset,
    which: PrototypePhotos,
) -> Result<(Vec<Vec<PathBuf>>, String)> {
    let all: Vec<Vec<PathBuf>> = dataset.classes.iter().map(|c| c.images.clone()).collect();
    if which == PrototypePhotos::All {
        return Ok((all, "every photo of the species".to_string()));
    }
    let cub_dir = dataset.root.parent().unwrap_or(&dataset.root);
    let split_path = cub_dir.join("train_test_split.txt");
    if !cub_dir.join("images.txt").is_file() {
        bail!(
            "--prototype-photos train needs a CUB_200_2011 folder with images.txt and train_test_split.txt, but {} has one subfolder of photos per species; pass --prototype-photos all to use every photo",
            dataset.root.display()
        );
    }
    if !split_path.is_file() {
        bail!(
            "--prototype-photos train needs {}, which is missing; pass --prototype-photos all to use every photo",
            split_path.display()
        );
    }
    let images = read_pairs(&cub_dir.join("images.txt"))?;
    let flags = read_pairs(&split_path)?;
    let training: HashSet<PathBuf> = images
        .iter()
        .filter(|(id, _)| flags.get(*id).map(String::as_str) == Some("1"))
        .map(|(_, relative)| dataset.root.join(relative))
        .collect();
    let chosen: Vec<Vec<PathBuf>> = all
        .into_iter()
        .map(|paths| paths.into_iter().filter(|p| training.contains(p)).collect())
        .collect();
    if let Some((class, _)) = dataset
        .classes
        .iter()
        .zip(&chosen)
        .find(|(_, paths)| paths.is_empty())
    {
        bail!(
            "species {} has no training photo in {}; pass --prototype-photos all",
            class.name,
            split_path.display()
        );
    }
    Ok((
        chosen,
        "the photos marked as training photos in train_test_split.txt".to_string(),
    ))
}

/// Reads a CUB metadata file of `id value` lines.
fn read_pairs(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pairs = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((id, value)) = line.split_once(' ') else {
            bail!(
                "{} line {}: expected `id value`, found {line:?}",
                path.display(),
                number + 1
            );
        };
        pairs.insert(id.to_string(), value.trim().to_string());
    }
    Ok(pairs)
}

/// Finds the newest `metairnet eval` result of `epoch` on novel classes, 5-way 1-shot.
fn recorded_accuracy(eval_dir: &Path, epoch: usize) -> Option<BundleAccuracy> {
    let mut best: Option<(u64, BundleAccuracy)> = None;
    for entry in std::fs::read_dir(eval_dir).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let number = |key: &str| value.get(key).and_then(serde_json::Value::as_f64);
        let plain_support = value
            .get("support_augment")
            .and_then(serde_json::Value::as_str)
            .is_none_or(|kind| kind == "none");
        let matches = number("checkpoint_epoch") == Some(epoch as f64)
            && value.get("split").and_then(serde_json::Value::as_str) == Some("novel")
            && number("n_way") == Some(5.0)
            && number("n_shot") == Some(1.0)
            && plain_support;
        if !matches {
            continue;
        }
        let accuracy = BundleAccuracy {
            accuracy: number("accuracy")?,
            ci95: number("ci95")?,
            episodes: number("episodes")? as usize,
            split: "novel".to_string(),
            n_way: 5,
            n_shot: 1,
            n_query: number("n_query")? as usize,
            seed: number("seed")? as u64,
        };
        let time = number("unix_time").unwrap_or(0.0) as u64;
        if best.as_ref().is_none_or(|(t, _)| time >= *t) {
            best = Some((time, accuracy));
        }
    }
    best.map(|(_, accuracy)| accuracy)
}
