//! The browser demo, end to end: builds the WebAssembly page, drives it in headless Chromium on
//! WebGPU and on the CPU fallback with real cub50 photos, and compares its scores with
//! `metairnet classify --bundle` on the same photos.
//!
//! Needs what `.ci/run` installs: Debian's `chromium`, Node.js with `npm ci --prefix web`, the
//! `wasm32-unknown-unknown` target and `wasm-bindgen-cli`. Set `METAIRNET_SKIP_BROWSER=1` to
//! skip it on a machine without them; the test then prints that it did not run, and passes.

mod common;

use common::{cub50, run, text};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The largest difference allowed between a page score and a `classify` score (probabilities):
/// WebGPU and the two CPU builds sum in different orders.
const SCORE_TOLERANCE: f64 = 2e-3;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Returns the folder for builds and screenshots, beside Cargo's other outputs and outside the
/// clone.
fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("target"));
    target.join("browser-test")
}

/// Reads `images.txt` and `train_test_split.txt` of cub50: the relative paths of the official
/// training photos and of the test photos.
fn official_split() -> (Vec<String>, Vec<String>) {
    let cub = cub50().join("CUB_200_2011");
    let read = |name: &str| -> BTreeMap<String, String> {
        std::fs::read_to_string(cub.join(name))
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(id, value)| (id.to_string(), value.to_string()))
            .collect()
    };
    let images = read("images.txt");
    let flags = read("train_test_split.txt");
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (id, path) in images {
        match flags.get(&id).map(String::as_str) {
            Some("1") => train.push(path),
            _ => test.push(path),
        }
    }
    train.sort();
    test.sort();
    (train, test)
}

/// Writes a support folder of three novel species, two training photos each, and returns it with
/// two test photos of those species as queries.
fn support_and_queries(root: &Path) -> (PathBuf, Vec<PathBuf>) {
    let images = cub50().join("CUB_200_2011/images");
    let (train, test) = official_split();
    // Novel classes of the standard split: sorted index 3, 7, 11.
    let species = [
        "004.Groove_billed_Ani",
        "008.Rhinoceros_Auklet",
        "012.Yellow_headed_Blackbird",
    ];
    let support = root.join("support");
    for name in species {
        let folder = support.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let photos: Vec<&String> = train
            .iter()
            .filter(|p| p.starts_with(name))
            .take(2)
            .collect();
        assert_eq!(photos.len(), 2, "cub50 has training photos of {name}");
        for photo in photos {
            let source = images.join(photo);
            std::fs::copy(&source, folder.join(source.file_name().unwrap())).unwrap();
        }
    }
    let queries = species[..2]
        .iter()
        .map(|name| {
            let photo = test.iter().find(|p| p.starts_with(name)).unwrap();
            let target = root.join(Path::new(photo).file_name().unwrap());
            std::fs::copy(images.join(photo), &target).unwrap();
            target
        })
        .collect();
    (support, queries)
}

