//! `metairnet eval`.

use crate::common::{DataArgs, DeviceArgs, check_episode_fits, checkpoint_dir, open_run};
use crate::progress::Bars;
use anyhow::{Context, Result};
use metairnet::data::Split;
use metairnet::train::{EvalOptions, EvalSummary, evaluate, load_model};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Run folder created by `metairnet train`.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,

    /// Classes to test on: novel (test), val or base.
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

    /// Support photos per class [default: the run's training value].
    #[arg(long, allow_negative_numbers = true)]
    n_shot: Option<usize>,

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
    if args.episodes == 0 {
        anyhow::bail!("invalid --episodes 0; expected at least 1");
    }
    let bars = Bars::new(quiet || args.json);
    let run = open_run(&args.run)?;
    let config = run.config()?;
    let (epoch, checkpoint) = checkpoint_dir(&run, args.last)?;
    let selected = args.device.select()?;
    let model = load_model(&checkpoint, &selected.device)?;

    let mut shape = config.episodes;
    if let Some(n_shot) = args.n_shot {
        shape.n_shot = n_shot;
    }
    if shape.n_shot == 0 {
        anyhow::bail!("invalid --n-shot 0; expected at least 1");
    }
    check_episode_fits(&selected, &shape, config.model.image_size)?;
    let store = args
        .data
        .load_split(args.split, config.model.image_size, &bars)?;
    let options = EvalOptions {
        split: args.split,
        episodes: args.episodes,
        seed: args.seed,
    };
    let started = Instant::now();
    let (per_episode, accuracy, ci95) =
        evaluate(&model, &store, shape, &options, &selected.device, &bars)?;
    let summary = EvalSummary {
        accuracy,
        ci95,
        episodes: args.episodes,
        split: args.split,
        seed: args.seed,
        n_way: shape.n_way,
        n_shot: shape.n_shot,
        n_query: shape.n_query,
        checkpoint_epoch: epoch,
        device: selected.description.clone(),
        seconds: started.elapsed().as_secs_f64(),
        per_episode,
    };

    let eval_dir = run.eval_dir();
    std::fs::create_dir_all(&eval_dir)
        .with_context(|| format!("failed to create {}", eval_dir.display()))?;
    let file = eval_dir.join(format!(
        "{}-{}way{}shot-seed{}-{}ep-epoch{}.json",
        args.split, shape.n_way, shape.n_shot, args.seed, args.episodes, epoch
    ));
    let mut bytes = serde_json::to_vec_pretty(&summary)?;
    bytes.push(b'\n');
    std::fs::write(&file, bytes).with_context(|| format!("failed to write {}", file.display()))?;

    if args.json {
        let mut object = serde_json::to_value(&summary)?;
        if let Some(map) = object.as_object_mut() {
            map.remove("per_episode");
            map.insert("per_episode_file".into(), file.display().to_string().into());
        }
        println!("{object}");
    } else {
        println!(
            "{}-way {}-shot accuracy on {} {} episodes (seed {}): {:.2}% ± {:.2} (95% CI), checkpoint of epoch {}",
            shape.n_way, shape.n_shot, args.episodes, args.split, args.seed, accuracy, ci95, epoch
        );
        println!("per-episode accuracies: {}", file.display());
    }
    Ok(())
}
