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
use metairnet::data::{Dataset, Split, display_class_name, load_photo, write_atomically};
use metairnet::hash::fnv64_hex;
use metairnet::model::SupportAugment;
use metairnet::train::{EvalSummary, Progress, load_model};
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
    let (photos, description) = prototype_photos(&dataset, args.prototype_photos)?;
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
    let mut prototypes = Vec::new();
    let mut species = Vec::new();
    for (class, paths) in dataset.classes.iter().zip(&photos) {
        let images = paths
            .iter()
            .map(|path| {
                load_photo(path, size).with_context(|| {
                    format!(
                        "cannot use photo {} of species {}",
                        path.display(),
                        class.name
                    )
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
            prototype_photos: description,
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
        let path = args.out.join(name);
        write_atomically(&path, bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
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

fn checkpoint_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Chooses each species' prototype photos and describes the choice for the manifest.
fn prototype_photos(
    dataset: &Dataset,
    choice: PrototypePhotos,
) -> Result<(Vec<Vec<PathBuf>>, String)> {
    if choice == PrototypePhotos::All {
        let all = dataset.classes.iter().map(|c| c.images.clone()).collect();
        return Ok((all, "every photo of the species".to_string()));
    }
    let training = dataset
        .official_training_photos()
        .context("--prototype-photos train reads CUB's train_test_split.txt; pass --prototype-photos all to use every photo")?;
    let Some(training) = training else {
        bail!(
            "--prototype-photos train needs a CUB_200_2011 folder with images.txt and train_test_split.txt, but {} has one subfolder of photos per species; pass --prototype-photos all to use every photo",
            dataset.root.display()
        );
    };
    if let Some(class) = training.classes.iter().find(|c| c.images.is_empty()) {
        bail!(
            "species {} has no photo marked as a training photo in train_test_split.txt; pass --prototype-photos all",
            class.name
        );
    }
    let chosen = training.classes.into_iter().map(|c| c.images).collect();
    Ok((
        chosen,
        "the photos marked as training photos in train_test_split.txt".to_string(),
    ))
}

/// Finds the newest `metairnet eval` result of `epoch` on novel classes, 5-way 1-shot, with the
/// support photos alone. Files that are not evaluation results are passed over.
fn recorded_accuracy(eval_dir: &Path, epoch: usize) -> Option<BundleAccuracy> {
    let summaries = std::fs::read_dir(eval_dir)
        .ok()?
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|text| serde_json::from_str::<EvalSummary>(&text).ok());
    let newest = summaries
        .filter(|summary| {
            summary.checkpoint_epoch == epoch
                && summary.split == Split::Novel
                && summary.n_way == 5
                && summary.n_shot == 1
                && summary.support_augment == SupportAugment::None
        })
        .max_by_key(|summary| summary.unix_time)?;
    Some(BundleAccuracy {
        accuracy: newest.accuracy,
        ci95: newest.ci95,
        episodes: newest.episodes,
        split: "novel".to_string(),
        n_way: newest.n_way,
        n_shot: newest.n_shot,
        n_query: newest.n_query,
        seed: newest.seed,
    })
}
