//! The `metairnet` binary end to end on real CUB photos (../shared/data/cub50, or
//! `$METAIRNET_CUB50`): training, resuming after kill -9, evaluation, classification and the
//! errors for bad input.

mod common;

use common::{cub50, metairnet, run, small_dataset, text};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// Training flags for a run of a few seconds.
fn tiny_training(data: &Path, run: &Path, cache: &Path, epochs: &str) -> Vec<String> {
    [
        "train",
        "--quiet",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--epochs",
        epochs,
        "--episodes-per-epoch",
        "3",
        "--val-episodes",
        "3",
        "--n-query",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Lists the photos of the class folder whose name starts with `prefix`, sorted.
/// Runs `classify --json` on the CPU with `args` for one query photo and returns its result.
fn classify_json(args: &[&str]) -> serde_json::Value {
    let mut full = vec!["classify", "--device", "cpu", "--json"];
    full.extend_from_slice(args);
    let output = run(&full);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn class_photos(prefix: &str) -> Vec<PathBuf> {
    let images = cub50().join("CUB_200_2011/images");
    let folder = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .unwrap()
        .path();
    let mut photos: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    photos.sort();
    photos
}

#[test]
fn train_eval_classify_on_cub50() {
    let work = tempfile::tempdir().unwrap();
    let run_dir = work.path().join("run");
    let cache = work.path().join("cache");

    let output = run(&as_strs(&tiny_training(&cub50(), &run_dir, &cache, "2")));
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("best epoch"),
        "{}",
        text(&output)
    );

    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["seed"], 0);
    assert!(info["git_commit"].as_str().is_some_and(|c| !c.is_empty()));
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("episodes_per_epoch = 3"), "{config}");
    let metrics = read_lines(&run_dir.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[1]["epoch"], 2);
    assert!(metrics[0]["train_loss"].as_f64().unwrap().is_finite());
    assert!(run_dir.join("best.json").is_file());
    assert!(run_dir.join("checkpoints/epoch-0002/model.bpk").is_file());

    let output = run(&[
        "eval",
        "--device",
        "cpu",
        "--data",
        cub50().to_str().unwrap(),
        "--run",
        run_dir.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--episodes",
        "6",
        "--json",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(summary["episodes"], 6);
    assert_eq!(summary["split"], "novel");
    let accuracy = summary["accuracy"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&accuracy), "{accuracy}");
    assert!(summary["ci95"].as_f64().unwrap() >= 0.0);
    let per_episode_file = PathBuf::from(summary["per_episode_file"].as_str().unwrap());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(per_episode_file).unwrap()).unwrap();
    assert_eq!(saved["per_episode"].as_array().unwrap().len(), 6);

    // A damaged weight file must be an error, not a different model.
    let copy = work.path().join("damaged-run");
    copy_dir(&run_dir, &copy);
    let model_file = copy.join("checkpoints/epoch-0002/model.bpk");
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("best.json")).unwrap()).unwrap();
    let model_file = if best["epoch"] == 2 {
        model_file
    } else {
        copy.join("checkpoints/epoch-0001/model.bpk")
    };
    let mut bytes = std::fs::read(&model_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&model_file, bytes).unwrap();
    let output = run(&[
        "eval",
        "--device",
        "cpu",
        "--data",
        cub50().to_str().unwrap(),
        "--run",
        copy.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--episodes",
        "2",
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("checksum"), "{}", text(&output));

    // Support: the first photo of three novel classes; query: a later photo of the second.
    let support = work.path().join("support");
    for prefix in ["004.", "008.", "012."] {
        let photos = class_photos(prefix);
        let folder = support.join(prefix.trim_end_matches('.'));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(&photos[0], folder.join("1.jpg")).unwrap();
    }
    let query = class_photos("008.")[5].clone();
    let output = run(&[
        "classify",
        "--device",
        "cpu",
        "--run",
        run_dir.to_str().unwrap(),
        "--support",
        support.to_str().unwrap(),
        "--query",
        query.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let scores = result["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 3);
    let total: f64 = scores
        .iter()
        .map(|entry| entry["score"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-4, "scores sum to {total}");
    assert!(["004", "008", "012"].contains(&result["predicted"].as_str().unwrap()));

    // The browser bundle of the same run gives `classify` the same scores.
    let species = work.path().join("species");
    small_dataset(&species, 4, 2);
    let bundle = work.path().join("bundle");
    let export = |which: &str| {
        run(&[
            "export-web",
            "--device",
            "cpu",
            "--run",
            run_dir.to_str().unwrap(),
            "--data",
            species.to_str().unwrap(),
            "--out",
            bundle.to_str().unwrap(),
            "--prototype-photos",
            which,
        ])
    };
    let output = export("train");
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("train_test_split.txt")
            && text(&output).contains("--prototype-photos all"),
        "{}",
        text(&output)
    );
    let output = export("all");
    assert!(output.status.success(), "{}", text(&output));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("model.json")).unwrap()).unwrap();
    assert_eq!(manifest["species"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["species"][0]["photos"], 2);
    assert_eq!(manifest["embedding_dim"], 1600);
    assert_eq!(manifest["accuracy"]["episodes"], 6, "{manifest}");
    assert_eq!(
        std::fs::metadata(bundle.join("prototypes.f32"))
            .unwrap()
            .len(),
        4 * 1600 * 4
    );
    let bundle_arg = bundle.to_str().unwrap();
    let support_arg = support.to_str().unwrap();
    let query_arg = query.to_str().unwrap();
    let from_bundle = classify_json(&[
        "--bundle",
        bundle_arg,
        "--support",
        support_arg,
        "--query",
        query_arg,
    ]);
    assert_eq!(from_bundle["predicted"], result["predicted"]);
    for (a, b) in scores.iter().zip(from_bundle["scores"].as_array().unwrap()) {
        assert_eq!(a["class"], b["class"]);
        let (a, b) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "run {a}, bundle {b}");
    }
    // Without --support, the bundle's own species are scored; --builtin adds them to the
    // support species.
    let builtin = classify_json(&["--bundle", bundle_arg, "--query", query_arg]);
    let builtin_scores = builtin["scores"].as_array().unwrap();
    assert_eq!(builtin_scores.len(), 4);
    assert!(
        builtin_scores.iter().all(|s| s["builtin"] == true),
        "{builtin}"
    );
    let both = classify_json(&[
        "--bundle",
        bundle_arg,
        "--support",
        support_arg,
        "--builtin",
        "--query",
        query_arg,
    ]);
    let both_scores = both["scores"].as_array().unwrap();
    assert_eq!(both_scores.len(), 7);
    let builtin_count = both_scores.iter().filter(|s| s["builtin"] == true).count();
    assert_eq!(builtin_count, 4, "{both}");
    let output = run(&[
        "classify",
        "--run",
        run_dir.to_str().unwrap(),
        "--support",
        support.to_str().unwrap(),
        "--builtin",
        "--query",
        query.to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("--bundle"), "{}", text(&output));

    let output = run(&[
        "classify",
        "--bundle",
        species.to_str().unwrap(),
        "--support",
        support.to_str().unwrap(),
        "--query",
        query.to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("export-web"), "{}", text(&output));
}

#[test]
fn training_resumes_after_kill() {
    let work = tempfile::tempdir().unwrap();
    let run_dir = work.path().join("run");
    let cache = work.path().join("cache");
    let args = tiny_training(&cub50(), &run_dir, &cache, "3");

    let mut child = metairnet(&as_strs(&args))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first_checkpoint = run_dir.join("checkpoints/epoch-0001");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !first_checkpoint.exists() {
        assert!(Instant::now() < deadline, "no checkpoint after 600 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let killed_metrics = read_lines(&run_dir.join("metrics.jsonl"));
    assert!(
        !killed_metrics.is_empty() && killed_metrics.len() < 3,
        "{} epochs before the kill",
        killed_metrics.len()
    );

    let output = run(&as_strs(&args));
    assert!(output.status.success(), "{}", text(&output));
    let metrics = read_lines(&run_dir.join("metrics.jsonl"));
    let epochs: Vec<i64> = metrics
        .iter()
        .map(|m| m["epoch"].as_i64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2, 3]);
    assert_eq!(
        metrics[0], killed_metrics[0],
        "the finished epoch is kept as it was"
    );
    assert!(run_dir.join("checkpoints/epoch-0003").is_dir());

    let fewer = tiny_training(&cub50(), &run_dir, &cache, "2");
    let output = run(&as_strs(&fewer));
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("has already finished 3 epochs"),
        "{}",
        text(&output)
    );
}

#[test]
fn resume_rejects_changed_config() {
    let work = tempfile::tempdir().unwrap();
    let run_dir = work.path().join("run");
    let cache = work.path().join("cache");
    let output = run(&as_strs(&tiny_training(&cub50(), &run_dir, &cache, "1")));
    assert!(output.status.success(), "{}", text(&output));

    let mut changed = tiny_training(&cub50(), &run_dir, &cache, "1");
    changed.extend(["--n-shot".to_string(), "2".to_string()]);
    let output = run(&as_strs(&changed));
    assert!(!output.status.success());
    assert!(
        text(&output).contains("episodes.n_shot: 1 -> 2"),
        "{}",
        text(&output)
    );
    assert!(
        text(&output).contains("only --epochs and --lr may change"),
        "{}",
        text(&output)
    );
}

fn small_training(data: &Path, run_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--quiet",
        "--device",
        "cpu",
        "--no-cache",
        "--data",
        data.to_str().unwrap(),
        "--run",
        run_dir.to_str().unwrap(),
        "--epochs",
        "1",
        "--episodes-per-epoch",
        "1",
        "--val-episodes",
        "1",
        "--n-way",
        "3",
        "--n-query",
        "2",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn bad_photos_are_named_or_skipped() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    small_dataset(&data, 12, 4);
    let base_class = data.join("001.Black_footed_Albatross");

    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "notes.jpg",
            b"field notes, not a photo".to_vec(),
            "not a supported image format",
        ),
        ("empty.jpg", Vec::new(), "the file is empty"),
        (
            "cut.jpg",
            {
                let photo = std::fs::read(class_photos("001.")[0].clone()).unwrap();
                photo[..photo.len() / 2].to_vec()
            },
            "truncated",
        ),
    ];
    for (name, bytes, reason) in cases {
        let bad = base_class.join(name);
        std::fs::write(&bad, bytes).unwrap();
        let output = small_training(&data, &work.path().join(format!("run-{name}")), &[]);
        assert!(!output.status.success(), "{name} was accepted");
        let message = text(&output);
        assert!(message.contains(bad.to_str().unwrap()), "{message}");
        assert!(message.contains(reason), "{message}");
        assert!(message.contains("--skip-bad-images"), "{message}");
        assert!(!message.contains("panicked"), "{message}");
        std::fs::remove_file(&bad).unwrap();
    }

    std::fs::write(base_class.join("notes.jpg"), b"field notes").unwrap();
    std::fs::write(base_class.join("empty.jpg"), b"").unwrap();
    let run_dir = work.path().join("run-skip");
    let output = small_training(&data, &run_dir, &["--skip-bad-images"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("skipped 2 unusable photos"),
        "{}",
        text(&output)
    );
}

#[test]
fn small_class_is_named_before_training() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    small_dataset(&data, 12, 4);
    // Keep 2 photos in one base class, fewer than n_shot + n_query = 1 + 2.
    let class = data.join("003.Sooty_Albatross");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&class)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    photos.sort();
    for photo in &photos[2..] {
        std::fs::remove_file(photo).unwrap();
    }
    let run_dir = work.path().join("run");
    let output = small_training(&data, &run_dir, &[]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("class 003.Sooty_Albatross has 2 images but n_shot + n_query = 3"),
        "{}",
        text(&output)
    );
    assert!(
        !run_dir.join("checkpoints").exists(),
        "no training may start"
    );
}

