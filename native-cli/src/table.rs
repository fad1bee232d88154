//! `metairnet table`: trains the runs a results table needs and scores every row on the same
//! fixed-seed novel-class episodes, then writes the table as Markdown and JSON.
//!
//! Each training run lives in `<out>/runs/<name>`, a normal run folder that resumes after its
//! newest checkpoint; each finished row is saved to `<out>/rows/`. An interrupted table
//! resumes where it stopped: finished rows are read back, not scored again.

use crate::common::{
    DataArgs, DeviceArgs, absolute, check_episode_fits, load_generated_from, load_split,
};
use crate::progress::Bars;
use crate::train::RunLock;
use anyhow::{Context, Result, bail};
use metairnet::data::{Dataset, GeneratedImages, ImageStore, Split};
use metairnet::baselines::EmbeddingClassifier;
use metairnet::episodes::{EpisodeSampler, EpisodeShape};
use metairnet::train::supervised::{SupervisedConfig, evaluate_frozen, train_supervised};
use metairnet::model::SupportAugment;
use metairnet::train::{
    EpisodeData, EvalOptions, RunFolder, RunInfo, SupportPlan, TrainConfig, TrainOptions,
    choose_checkpoint, evaluate, load_model, mean_and_ci95, train,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct TableArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Table configuration (TOML): the shared training recipe, the training runs and the rows.
    /// See assets/configs/table-conv4-cub50-cpu.toml.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Output folder for the runs, the rows and table.md / table.json. An existing folder made
    /// with the same configuration resumes.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Folder of generated images written by `metairnet generate`; overrides
    /// train.model.generated.
    #[arg(long, value_name = "DIR")]
    generated: Option<PathBuf>,

    /// Score only the first N rows (all by default); later calls can add the rest.
    #[arg(long, value_name = "N")]
    rows: Option<usize>,

    #[command(flatten)]
    device: DeviceArgs,
}

/// The table configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableConfig {
    /// The episodic training recipe every run starts from.
    #[serde(default)]
    train: TrainConfig,
    /// Supervised pretraining, for the frozen-embedding rows.
    #[serde(default)]
    supervised: SupervisedConfig,
    #[serde(default)]
    test: TestSection,
    /// Training runs by name.
    runs: BTreeMap<String, RunSpec>,
    rows: Vec<RowSpec>,
}

/// The test episodes every row is scored on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TestSection {
    episodes: usize,
    seed: u64,
    n_way: usize,
    n_shot: usize,
    n_query: usize,
}

impl Default for TestSection {
    fn default() -> Self {
        TestSection {
            episodes: 600,
            seed: 123,
            n_way: 5,
            n_shot: 1,
            n_query: 16,
        }
    }
}

/// The changes one training run makes to the shared recipe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RunSpec {
    /// Supervised classification on the base classes instead of episodic training.
    supervised: bool,
    support_augment: SupportAugment,
    /// A Siamese fusion network (MetaIRNet++).
    siamese: bool,
    /// Block Dropout in training, with the settings of train.block_dropout.
    block_dropout: bool,
    /// The run whose best checkpoint gives the backbone its first weights.
    init_from: Option<String>,
    /// Overrides train.training.epochs.
    epochs: Option<usize>,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowSpec {
    name: String,
    /// The training run it evaluates.
    run: String,
    /// The support augmentation at test time; the run's own by default.
    test_augment: Option<SupportAugment>,
    /// For supervised runs: the classifier fitted on each episode's support embeddings (nn,
    /// logistic or softmax).
    classifier: Option<EmbeddingClassifier>,
}

/// A scored row, as saved in `rows/` and `table.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RowResult {
    name: String,
    run: String,
    backbone: String,
    test_support: String,
    accuracy: f64,
    ci95: f64,
    episodes: usize,
    checkpoint_epoch: Option<usize>,
    seconds: f64,
    per_episode: Vec<f64>,
}

const CONFIG_COPY: &str = "table-config.toml";

