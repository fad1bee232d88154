//! `metairnet picture` and `metairnet tsne` end to end: a tiny fusion run trained on real CUB
//! photos (../shared/data/cub50, or `$METAIRNET_CUB50`) with generated images from the reduced
//! random generator, then both pictures and the errors for bad options.

mod common;

use common::{run, small_dataset, text};
use std::path::Path;

/// Trains a run of one episode, with `extra` choosing the model.
fn train(data: &Path, run_dir: &Path, extra: &[&str]) {
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
        "2",
        "--n-query",
        "1",
    ];
    args.extend_from_slice(extra);
    let output = run(&args);
    assert!(output.status.success(), "{}", text(&output));
}

/// Returns the options that every `picture` and `tsne` call of these tests shares.
fn source<'a>(data: &'a Path, run_dir: &'a Path) -> Vec<&'a str> {
    vec![
        "--quiet",
        "--device",
        "cpu",
        "--no-cache",
        "--data",
        data.to_str().unwrap(),
        "--run",
        run_dir.to_str().unwrap(),
    ]
}

#[test]
fn picture_and_tsne_of_fusion_run() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("birds");
    // 8 classes: 4 base, 2 val and 2 novel.
    small_dataset(&data, 8, 3);
    let generated = work.path().join("generated");
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
        "2",
        "--samples",
        "3",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let fusion_run = work.path().join("fusion-run");
    let generated_arg = generated.to_str().unwrap();
    train(
        &data,
        &fusion_run,
        &["--support-augment", "fusion", "--generated", generated_arg],
    );

    // picture: 2 rows of 4 columns of 84-pixel images shown 3 times larger.
    let out = work.path().join("pictures/fusion.png");
    let mut args = source(&data, &fusion_run);
    args.extend(["--out", out.to_str().unwrap(), "--photos", "2"]);
    let output = run(&["picture"].iter().chain(&args).copied().collect::<Vec<_>>());
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("fusion weights ["), "{}", text(&output));
    assert!(stdout.contains("row 2: "), "{}", text(&output));
    let picture = image::open(&out).unwrap();
    // Margins 10, row-number column 10 + gap 8, cells 252 with gaps of 8, title band 14 + 8.
    assert_eq!(picture.width(), 10 + 10 + 8 + 4 * 252 + 3 * 8 + 10);
    assert_eq!(picture.height(), 10 + 14 + 8 + 2 * 252 + 8 + 10);

    // tsne: 2 novel classes of 3 photos give 2 support photos, 2 x 3 fused images and 4
    // queries.
    let out = work.path().join("pictures/map.png");
    let mut args = source(&data, &fusion_run);
    args.extend(["--out", out.to_str().unwrap(), "--iterations", "300"]);
    let output = run(&["tsne"].iter().chain(&args).copied().collect::<Vec<_>>());
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("2 support photos, 6 fused images, 4 query photos"),
        "{}",
        text(&output)
    );
    let plot = image::open(&out).unwrap();
    assert_eq!(plot.width(), 800);
    // Margins 12, title line 24, plot area 776, 5 legend lines of 24.
    assert_eq!(plot.height(), 12 + 24 + 776 + 12 + 5 * 24 + 12);
    let csv = std::fs::read_to_string(work.path().join("pictures/map.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "x,y,kind,class,photo,generated_index");
    assert_eq!(lines.len(), 1 + 12);
    let kinds: Vec<&str> = lines[1..]
        .iter()
        .map(|line| line.split(',').nth(2).unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "support").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "fused").count(), 6);
    assert_eq!(kinds.iter().filter(|k| **k == "query").count(), 4);
    for line in &lines[1..] {
        let x: f64 = line.split(',').next().unwrap().parse().unwrap();
        assert!(x.is_finite(), "{line}");
    }

    // The same seed gives the same coordinates.
    let again = run(&["tsne"].iter().chain(&args).copied().collect::<Vec<_>>());
    assert!(again.status.success(), "{}", text(&again));
    let csv_again = std::fs::read_to_string(work.path().join("pictures/map.csv")).unwrap();
    assert_eq!(csv, csv_again);

    // A ProtoNet run has no fusion network: no fused column, and generated points in the map.
    let protonet_run = work.path().join("protonet-run");
    train(&data, &protonet_run, &[]);
    let out = work.path().join("pictures/protonet.png");
    let mut args = source(&data, &protonet_run);
    args.extend([
        "--out",
        out.to_str().unwrap(),
        "--photos",
        "3",
        "--generated",
        generated_arg,
    ]);
    let output = run(&["picture"].iter().chain(&args).copied().collect::<Vec<_>>());
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("no fused column"), "{}", text(&output));
    let picture = image::open(&out).unwrap();
    assert_eq!(picture.width(), 10 + 10 + 8 + 3 * 252 + 2 * 8 + 10);
    assert_eq!(picture.height(), 10 + 14 + 8 + 3 * 252 + 2 * 8 + 10);

    let mut args = source(&data, &protonet_run);
    let out = work.path().join("pictures/protonet-map.png");
    args.extend(["--out", out.to_str().unwrap(), "--iterations", "50"]);
    let output = run(&["tsne"].iter().chain(&args).copied().collect::<Vec<_>>());
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("2 support photos, 0 generated images, 4 query photos"),
        "{}",
        text(&output)
    );

    // Bad options name the value and the fix.
    let cases: [(&str, &[&str], &str); 6] = [
        (
            "picture",
            &["--out", "x.jpg"],
            "invalid --out x.jpg; expected a file name ending in .png",
        ),
        (
            "picture",
            &["--out", "x.png", "--photos", "0"],
            "invalid --photos 0; expected 1 to 32",
        ),
        (
            "picture",
            &["--out", "x.png", "--zoom", "9"],
            "invalid --zoom 9; expected 1 to 8",
        ),
        (
            "tsne",
            &["--out", "x.png", "--classes", "11"],
            "invalid --classes 11; expected 2 to 10",
        ),
        (
            "tsne",
            &["--out", "x.png", "--classes", "3"],
            "the novel split has 2 classes",
        ),
        (
            "tsne",
            &["--out", "x.png", "--perplexity", "40"],
            "invalid --perplexity 40 for 12 points",
        ),
    ];
    for (command, extra, expected) in cases {
        let out_dir = work.path().join("bad");
        std::fs::create_dir_all(&out_dir).unwrap();
        let mut args = vec![command];
        args.extend(source(&data, &fusion_run));
        let extra: Vec<String> = extra
            .iter()
            .map(|a| {
                if a.ends_with(".png") || a.ends_with(".jpg") {
                    out_dir.join(a).display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        args.extend(extra.iter().map(String::as_str));
        let output = run(&args);
        assert!(
            !output.status.success(),
            "{command} {extra:?}: {}",
            text(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = expected.replace("x.jpg", &out_dir.join("x.jpg").display().to_string());
        assert!(
            stderr.contains(&expected),
            "{command} {extra:?}: {}",
            text(&output)
        );
        assert!(!stderr.contains("internal error"), "{}", text(&output));
    }
}