#[test]
fn invalid_options_are_explained() {
    let work = tempfile::tempdir().unwrap();
    let run_dir = work.path().join("run");
    let occupied = work.path().join("notes");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "field notes").unwrap();
    let cub = cub50();
    let cases: [(Vec<&str>, &str); 7] = [
        (
            vec![
                "train",
                "--data",
                cub.to_str().unwrap(),
                "--run",
                occupied.to_str().unwrap(),
                "--epochs",
                "1",
            ],
            "is not a run folder",
        ),
        (
            vec!["eval", "--data", ".", "--run", "/no/such/run"],
            "run folder /no/such/run does not exist",
        ),
        (
            vec!["bench", "--device", "cpu", "--n-shot", "0"],
            "--n-shot and --n-query at least 1",
        ),
        (
            vec![
                "train",
                "--data",
                "/no/such/folder",
                "--run",
                run_dir.to_str().unwrap(),
            ],
            "dataset folder /no/such/folder not found",
        ),
        (
            vec![
                "train",
                "--data",
                ".",
                "--run",
                run_dir.to_str().unwrap(),
                "--device",
                "tpu",
            ],
            "invalid device 'tpu'",
        ),
        (
            vec![
                "train",
                "--data",
                ".",
                "--run",
                run_dir.to_str().unwrap(),
                "--lr",
                "-1",
            ],
            "optimizer.lr (flag --lr) = -1",
        ),
        (
            vec![
                "eval",
                "--data",
                ".",
                "--run",
                work.path().to_str().unwrap(),
            ],
            "is not a run folder",
        ),
    ];
    for (args, expected) in cases {
        let output = run(&args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let message = text(&output);
        assert!(message.contains(expected), "{args:?}: {message}");
        assert!(!message.contains("panicked"), "{message}");
    }
}