pub fn run(args: TableArgs, quiet: bool) -> Result<()> {
    let bars = Bars::new(quiet);
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("failed to read table config {}", args.config.display()))?;
    let mut table: TableConfig = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid table config {}: {e}", args.config.display()))?;
    if let Some(dir) = &args.generated {
        table.train.model.generated = Some(dir.clone());
    }
    if let Some(dir) = &table.train.model.generated {
        table.train.model.generated = Some(absolute(dir));
    }
    check_table(&table)?;

    std::fs::create_dir_all(args.out.join("rows"))
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let _lock = RunLock::acquire(&args.out)?;
    let copy = args.out.join(CONFIG_COPY);
    if copy.is_file() {
        let stored: TableConfig = toml::from_str(&std::fs::read_to_string(&copy)?)
            .with_context(|| format!("failed to read {}", copy.display()))?;
        if stored.train != table.train
            || stored.test != table.test
            || (stored.runs.values().any(|spec| spec.supervised)
                && stored.supervised != table.supervised)
            || !runs_compatible(&stored, &table)
        {
            bail!(
                "{} was made with a different table configuration ({}); use a new --out folder, or restore that configuration",
                args.out.display(),
                copy.display()
            );
        }
    }
    std::fs::write(&copy, toml::to_string_pretty(&table)?)
        .with_context(|| format!("failed to write {}", copy.display()))?;

    let selected = args.device.select()?;
    let shape = EpisodeShape {
        n_way: table.test.n_way,
        n_shot: table.test.n_shot,
        n_query: table.test.n_query,
    };
    // Training episodes have the shape of the recipe, test episodes the shape of [test].
    let n_aug = table.train.model.n_aug;
    let run_augments = table.runs.values().map(|spec| spec.support_augment);
    let row_augments = table.rows.iter().filter_map(|row| row.test_augment);
    let extra_per_support = run_augments
        .chain(row_augments)
        .map(|augment| augment.extra_images_per_support(n_aug))
        .max()
        .unwrap_or(0);
    for shape in [&shape, &table.train.episodes] {
        check_episode_fits(&selected, shape, extra_per_support, table.train.model.image_size)?;
    }
    let dataset = Dataset::open(&args.data.data)?;
    let size = table.train.model.image_size;
    let mut data = TableData {
        dataset,
        base: None,
        val: None,
        novel: None,
    };
    let needs_generated = table_needs_generated(&table);

    let row_count = args.rows.unwrap_or(table.rows.len()).min(table.rows.len());
    let mut results: Vec<Option<RowResult>> = vec![None; table.rows.len()];
    for (index, row) in table.rows.iter().enumerate() {
        let path = row_path(&args.out, index, row);
        if path.is_file() {
            let saved: RowResult = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("failed to read {}", path.display()))?;
            results[index] = Some(saved);
        }
    }

    for index in 0..row_count {
        if results[index].is_some() {
            continue;
        }
        let row = &table.rows[index];
        let spec = &table.runs[&row.run];
        let run_dir = args.out.join("runs").join(&row.run);
        data.ensure_loaded(size, &args.data, &bars, needs_generated, &table)?;

        if spec.supervised {
            let pending: Vec<usize> = (index..row_count)
                .filter(|&i| results[i].is_none() && table.rows[i].run == row.run)
                .collect();
            for (i, result) in
                score_frozen_rows(&table, &row.run, &pending, &run_dir, &data, &selected, &bars)?
            {
                finish_row(&args.out, i, &table.rows[i], &result)?;
                results[i] = Some(result);
            }
        } else {
            ensure_trained(&table, &row.run, &args, &data, &selected, &bars)?;
            let config = run_config(&table, &row.run, &args.out);
            let augment = row.test_augment.unwrap_or(spec.support_augment);
            let run = RunFolder::open(&run_dir)?;
            let chosen = choose_checkpoint(&run, false)?;
            let model = load_model(&chosen.dir, &config, &selected.device)?;
            let plan = SupportPlan {
                augment,
                copies: config.model.n_aug,
                embedding_dim: config
                    .model
                    .backbone
                    .embedding_dim(size.pixels() as usize),
                block_dropout: None,
                seed: table.test.seed,
            };
            let (novel, novel_generated) = data.novel.as_ref().expect("loaded");
            let started = Instant::now();
            let (per_episode, accuracy, ci95) = evaluate(
                &model,
                EpisodeData {
                    photos: novel,
                    generated: novel_generated.as_ref(),
                },
                shape,
                &plan,
                &EvalOptions {
                    split: Split::Novel,
                    episodes: table.test.episodes,
                    seed: table.test.seed,
                },
                &selected.device,
                &bars,
            )?;
            let result = RowResult {
                name: row.name.clone(),
                run: row.run.clone(),
                backbone: config.model.backbone.to_string(),
                test_support: match augment {
                    SupportAugment::None => "support photos".to_string(),
                    other => format!("support photos + {} x {other}", augment_copies(other, &config)),
                },
                accuracy,
                ci95,
                episodes: table.test.episodes,
                checkpoint_epoch: Some(chosen.epoch),
                seconds: started.elapsed().as_secs_f64(),
                per_episode,
            };
            finish_row(&args.out, index, row, &result)?;
            results[index] = Some(result);
        }
        write_table(&args.out, &table, &results)?;
    }
    write_table(&args.out, &table, &results)?;
    println!("{}", std::fs::read_to_string(args.out.join("table.md"))?);
    Ok(())
}

