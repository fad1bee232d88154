//! `metairnet train`.

use crate::common::{
    DataArgs, DeviceArgs, absolute, check_episode_fits, load_generated, load_split,
};
use crate::progress::Bars;
use anyhow::{Context, Result, bail};
use metairnet::data::{Dataset, Split};
use metairnet::train::{RunFolder, RunInfo, TrainConfig, TrainOptions, check_episode_data, train};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Run folder for the configuration, metrics and checkpoints. If it already contains a run,
    /// training resumes after its newest checkpoint.
    #[arg(long, value_name = "DIR")]
    run: PathBuf,

    /// TOML configuration file; flags below override its values. See assets/configs/.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Number of epochs [config default: 10].
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<usize>,

    /// Training episodes per epoch [config default: 1000].
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    episodes_per_epoch: Option<usize>,

    /// Base learning rate of Adam, before the schedule [config default: 0.001].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,

    /// Seed of weight initialisation and training episodes [config default: 0].
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,

    /// Classes per episode [config default: 5].
    #[arg(long, allow_negative_numbers = true)]
    n_way: Option<usize>,

    /// Support photos per class [config default: 1].
    #[arg(long, allow_negative_numbers = true)]
    n_shot: Option<usize>,

    /// Query photos per class [config default: 16].
    #[arg(long, allow_negative_numbers = true)]
    n_query: Option<usize>,

    /// Validation episodes after each epoch [config default: 100].
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    val_episodes: Option<usize>,

    /// Support augmentation in training and validation: none
    /// (ProtoNet), flip, gaussian, generated, mixup or fusion (MetaIRNet) [config default:
    /// none].
    #[arg(long, value_name = "KIND")]
    support_augment: Option<metairnet::model::SupportAugment>,

    /// Extra support entries (generated, mixed, fused or noisy copies) per support photo; flip
    /// ignores it and adds one mirrored copy [config default: 1].
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    n_aug: Option<usize>,

    /// Folder of generated images written by `metairnet generate`, for the generated, mixup
    /// and fusion augmentations.
    #[arg(long, value_name = "DIR")]
    generated: Option<PathBuf>,

    /// Run folder (a ProtoNet run, say) whose best checkpoint gives the backbone its first
    /// weights: the second stage of the two-stage recipe.
    #[arg(long, value_name = "DIR")]
    init_from: Option<PathBuf>,

    #[command(flatten)]
    device: DeviceArgs,
}