#[test]
fn diverging_loss_stops_training() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    small_dataset(&data, 12, 4);
    let run_dir = work.path().join("run");
    // Adam moves every weight by about the learning rate per step, so 1e30 overflows float32
    // within a few episodes.
    let output = run(&[
        "train",
        "--quiet",
        "--device",
        "cpu",
        "--no-cache",
        "--data",
        data.to_str().unwrap(),
        "--run",
        run_dir.to_str().unwrap(),
        "--epochs",
        "1",
        "--episodes-per-epoch",
        "5",
        "--val-episodes",
        "1",
        "--n-way",
        "3",
        "--n-query",
        "2",
        "--lr",
        "1e30",
    ]);
    let message = text(&output);
    assert!(!output.status.success(), "{message}");
    assert!(message.contains("the training loss became"), "{message}");
    assert!(message.contains("with a lower --lr"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    assert!(
        !run_dir.join("checkpoints/epoch-0001").exists(),
        "a diverged epoch must not be saved"
    );
}

/// `generate` with the reduced random generator on real photos: one complete folder of samples
/// per photo, metadata that records random weights, a preview, and a second run that skips
/// finished photos.
#[test]
fn generate_writes_resumable_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("birds");
    small_dataset(&data, 2, 2);
    let out = dir.path().join("generated");
    let args = [
        "generate",
        "--quiet",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--iterations",
        "3",
        "--samples",
        "2",
        "--limit",
        "3",
        "--preview",
        "2",
    ];
    let output = run(&args);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("for each of 3 photos"), "{}", text(&output));
    assert!(stdout.contains("random weights"), "{}", text(&output));

    let metadata: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("metairnet-generator.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metadata["random_weights"], true);
    assert_eq!(metadata["iterations"], 3);

    let mut folders = Vec::new();
    for class in std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        for folder in std::fs::read_dir(class.path()).unwrap().flatten() {
            folders.push(folder.path());
        }
    }
    assert_eq!(folders.len(), 3, "one folder per photo: {folders:?}");
    for folder in &folders {
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "unfinished folder left: {name}");
        for k in 0..2 {
            let image = folder.join(format!("img_iter2_batch{k}.jpg"));
            let decoded =
                image::open(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
            assert_eq!((decoded.width(), decoded.height()), (32, 32));
        }
    }
    let preview = image::open(out.join("preview.png")).unwrap();
    assert!(preview.height() > 2 * 32, "preview has two rows");

    let again = run(&args);
    assert!(again.status.success(), "{}", text(&again));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("3 photos already had them"),
        "{}",
        text(&again)
    );

    let changed: Vec<&str> = args
        .iter()
        .map(|a| if *a == "3" { "4" } else { a })
        .collect();
    let rejected = run(&changed);
    assert!(!rejected.status.success());
    assert!(
        String::from_utf8_lossy(&rejected.stderr).contains("generated with other settings"),
        "{}",
        text(&rejected)
    );
}

