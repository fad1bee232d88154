//! Records the git commit of the build in `METAIRNET_GIT_COMMIT`, so every run folder can name
//! the code that produced it.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(hash) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|status| !status.is_empty());
            if dirty { format!("{hash}-dirty") } else { hash }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=METAIRNET_GIT_COMMIT={commit}");
    // Rebuild the constant when a commit is made or a tracked source changes, so that the
    // `-dirty` mark is current. Only existing paths are named: Cargo reruns a build script on
    // every build when a named path does not exist.
    let watched = [
        "src",
        "build.rs",
        "Cargo.toml",
        "../native-cli/src",
        "../native-cli/Cargo.toml",
        "../tests",
        "../shaders",
        "../web",
        "../assets",
        "../Cargo.toml",
        "../Cargo.lock",
    ];
    for path in watched {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
        println!("cargo:rerun-if-changed={git_dir}/refs/heads");
    }
}
