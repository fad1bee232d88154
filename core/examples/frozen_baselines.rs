//! Trains a Conv4 by supervised classification on the base classes of a CUB-style dataset, at
//! 84x84 on the CPU. Then scores the Nearest Neighbour, Logistic Regression and Softmax
//! Regression baselines on its frozen embeddings of 5-way 1-shot novel-class episodes with 16
//! queries per class, drawn with seed 123.
//!
//! ```text
//! cargo run --release --example frozen_baselines -- DATA OUT [EPOCHS] [EPISODES] [CACHE]
//! ```
//!
//! `DATA` is the folder containing `CUB_200_2011` (or that folder itself), `OUT` the training
//! folder (a second run continues it), `EPOCHS` defaults to 2, `EPISODES` to 100 and `CACHE`,
//! the decoded-image cache, to `metairnet-cache` in the system's temporary folder.

use burn::prelude::*;
use metairnet::baselines::{EmbeddingClassifier, classify};
use metairnet::data::{Dataset, ImageSize, ImageStore, LoadOptions, Split};
use metairnet::episodes::{EpisodeSampler, EpisodeShape};
use metairnet::train::supervised::{SupervisedConfig, evaluate_frozen, train_supervised};
use metairnet::train::{Progress, mean_and_ci95};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Prints each phase's label when it starts and its last status text when it ends.
struct PrintProgress {
    message: Mutex<String>,
}

impl Progress for PrintProgress {
    fn begin(&self, label: &str, total: u64) {
        println!("{label}: {total} steps");
    }

    fn advance(&self, _steps: u64) {}

    fn set_message(&self, message: &str) {
        *self.message.lock().unwrap() = message.to_string();
    }

    fn finish(&self) {
        println!("  {}", self.message.lock().unwrap());
    }
}

fn load(dataset: &Dataset, split: Split, cache: &Path) -> ImageStore {
    let options = LoadOptions {
        cache_dir: Some(cache.to_path_buf()),
        ..LoadOptions::default()
    };
    let (store, report) =
        ImageStore::load(&dataset.split(split), ImageSize::S84, &options, &|_| {})
            .unwrap_or_else(|error| fail(&format!("failed to load the {split} split: {error}")));
    println!(
        "{split}: {} classes, {} photos{}",
        store.class_names.len(),
        store.len(),
        if report.from_cache {
            " (from cache)"
        } else {
            ""
        }
    );
    store
}

/// Prints `message` as an error and exits with status 1.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: frozen_baselines DATA OUT [EPOCHS] [EPISODES] [CACHE]");
        std::process::exit(2);
    }
    let data = PathBuf::from(&args[0]);
    let out = PathBuf::from(&args[1]);
    let number = |index: usize, default: usize| {
        args.get(index).map_or(default, |text| {
            text.parse().unwrap_or_else(|_| {
                fail(&format!("argument {index} is {text:?}, not a whole number"))
            })
        })
    };
    let epochs = number(2, 2);
    let episodes = number(3, 100);
    let cache = args.get(4).map_or_else(
        || std::env::temp_dir().join("metairnet-cache"),
        PathBuf::from,
    );

    let dataset = Dataset::open(&data).unwrap_or_else(|error| fail(&error.to_string()));
    let base = load(&dataset, Split::Base, &cache);
    let novel = load(&dataset, Split::Novel, &cache);
    let device = Device::flex();
    let progress = PrintProgress {
        message: Mutex::new(String::new()),
    };

    let config = SupervisedConfig {
        epochs,
        ..SupervisedConfig::default()
    };
    let started = Instant::now();
    let backbone = train_supervised(&config, &out, &base, &device, &progress)
        .unwrap_or_else(|error| fail(&error.to_string()));
    println!("training: {:.1} s", started.elapsed().as_secs_f64());

    let shape = EpisodeShape {
        n_way: 5,
        n_shot: 1,
        n_query: 16,
    };
    let sampler = EpisodeSampler::new(&novel, Split::Novel, shape, 123)
        .unwrap_or_else(|error| fail(&error.to_string()));
    let started = Instant::now();
    let results = evaluate_frozen(
        &backbone,
        &novel,
        &sampler,
        episodes,
        &EmbeddingClassifier::ALL,
        &device,
        &progress,
    );
    println!(
        "evaluation of {episodes} episodes: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (kind, accuracies) in EmbeddingClassifier::ALL.iter().zip(&results) {
        let (mean, ci95) = mean_and_ci95(accuracies);
        println!("{kind:>8}: {mean:.2}% +- {ci95:.2}");
    }

    // Time the classifiers alone on the first episode's embeddings.
    let episode = sampler.episode(0, false);
    let side = ImageSize::S84.pixels() as usize;
    let count = episode.support.len() + episode.query.len();
    let images = Tensor::<4>::from_data(
        TensorData::new(episode.images(&novel), [count, 3, side, side]),
        &device,
    );
    let embeddings = backbone.valid().forward(images);
    let [_, dim] = embeddings.dims();
    let embeddings = embeddings.into_data().try_to_vec::<f32>().unwrap();
    let (support, queries) = embeddings.split_at(episode.support.len() * dim);
    let labels: Vec<usize> = (0..episode.support.len()).collect();
    for kind in EmbeddingClassifier::ALL {
        let repeats = 200;
        let started = Instant::now();
        for _ in 0..repeats {
            std::hint::black_box(classify(kind, support, &labels, queries, dim, 5));
        }
        let micros = started.elapsed().as_secs_f64() * 1e6 / repeats as f64;
        println!("{kind:>8}: {micros:.0} us per episode ({dim}-d, 5 support, 80 queries)");
    }
}