/// A second `train` on a run folder in use stops with the owner's process id.
#[test]
fn second_train_on_same_run_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("birds");
    small_dataset(&data, 12, 6);
    let run_dir = dir.path().join("run");
    let cache = dir.path().join("cache");
    let mut args = tiny_training(&data, &run_dir, &cache, "30");
    args.extend(["--n-way", "2"].map(String::from));
    let mut first = metairnet(&as_strs(&args))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = run_dir.join("train.lock");
    let started = Instant::now();
    while !lock.exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lock.exists(), "the first train never locked its run folder");
    let second = run(&as_strs(&args));
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!second.status.success(), "{}", text(&second));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another train process"),
        "{}",
        text(&second)
    );
}

/// `summary` prints the parameter counts of the method's models with ResNet-18 encoders.
#[test]
fn summary_counts_parameters() {
    let output = run(&["summary"]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("33,538,761"), "{stdout}");
    assert!(stdout.contains("22,362,249"), "{stdout}");
    let rejected = run(&["summary", "--backbone", "conv4", "--image-size", "224"]);
    assert!(!rejected.status.success());
    assert!(
        String::from_utf8_lossy(&rejected.stderr).contains("conv4 takes 84x84"),
        "{}",
        text(&rejected)
    );
}

/// `table` on a few real photos with a small generated store: two-stage runs, a fusion row, a
/// Block Dropout row and a test-time augmentation row, first in part, then resumed to the end.
#[test]
fn table_trains_scores_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("birds");
    // 8 classes: 4 base, 2 validation and 2 novel.
    small_dataset(&data, 8, 3);
    let generated = dir.path().join("generated");
    let output = run(&[
        "generate",
        "--quiet",
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        generated.to_str().unwrap(),
        "--iterations",
        "1",
        "--samples",
        "2",
    ]);
    assert!(output.status.success(), "{}", text(&output));

    let config = dir.path().join("table.toml");
    std::fs::write(
        &config,
        r#"
[train.episodes]
n_way = 2
n_query = 2
[train.training]
epochs = 1
episodes_per_epoch = 2
[train.validation]
episodes = 2
[test]
episodes = 3
n_way = 2
n_query = 2
[runs.protonet]
[runs.metairnet]
support_augment = "fusion"
init_from = "protonet"
[runs.dropout]
support_augment = "fusion"
siamese = true
block_dropout = true
init_from = "protonet"
[supervised]
epochs = 1
batch_size = 4
[runs.supervised]
supervised = true
[[rows]]
name = "ProtoNet"
run = "protonet"
[[rows]]
name = "MetaIRNet"
run = "metairnet"
[[rows]]
name = "MetaIRNet++ Block Dropout"
run = "dropout"
[[rows]]
name = "ProtoNet + Flip"
run = "protonet"
test_augment = "flip"
[[rows]]
name = "Nearest Neighbour"
run = "supervised"
classifier = "nn"
[[rows]]
name = "Softmax Regression"
run = "supervised"
classifier = "softmax"
"#,
    )
    .unwrap();
    let out = dir.path().join("table");
    let table = |extra: &[&str]| {
        let mut args = vec![
            "table",
            "--quiet",
            "--device",
            "cpu",
            "--no-cache",
            "--data",
            data.to_str().unwrap(),
            "--generated",
            generated.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };

    let first = table(&["--rows", "2"]);
    assert!(first.status.success(), "{}", text(&first));
    let markdown = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        markdown.contains("| ProtoNet | conv4 | protonet |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| MetaIRNet | conv4 | metairnet |"),
        "{markdown}"
    );
    assert!(markdown.contains("not run yet"), "{markdown}");
    let stage_two = std::fs::read_to_string(out.join("runs/metairnet/config.toml")).unwrap();
    assert!(
        stage_two.contains("runs/protonet"),
        "two-stage start: {stage_two}"
    );
    let metrics = read_lines(&out.join("runs/metairnet/metrics.jsonl"));
    assert!(
        metrics[0]["fusion_weight_mean"].is_f64(),
        "MetaIRNet records its fusion weights: {metrics:?}"
    );
    let first_rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table.json")).unwrap()).unwrap();

    let second = table(&[]);
    assert!(second.status.success(), "{}", text(&second));
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table.json")).unwrap()).unwrap();
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{result}");
    for row in rows {
        let accuracy = row["accuracy"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&accuracy), "{row}");
        assert_eq!(row["per_episode"].as_array().unwrap().len(), 3);
    }
    // Finished rows are read back, not scored again.
    assert_eq!(rows[0], first_rows["rows"][0]);
    assert_eq!(rows[1], first_rows["rows"][1]);
    assert!(out.join("runs/dropout/checkpoints/epoch-0001").is_dir());
    let markdown = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(!markdown.contains("not run yet"), "{markdown}");
    assert!(markdown.contains("1 x flip"), "{markdown}");
    assert!(
        markdown.contains("softmax on frozen embeddings"),
        "{markdown}"
    );
    assert!(out.join("runs/supervised/metrics.jsonl").is_file());

    // A changed recipe in the same folder is refused.
    let changed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("episodes_per_epoch = 2", "episodes_per_epoch = 3");
    std::fs::write(&config, changed).unwrap();
    let refused = table(&[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("different table configuration"),
        "{}",
        text(&refused)
    );
}