/// Photos and generated images, loaded when the first row needs them.
struct TableData {
    dataset: Dataset,
    base: Option<(Arc<ImageStore>, Option<Arc<GeneratedImages>>)>,
    val: Option<(ImageStore, Option<GeneratedImages>)>,
    novel: Option<(ImageStore, Option<GeneratedImages>)>,
}

impl TableData {
    fn ensure_loaded(
        &mut self,
        size: metairnet::data::ImageSize,
        args: &DataArgs,
        bars: &Bars,
        needs_generated: bool,
        table: &TableConfig,
    ) -> Result<()> {
        if self.novel.is_some() {
            return Ok(());
        }
        let generated_for = |store: &ImageStore, split: Split| -> Result<Option<GeneratedImages>> {
            if !needs_generated {
                return Ok(None);
            }
            let root = table
                .train
                .model
                .generated
                .as_ref()
                .context("the table's runs read generated images; pass --generated DIR")?;
            load_generated_from(root, table.train.model.n_aug, &self.dataset, store, split, bars)
                .map(Some)
        };
        let base = load_split(&self.dataset, Split::Base, size, args, bars)?;
        let base_generated = generated_for(&base, Split::Base)?;
        let val = load_split(&self.dataset, Split::Val, size, args, bars)?;
        let val_generated = generated_for(&val, Split::Val)?;
        let novel = load_split(&self.dataset, Split::Novel, size, args, bars)?;
        let novel_generated = generated_for(&novel, Split::Novel)?;
        self.base = Some((Arc::new(base), base_generated.map(Arc::new)));
        self.val = Some((val, val_generated));
        self.novel = Some((novel, novel_generated));
        Ok(())
    }
}

/// Trains run `name` (and first the run it starts from), resuming its folder.
fn ensure_trained(
    table: &TableConfig,
    name: &str,
    args: &TableArgs,
    data: &TableData,
    selected: &metairnet::device::SelectedDevice,
    bars: &Bars,
) -> Result<()> {
    let spec = &table.runs[name];
    if let Some(parent) = &spec.init_from {
        ensure_trained(table, parent, args, data, selected, bars)?;
    }
    let config = run_config(table, name, &args.out);
    let dir = args.out.join("runs").join(name);
    let (base, base_generated) = data.base.as_ref().expect("loaded");
    let (val, val_generated) = data.val.as_ref().expect("loaded");
    let run = if RunFolder::exists(&dir) {
        let run = RunFolder::open(&dir)?;
        if let Some((done, _)) = run.latest_checkpoint()?
            && done >= config.training.epochs
        {
            return Ok(());
        }
        run.record_resume(&selected.description)?;
        run
    } else {
        let fingerprint = format!("{}-{}", base.fingerprint(), val.fingerprint());
        let info = RunInfo::new(
            config.seed,
            &args.data.data,
            &fingerprint,
            &selected.description,
        );
        RunFolder::create(&dir, &config, &info)?
    };
    log::info!("training run {name} in {}", dir.display());
    train(
        &config,
        TrainOptions {
            run: &run,
            device: &selected.device,
            base: Arc::clone(base),
            base_generated: base_generated.clone(),
            val,
            val_generated: val_generated.as_ref(),
            progress: bars,
        },
    )
    .with_context(|| format!("training run {name} failed"))?;
    Ok(())
}

