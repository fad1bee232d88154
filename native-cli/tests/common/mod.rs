//! Helpers shared by the end-to-end tests of the `metairnet` binary.
// Each test file compiles this module on its own and uses only some of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Returns the cub50 dataset folder: `$METAIRNET_CUB50` when set, else `../shared/data/cub50`
/// beside the repository.
pub fn cub50() -> PathBuf {
    match std::env::var_os("METAIRNET_CUB50") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cub50"),
    }
}

/// Returns a command that runs the built binary with `args`, without log or backtrace settings
/// from the environment.
pub fn metairnet(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_metairnet"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE");
    command
}

/// Runs the binary with `args` and waits for it.
pub fn run(args: &[&str]) -> Output {
    metairnet(args).output().expect("metairnet starts")
}

/// Returns stdout and stderr of `output`, labelled, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Builds a dataset of `classes` class folders of `per_class` real photos each.
pub fn small_dataset(root: &Path, classes: usize, per_class: usize) {
    let images = cub50().join("CUB_200_2011/images");
    let mut folders: Vec<PathBuf> = std::fs::read_dir(images)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    folders.sort();
    for folder in folders.iter().take(classes) {
        let target = root.join(folder.file_name().unwrap());
        std::fs::create_dir_all(&target).unwrap();
        let mut photos: Vec<PathBuf> = std::fs::read_dir(folder)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        photos.sort();
        for photo in photos.iter().take(per_class) {
            std::fs::copy(photo, target.join(photo.file_name().unwrap())).unwrap();
        }
    }
}
