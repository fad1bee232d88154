//! `metairnet`: train, evaluate and apply one-shot bird recognisers from the command line.

mod allocator;
mod bench;
mod bench_kernels;
mod classify;
mod common;
mod evaluate;
mod export_web;
mod generate;
mod interrupt;
mod picture;
mod progress;
mod summary;
mod table;
mod train;
mod tsne;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// One-shot fine-grained image recognition (ProtoNet, MetaIRNet) on bird photos.
#[derive(Parser, Debug)]
#[command(name = "metairnet", version, about, long_about = None)]
struct Cli {
    /// Print only warnings, errors and results: no progress bars or info messages.
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train ProtoNet or MetaIRNet on the base classes of a CUB folder; resume a run folder that
    /// exists.
    Train(train::TrainArgs),
    /// Score a run's best checkpoint on fixed-seed episodes of a split.
    Eval(evaluate::EvalArgs),
    /// Name the species of query photos from one or more support photos per species.
    Classify(classify::ClassifyArgs),
    /// Write a run's backbone and the prototypes of a dataset's species as a model bundle for
    /// the browser demo and `classify --bundle`.
    ExportWeb(export_web::ExportWebArgs),
    /// Measure training and evaluation episodes per second on each device.
    Bench(bench::BenchArgs),
    /// Fine-tune the generator on every photo of a dataset and store the generated images.
    Generate(generate::GenerateArgs),
    /// Print the parameters and multiply-accumulates of ProtoNet, MetaIRNet and MetaIRNet++.
    Summary(summary::SummaryArgs),
    /// Train and evaluate every row of a results table on the same test episodes.
    Table(table::TableArgs),
    /// Draw support photos beside their generated, fused and Block Dropout images, with the
    /// fusion weights of each 3x3 block, as a PNG.
    Picture(picture::PictureArgs),
    /// Map backbone embeddings of support, fused and query images of a few classes to 2-D with
    /// t-SNE, as a PNG scatter plot and a CSV file.
    Tsne(tsne::TsneArgs),
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    interrupt::report_interrupts();
    let cli = Cli::parse();
    // Info messages of this tool only: Burn's and CubeCL's (autotuning, for example) stay at
    // warnings unless RUST_LOG requests more.
    let filter = if cli.quiet {
        "warn"
    } else {
        "warn,metairnet=info"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_timestamp(None)
        .format_target(false)
        .init();
    common::install_panic_hook();

    let result = match cli.command {
        Command::Train(args) => train::run(args, cli.quiet),
        Command::Eval(args) => evaluate::run(args, cli.quiet),
        Command::Classify(args) => classify::run(args, cli.quiet),
        Command::ExportWeb(args) => export_web::run(args, cli.quiet),
        Command::Bench(args) => bench::run(args, cli.quiet),
        Command::Generate(args) => generate::run(args, cli.quiet),
        Command::Summary(args) => summary::run(args),
        Command::Table(args) => table::run(args, cli.quiet),
        Command::Picture(args) => picture::run(args, cli.quiet),
        Command::Tsne(args) => tsne::run(args, cli.quiet),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Joins an error and its causes with ": ", leaving out a cause whose text the message already
/// contains (library errors often print their cause themselves).
fn error_chain(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