/// Returns the training configuration of run `name`: the shared recipe with the run's changes.
fn run_config(table: &TableConfig, name: &str, out: &Path) -> TrainConfig {
    let spec = &table.runs[name];
    let mut config = table.train.clone();
    config.model.support_augment = spec.support_augment;
    config.fusion.siamese = spec.siamese;
    config.block_dropout.enabled = spec.block_dropout;
    if let Some(epochs) = spec.epochs {
        config.training.epochs = epochs;
    }
    config.init.from_run = spec
        .init_from
        .as_ref()
        .map(|parent| absolute(&out.join("runs").join(parent)));
    if !config.model.support_augment.needs_generated() {
        config.model.generated = None;
    }
    config
}

/// Checks names, references and every run's configuration before anything runs.
fn check_table(table: &TableConfig) -> Result<()> {
    if table.rows.is_empty() {
        bail!("the table config has no [[rows]]");
    }
    if !(1..=100_000).contains(&table.test.episodes) {
        bail!(
            "invalid test.episodes {}; expected 1 to 100000",
            table.test.episodes
        );
    }
    for (name, spec) in &table.runs {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("invalid run name {name:?}; use letters, digits, '-' and '_'");
        }
        if let Some(parent) = &spec.init_from {
            let Some(parent_spec) = table.runs.get(parent) else {
                bail!("run {name} starts from run {parent:?}, which [runs] does not define");
            };
            if parent_spec.supervised || spec.supervised {
                bail!(
                    "run {name} starts from run {parent:?}, but init_from joins episodic runs only; remove init_from or supervised"
                );
            }
            let mut seen = vec![name.clone()];
            let mut next = Some(parent.clone());
            while let Some(current) = next {
                if seen.contains(&current) {
                    bail!("runs {} start from each other in a circle", seen.join(" -> "));
                }
                next = table.runs[&current].init_from.clone();
                seen.push(current);
            }
        }
        // Validate the configuration each run trains with, the run's `epochs` included.
        if spec.supervised {
            let mut config = table.supervised.clone();
            if let Some(epochs) = spec.epochs {
                config.epochs = epochs;
            }
            config
                .validate()
                .with_context(|| format!("invalid run {name}"))?;
        } else {
            run_config(table, name, Path::new(""))
                .validate()
                .with_context(|| format!("invalid run {name}"))?;
        }
    }
    for row in &table.rows {
        let Some(spec) = table.runs.get(&row.run) else {
            bail!(
                "row {:?} uses run {:?}, which [runs] does not define",
                row.name,
                row.run
            );
        };
        if spec.supervised && row.test_augment.is_some() {
            bail!(
                "row {:?}: test_augment does not apply to the supervised run {:?}, whose rows fit a classifier on frozen embeddings; remove test_augment",
                row.name,
                row.run
            );
        }
        if spec.supervised != row.classifier.is_some() {
            bail!(
                "row {:?}: a classifier (nn, logistic or softmax) goes with a supervised run, and only there",
                row.name
            );
        }
        if row.test_augment == Some(SupportAugment::Fusion)
            && spec.support_augment != SupportAugment::Fusion
        {
            bail!(
                "row {:?}: test_augment = \"fusion\" needs a run trained with fusion",
                row.name
            );
        }
        if row.test_augment.is_some_and(SupportAugment::needs_generated)
            && table.train.model.generated.is_none()
        {
            bail!(
                "row {:?} reads generated images; pass --generated DIR or set train.model.generated",
                row.name
            );
        }
    }
    Ok(())
}

/// Returns whether any episodic run or any row reads generated images.
fn table_needs_generated(table: &TableConfig) -> bool {
    let runs = table
        .runs
        .values()
        .any(|spec| !spec.supervised && spec.support_augment.needs_generated());
    let rows = table
        .rows
        .iter()
        .any(|row| row.test_augment.is_some_and(SupportAugment::needs_generated));
    runs || rows
}

/// Returns whether `table` can continue a stored table: every run that both define must be
/// unchanged, while rows and new runs may be added.
fn runs_compatible(stored: &TableConfig, table: &TableConfig) -> bool {
    stored
        .runs
        .iter()
        .all(|(name, spec)| table.runs.get(name).is_none_or(|new| new == spec))
}

fn augment_copies(augment: SupportAugment, config: &TrainConfig) -> usize {
    augment.extra_per_support(config.model.n_aug)
}

fn row_path(out: &Path, index: usize, row: &RowSpec) -> PathBuf {
    let slug: String = row
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    out.join("rows").join(format!("{:02}-{slug}.json", index + 1))
}