/// Writes the files that the page must reject with a message. They are an empty file, a text
/// file, a JPEG cut in half, an 8000x8000 PNG (64 megapixels, over the page's 60-megapixel
/// limit) and a 51 MiB file (over its 50 MB limit per file).
fn bad_files(root: &Path, photo: &Path) -> PathBuf {
    let bad = root.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("empty.jpg"), b"").unwrap();
    std::fs::write(
        bad.join("notes.txt"),
        b"these are field notes, not a photo\n",
    )
    .unwrap();
    let jpeg = std::fs::read(photo).unwrap();
    std::fs::write(bad.join("cut.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    image::GrayImage::new(8000, 8000)
        .save(bad.join("huge.png"))
        .unwrap();
    std::fs::write(bad.join("large.jpg"), vec![0u8; 51 << 20]).unwrap();
    bad
}

/// Reads the page's `[{name, score}]` list into a map.
fn scores_by_name(scores: &Value) -> BTreeMap<String, f64> {
    scores
        .as_array()
        .expect("a list of scores")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn require_tool(program: &str, args: &[&str], fix: &str) {
    let found = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(found, "{program} is needed for the browser test: {fix}");
}

#[test]
fn page_matches_classify_on_webgpu_and_cpu() {
    if std::env::var_os("METAIRNET_SKIP_BROWSER").is_some() {
        eprintln!("METAIRNET_SKIP_BROWSER is set: the browser test did not run");
        return;
    }
    let repo = repository();
    require_tool(
        "chromium",
        &["--version"],
        "install Debian's chromium (apt-get install chromium)",
    );
    require_tool("node", &["--version"], "install Node.js");
    assert!(
        repo.join("web/node_modules/playwright-core").is_dir(),
        "playwright-core is needed for the browser test: run npm ci --prefix web"
    );

    let out = output_dir();
    let _ = std::fs::remove_dir_all(out.join("results"));
    std::fs::create_dir_all(out.join("results")).unwrap();
    let dist = out.join("dist");
    let build = Command::new("bash")
        .arg(repo.join("web/build.sh"))
        .arg(&dist)
        .status()
        .expect("bash starts");
    assert!(build.success(), "web/build.sh failed");

    let work = tempfile::tempdir().unwrap();
    let (support, queries) = support_and_queries(work.path());
    let bad = bad_files(work.path(), &queries[0]);

    // The reference: the command line on the same bundle and photos, on the CPU.
    let bundle = dist.join("model");
    let mut args = vec![
        "classify",
        "--bundle",
        bundle.to_str().unwrap(),
        "--support",
        support.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
        "--query",
    ];
    args.extend(queries.iter().map(|q| q.to_str().unwrap()));
    let output = run(&args);
    assert!(output.status.success(), "{}", text(&output));
    let expected: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(expected.len(), queries.len(), "{}", text(&output));

    // The same with the bundle's built-in species, for the page's default view.
    let output = run(&[
        "classify",
        "--bundle",
        bundle.to_str().unwrap(),
        "--support",
        support.to_str().unwrap(),
        "--builtin",
        "--json",
        "--device",
        "cpu",
        "--query",
        queries[0].to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let expected_builtin: Value = serde_json::from_slice(&output.stdout).unwrap();

    let mut node = Command::new("node");
    node.arg(repo.join("web/tests/browser.mjs"))
        .arg("--dist")
        .arg(&dist)
        .arg("--support")
        .arg(&support)
        .arg("--bad")
        .arg(&bad)
        .arg("--out")
        .arg(out.join("results"));
    for query in &queries {
        node.arg("--query").arg(query);
    }
    let status = node.status().expect("node starts");
    assert!(
        status.success(),
        "the browser test script failed (its output is above)"
    );

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results/results.json")).unwrap())
            .unwrap();
    for backend in ["webgpu", "cpu"] {
        let page = &results[backend];
        assert_eq!(page["backend"], backend, "{page}");
        let page_queries = page["queries"].as_array().expect("queries");
        assert_eq!(page_queries.len(), expected.len(), "{page}");
        for (got, want) in page_queries.iter().zip(&expected) {
            let want_file = Path::new(want["query"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert_eq!(got["file"], want_file.as_str(), "{backend}: {got}");
            assert_eq!(
                got["predicted"], want["predicted"],
                "{backend}: the page and classify disagree on {want_file}"
            );
            let page_scores = scores_by_name(&got["scores"]);
            let cli_scores = want["scores"].as_array().unwrap();
            assert_eq!(page_scores.len(), cli_scores.len(), "{backend}: {got}");
            for score in cli_scores {
                let class = score["class"].as_str().unwrap();
                let cli = score["score"].as_f64().unwrap();
                let page = page_scores[class];
                assert!(
                    (page - cli).abs() <= SCORE_TOLERANCE,
                    "{backend}: {want_file} scores {class} {page} in the page and {cli} in classify"
                );
            }
        }
        // With the built-in species on, the page names them as the bundle does and the user's
        // species by their folder names.
        let with_builtin = &page["withBuiltin"];
        let page_scores = scores_by_name(&with_builtin["scores"]);
        let cli_scores = expected_builtin["scores"].as_array().unwrap();
        assert_eq!(
            page_scores.len(),
            cli_scores.len(),
            "{backend}: {with_builtin}"
        );
        for score in cli_scores {
            let key = if score["builtin"] == true {
                score["name"].as_str().unwrap()
            } else {
                score["class"].as_str().unwrap()
            };
            let cli = score["score"].as_f64().unwrap();
            let page = page_scores[key];
            assert!(
                (page - cli).abs() <= SCORE_TOLERANCE,
                "{backend}: with the built-in species, {key} scores {page} in the page and {cli} in classify"
            );
        }

        let bad_input = page["badInput"].as_array().expect("badInput");
        for file in ["empty.jpg", "notes.txt", "cut.jpg", "huge.png", "large.jpg"] {
            for role in ["query", "species"] {
                let entry = bad_input
                    .iter()
                    .find(|e| e["file"] == file && e["as"] == role)
                    .unwrap_or_else(|| panic!("{backend}: no message for {file} as a {role}"));
                let message = entry["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(file),
                    "{backend}: the message for {file} as a {role} does not name it: {message:?}"
                );
            }
        }
        let cold = page["coldMs"].as_f64().expect("coldMs");
        let warm: Vec<f64> = page["warmMs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert!(cold > 0.0, "{backend}: {page}");
        assert!(!warm.is_empty(), "{backend}: {page}");
        eprintln!(
            "{backend}: adapter {}, first photo {} ms, cold {cold:.0} ms, warm {warm:?} ms, longest main-thread gap {} ms",
            page["adapter"], page["firstPhotoMs"], page["mainThreadMaxGapMs"]
        );
        assert!(
            out.join(format!("results/page-{backend}.png")).is_file(),
            "{backend}: no screenshot"
        );
    }
    eprintln!("screenshots and results: {}", out.join("results").display());
}
