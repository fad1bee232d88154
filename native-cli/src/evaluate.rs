//! `metairnet eval`.

use crate::common::{
    DataArgs, DeviceArgs, absolute, check_episode_fits, checkpoint_dir, load_generated, open_run,
};
use crate::progress::Bars;
use anyhow::{Context, Result};
use metairnet::data::Split;
use metairnet::episodes::EpisodeShape;
use metairnet::model::SupportAugment;
use metairnet::train::{EpisodeData, EvalOptions, EvalSummary, SupportPlan, evaluate, load_model};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The largest `--episodes`; 100000 episodes already give a confidence interval below 0.1 points.
const MAX_EPISODES: usize = 100_000;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Run folder created by `metairnet train`.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,

    /// Classes to test on: novel (test), val (validation), base (training) or all.
    #[arg(long, default_value = "novel")]
    split: Split,

    /// Number of test episodes.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 600,
        value_name = "N"
    )]
    episodes: usize,

    /// Seed of the test episodes; the same seed gives every model the same episodes.
    #[arg(long, allow_negative_numbers = true, default_value_t = 123)]
    seed: u64,

    /// Classes per test episode. The test protocol is fixed, not taken from training, so that
    /// every model is scored on the same episodes.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5)]
    n_way: usize,

    /// Support photos per class.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    n_shot: usize,

    /// Query photos per class.
    #[arg(long, allow_negative_numbers = true, default_value_t = 16)]
    n_query: usize,

    /// Support augmentation at test time: none, flip, gaussian, generated, mixup or
    /// fusion [default: the run's training setting]. Test-time flip, gaussian and generated
    /// turn a ProtoNet run into the support-augmentation baselines; fusion needs a MetaIRNet
    /// run.
    #[arg(long, value_name = "KIND")]
    support_augment: Option<SupportAugment>,

    /// Extra support entries per support photo; flip ignores it and adds one mirrored copy
    /// [default: the run's training setting].
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    n_aug: Option<usize>,

    /// Folder of generated images [default: the one the run was trained with].
    #[arg(long, value_name = "DIR")]
    generated: Option<PathBuf>,

    /// Score the newest checkpoint instead of the best one.
    #[arg(long)]
    last: bool,

    /// Print one JSON object (accuracy and ci95 in percent) instead of text.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: EvalArgs, quiet: bool) -> Result<()> {
    if !(1..=MAX_EPISODES).contains(&args.episodes) {
        anyhow::bail!(
            "invalid --episodes {}; expected 1 to {MAX_EPISODES}",
            args.episodes
        );
    }
    if args.n_way < 2 {
        anyhow::bail!("invalid --n-way {}; expected at least 2", args.n_way);
    }
    if args.n_shot == 0 || args.n_query == 0 {
        anyhow::bail!(
            "invalid --n-shot {} or --n-query {}; both must be at least 1",
            args.n_shot,
            args.n_query
        );
    }
    let bars = Bars::new(quiet || args.json);
    let run = open_run(&args.run)?;
    if let Ok(info) = run.info() {
        // A dataset may be given as CUB_200_2011 or as its parent, so a path inside the other
        // counts as the same data.
        let same = |a: &Path, b: &Path| {
            let (a, b) = (absolute(a), absolute(b));
            a.starts_with(&b) || b.starts_with(&a)
        };
        if !same(&info.data, &args.data.data) {
            log::warn!(
                "run {} was trained on {}; evaluating on {}",
                args.run.display(),
                info.data.display(),
                args.data.data.display()
            );
        }
    }
    let trained = run.config()?;
    let mut config = trained.clone();
    if let Some(kind) = args.support_augment {
        config.model.support_augment = kind;
    }
    if let Some(count) = args.n_aug {
        config.model.n_aug = count;
    }
    if let Some(dir) = &args.generated {
        config.model.generated = Some(absolute(dir));
    }
    let augment = config.model.support_augment;
    if augment == SupportAugment::Fusion && trained.model.support_augment != SupportAugment::Fusion
    {
        anyhow::bail!(
            "invalid --support-augment fusion: run {} has no fusion network; choose none, flip, gaussian, generated or mixup",
            args.run.display()
        );
    }
    if augment.uses_copies() && config.model.n_aug == 0 {
        anyhow::bail!(
            "invalid --n-aug 0 with --support-augment {augment}; pass --n-aug 1 or more, or another --support-augment"
        );
    }
    let (epoch, checkpoint) = checkpoint_dir(&run, args.last)?;
    let selected = args.device.select()?;
    let model = load_model(&checkpoint, &trained, &selected.device)?;

    let shape = EpisodeShape {
        n_way: args.n_way,
        n_shot: args.n_shot,
        n_query: args.n_query,
    };
    let extra_per_support = augment.extra_images_per_support(config.model.n_aug);
    check_episode_fits(&selected, &shape, extra_per_support, config.model.image_size)?;
    let dataset = metairnet::data::Dataset::open(&args.data.data)?;
    let store = crate::common::load_split(
        &dataset,
        args.split,
        config.model.image_size,
        &args.data,
        &bars,
    )?;
    let generated = load_generated(&config, &dataset, &store, args.split, &bars)?;
    let plan = SupportPlan {
        augment,
        copies: config.model.n_aug,
        embedding_dim: config
            .model
            .backbone
            .embedding_dim(config.model.image_size.pixels() as usize),
        block_dropout: None,
        seed: args.seed,
    };
    let options = EvalOptions {
        split: args.split,
        episodes: args.episodes,
        seed: args.seed,
    };
    // Fail before the episodes run, not after, when the results cannot be saved.
    let eval_dir = run.eval_dir();
    std::fs::create_dir_all(&eval_dir)
        .with_context(|| format!("failed to create {}", eval_dir.display()))?;
    let probe = eval_dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("cannot write evaluation results in {}", eval_dir.display()))?;

    let started = Instant::now();
    let data = EpisodeData {
        photos: &store,
        generated: generated.as_ref(),
    };
    let (per_episode, accuracy, ci95) =
        evaluate(&model, data, shape, &plan, &options, &selected.device, &bars)?;
    let summary = EvalSummary {
        accuracy,
        ci95,
        episodes: args.episodes,
        split: args.split,
        seed: args.seed,
        n_way: shape.n_way,
        n_shot: shape.n_shot,
        n_query: shape.n_query,
        support_augment: augment,
        n_aug: config.model.n_aug,
        checkpoint_epoch: epoch,
        data: args.data.data.display().to_string(),
        data_fingerprint: store.fingerprint(),
        device: selected.description.clone(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        seconds: started.elapsed().as_secs_f64(),
        per_episode,
    };

    // The time in the name keeps every evaluation, also of the same checkpoint on other data.
    let file = eval_dir.join(format!(
        "{}-{}way{}shot{}query-seed{}-{}ep-epoch{}{}-{}.json",
        args.split,
        shape.n_way,
        shape.n_shot,
        shape.n_query,
        args.seed,
        args.episodes,
        epoch,
        match augment {
            SupportAugment::None => String::new(),
            other => format!("-{other}{}", config.model.n_aug),
        },
        summary.unix_time
    ));
    let mut bytes = serde_json::to_vec_pretty(&summary)?;
    bytes.push(b'\n');
    // A failed write still shows the score, since the episodes have run.
    let saved =
        std::fs::write(&file, bytes).with_context(|| format!("failed to write {}", file.display()));

    if args.json {
        let mut object = serde_json::to_value(&summary)?;
        if let Some(map) = object.as_object_mut() {
            map.remove("per_episode");
            map.insert("per_episode_file".into(), file.display().to_string().into());
        }
        println!("{object}");
    } else {
        println!(
            "{}-way {}-shot accuracy on {} {} episode{} (seed {}): {:.2}% ± {} (95% CI), checkpoint of epoch {}",
            shape.n_way,
            shape.n_shot,
            args.episodes,
            args.split,
            if args.episodes == 1 { "" } else { "s" },
            args.seed,
            accuracy,
            // One episode has no spread to estimate an interval from.
            if args.episodes > 1 {
                format!("{ci95:.2}")
            } else {
                "n/a".to_string()
            },
            epoch
        );
        if saved.is_ok() {
            println!("per-episode accuracies: {}", file.display());
        }
    }
    saved
}