fn finish_row(out: &Path, index: usize, row: &RowSpec, result: &RowResult) -> Result<()> {
    let path = row_path(out, index, row);
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(result)?)
        .with_context(|| format!("failed to write {}", partial.display()))?;
    std::fs::rename(&partial, &path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    log::info!(
        "{}: {:.2}% ± {:.2} on {} episodes",
        result.name,
        result.accuracy,
        result.ci95,
        result.episodes
    );
    Ok(())
}

/// Writes `table.md` and `table.json` with the rows finished so far.
fn write_table(out: &Path, table: &TableConfig, results: &[Option<RowResult>]) -> Result<()> {
    let test = &table.test;
    let mut md = format!(
        "{}-way {}-shot accuracy (%) on {} novel-class episodes (seed {}, {} queries per class), mean and 95% confidence interval.\n\n",
        test.n_way, test.n_shot, test.episodes, test.seed, test.n_query
    );
    md.push_str("| Model | Backbone | Training run | Test support set | Accuracy | 95% CI |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for (row, result) in table.rows.iter().zip(results) {
        match result {
            Some(r) => md.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} | ± {:.2} |\n",
                r.name, r.backbone, r.run, r.test_support, r.accuracy, r.ci95
            )),
            None => md.push_str(&format!(
                "| {} | | {} | | not run yet | |\n",
                row.name, row.run
            )),
        }
    }
    std::fs::write(out.join("table.md"), &md)
        .with_context(|| format!("failed to write {}", out.join("table.md").display()))?;
    let json = serde_json::json!({
        "test": {
            "episodes": test.episodes,
            "seed": test.seed,
            "n_way": test.n_way,
            "n_shot": test.n_shot,
            "n_query": test.n_query,
        },
        "git_commit": metairnet::GIT_COMMIT,
        "rows": results.iter().flatten().collect::<Vec<_>>(),
    });
    std::fs::write(out.join("table.json"), serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("failed to write {}", out.join("table.json").display()))?;
    Ok(())
}

/// Trains the supervised run `name` and scores the rows `pending` (all of that run) on one pass
/// over the test episodes.
fn score_frozen_rows(
    table: &TableConfig,
    name: &str,
    pending: &[usize],
    run_dir: &Path,
    data: &TableData,
    selected: &metairnet::device::SelectedDevice,
    bars: &Bars,
) -> Result<Vec<(usize, RowResult)>> {
    let spec = &table.runs[name];
    let mut config = table.supervised.clone();
    if let Some(epochs) = spec.epochs {
        config.epochs = epochs;
    }
    let (base, _) = data.base.as_ref().expect("loaded");
    log::info!("training run {name} in {}", run_dir.display());
    let backbone = train_supervised(&config, run_dir, base, &selected.device, bars)
        .with_context(|| format!("training run {name} failed"))?;
    let (novel, _) = data.novel.as_ref().expect("loaded");
    let test = &table.test;
    let shape = EpisodeShape {
        n_way: test.n_way,
        n_shot: test.n_shot,
        n_query: test.n_query,
    };
    let sampler = EpisodeSampler::new(novel, Split::Novel, shape, test.seed)?;
    let classifiers: Vec<EmbeddingClassifier> = pending
        .iter()
        .map(|&i| table.rows[i].classifier.expect("checked with the table"))
        .collect();
    let started = Instant::now();
    let scores = evaluate_frozen(
        &backbone,
        novel,
        &sampler,
        test.episodes,
        &classifiers,
        &selected.device,
        bars,
    );
    // The embeddings are shared, so each row is charged an equal part of the time.
    let seconds = started.elapsed().as_secs_f64() / pending.len() as f64;
    let results = pending
        .iter()
        .zip(classifiers)
        .zip(scores)
        .map(|((&i, classifier), per_episode)| {
            let (accuracy, ci95) = mean_and_ci95(&per_episode);
            let result = RowResult {
                name: table.rows[i].name.clone(),
                run: name.to_string(),
                backbone: config.backbone.to_string(),
                test_support: format!("{classifier} on frozen embeddings"),
                accuracy,
                ci95,
                episodes: test.episodes,
                checkpoint_epoch: None,
                seconds,
                per_episode,
            };
            (i, result)
        })
        .collect();
    Ok(results)
}