impl TrainArgs {
    /// Applies the flags that were given to `config`.
    fn apply_overrides(&self, config: &mut TrainConfig) {
        if let Some(epochs) = self.epochs {
            config.training.epochs = epochs;
        }
        if let Some(count) = self.episodes_per_epoch {
            config.training.episodes_per_epoch = count;
        }
        if let Some(lr) = self.lr {
            config.optimizer.lr = lr;
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(n_way) = self.n_way {
            config.episodes.n_way = n_way;
        }
        if let Some(n_shot) = self.n_shot {
            config.episodes.n_shot = n_shot;
        }
        if let Some(n_query) = self.n_query {
            config.episodes.n_query = n_query;
        }
        if let Some(count) = self.val_episodes {
            config.validation.episodes = count;
        }
        if let Some(kind) = self.support_augment {
            config.model.support_augment = kind;
        }
        if let Some(count) = self.n_aug {
            config.model.n_aug = count;
        }
        if let Some(dir) = &self.generated {
            config.model.generated = Some(dir.clone());
        }
        if let Some(dir) = &self.init_from {
            config.init.from_run = Some(dir.clone());
        }
    }
}

pub fn run(args: TrainArgs, quiet: bool) -> Result<()> {
    let bars = Bars::new(quiet);
    let resuming = RunFolder::exists(&args.run);
    let config = if resuming {
        resumed_config(&args)?
    } else {
        RunFolder::check_creatable(&args.run)?;
        let mut config = match &args.config {
            Some(path) => TrainConfig::from_file(path)?,
            None => TrainConfig::default(),
        };
        args.apply_overrides(&mut config);
        make_paths_absolute(&mut config);
        config
    };
    config.validate()?;

    let selected = args.device.select()?;
    let extra_per_support = config
        .model
        .support_augment
        .extra_images_per_support(config.model.n_aug);
    check_episode_fits(
        &selected,
        &config.episodes,
        extra_per_support,
        config.model.image_size,
    )?;
    let dataset = Dataset::open(&args.data.data)?;
    let size = config.model.image_size;
    let base = load_split(&dataset, Split::Base, size, &args.data, &bars)?;
    let val = load_split(&dataset, Split::Val, size, &args.data, &bars)?;
    check_episode_data(&config, &base, &val)?;
    let base_generated = load_generated(&config, &dataset, &base, Split::Base, &bars)?;
    let val_generated = load_generated(&config, &dataset, &val, Split::Val, &bars)?;
    let fingerprint = format!("{}-{}", base.fingerprint(), val.fingerprint());

    let run = if resuming {
        RunFolder::open(&args.run)?
    } else {
        let info = RunInfo::new(
            config.seed,
            &args.data.data,
            &fingerprint,
            &selected.description,
        );
        let run = RunFolder::create(&args.run, &config, &info)?;
        log::info!("created run folder {}", args.run.display());
        run
    };

    let _lock = RunLock::acquire(&args.run)?;
    if resuming {
        check_same_data(&run, &fingerprint, &args.data.data)?;
        run.record_resume(&selected.description)?;
    }
    let outcome = train(
        &config,
        TrainOptions {
            run: &run,
            device: &selected.device,
            base: Arc::new(base),
            base_generated: base_generated.map(Arc::new),
            val: &val,
            val_generated: val_generated.as_ref(),
            progress: &bars,
        },
    )?;

    if outcome.resumed_from >= config.training.epochs {
        println!(
            "run {} already finished {} epoch{}; nothing to do",
            args.run.display(),
            config.training.epochs,
            if config.training.epochs == 1 { "" } else { "s" }
        );
    }
    if let Some(best) = &outcome.best {
        println!(
            "best epoch {}: validation accuracy {:.2}% ± {:.2} ({})",
            best.epoch,
            best.val_accuracy,
            best.val_ci95,
            args.run.join(&best.checkpoint).display()
        );
    }
    Ok(())
}

/// Makes the folders a configuration names absolute before it is stored in a run folder.
fn make_paths_absolute(config: &mut TrainConfig) {
    let paths = [
        &mut config.model.generated,
        &mut config.init.from_run,
        &mut config.init.backbone_weights,
        &mut config.fusion.encoder_weights,
    ];
    for path in paths.into_iter().flatten() {
        *path = absolute(path);
    }
}

/// Reads the configuration of an existing run. Flags may change the number of epochs and the
/// learning rate (after a diverged loss, say); `metrics.jsonl` records the rate of every epoch.
/// Any other change would make the run's records describe two different trainings, so it is an
/// error.
fn resumed_config(args: &TrainArgs) -> Result<TrainConfig> {
    let run = RunFolder::open(&args.run)?;
    let stored = run.config()?;
    let mut requested = match &args.config {
        Some(path) => TrainConfig::from_file(path)?,
        None => stored.clone(),
    };
    args.apply_overrides(&mut requested);
    make_paths_absolute(&mut requested);

    let mut comparable = requested.clone();
    comparable.training.epochs = stored.training.epochs;
    comparable.optimizer.lr = stored.optimizer.lr;
    if comparable != stored {
        let changes = config_differences(&stored, &comparable).join(", ");
        bail!(
            "run folder {} was started with a different configuration ({changes}); only --epochs and --lr may change when resuming. Use a new --run folder for other settings",
            args.run.display()
        );
    }
    if let Some((done, _)) = run.latest_checkpoint()?
        && requested.training.epochs < done
    {
        bail!(
            "invalid --epochs {}: run folder {} has already finished {done} epochs; pass at least {done}",
            requested.training.epochs,
            args.run.display()
        );
    }
    if requested.training.epochs != stored.training.epochs {
        log::info!(
            "changing the number of epochs from {} to {}",
            stored.training.epochs,
            requested.training.epochs
        );
    }
    if requested.optimizer.lr != stored.optimizer.lr {
        log::info!(
            "changing the learning rate from {} to {}",
            stored.optimizer.lr,
            requested.optimizer.lr
        );
    }
    if requested != stored {
        run.write_config(&requested)
            .context("failed to update config.toml")?;
    }
    log::info!("resuming run {}", args.run.display());
    Ok(requested)
}

/// Lists the settings that differ between two configurations, as `key: old -> new`.
fn config_differences(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    let as_table = |config: &TrainConfig| {
        toml::Table::try_from(config).expect("configuration converts to a TOML table")
    };
    let mut differences = Vec::new();
    collect_differences("", &as_table(old), &as_table(new), &mut differences);
    differences
}

fn collect_differences(prefix: &str, old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    for (key, old_value) in old {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (old_value, new.get(key)) {
            (toml::Value::Table(old_table), Some(toml::Value::Table(new_table))) => {
                collect_differences(&name, old_table, new_table, out)
            }
            (_, Some(new_value)) if new_value != old_value => {
                out.push(format!("{name}: {old_value} -> {new_value}"))
            }
            (_, None) => out.push(format!("{name}: {old_value} -> (none)")),
            _ => {}
        }
    }
}

/// Rejects resuming a run on photos other than those it was trained on; the folder may move.
fn check_same_data(run: &RunFolder, fingerprint: &str, data: &Path) -> Result<()> {
    let info = run.info()?;
    if !info.data_fingerprint.is_empty() && info.data_fingerprint != fingerprint {
        bail!(
            "run folder {} was trained on other photos ({}, fingerprint {}) than {} has (fingerprint {fingerprint}); pass the same dataset, or use a new --run folder",
            run.path().display(),
            info.data.display(),
            info.data_fingerprint,
            data.display()
        );
    }
    Ok(())
}

/// Marks a run folder as in use by this process, so that a second `train` on the same folder
/// stops instead of overwriting its checkpoints. The `train.lock` file holds the process id; a
/// lock left by a process that no longer runs (after `kill -9`) is taken over.
pub(crate) struct RunLock {
    path: PathBuf,
}

impl RunLock {
    pub(crate) fn acquire(run: &Path) -> Result<RunLock> {
        let path = run.join("train.lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    use std::io::Write;
                    writeln!(file, "{}", std::process::id())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(RunLock { path });
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    let owner = owner.trim();
                    if process_is_running(owner) {
                        anyhow::bail!(
                            "run folder {} is in use by another train process (pid {owner}); wait for it to finish or use another --run",
                            run.display()
                        );
                    }
                    log::warn!("taking over the lock of process {owner}, which no longer runs");
                    std::fs::remove_file(&path)
                        .with_context(|| format!("cannot remove the stale {}", path.display()))?;
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        anyhow::bail!(
            "cannot lock run folder {}; another process keeps creating {}",
            run.display(),
            path.display()
        )
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Returns whether `pid` names a running process; an unreadable id counts as not running.
fn process_is_running(pid: &str) -> bool {
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn kill(pid: i32, signal: i32) -> i32;
        }
        // SAFETY: signal 0 only checks that the process exists; nothing is sent. EPERM (a
        // process of another user) also means it exists.
        let result = unsafe { kill(pid, 0) };
        result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(1)
    }
    #[cfg(not(unix))]
    {
        // NOTE: without a portable check, a lock left behind is always taken over here.
        false
    }
}
