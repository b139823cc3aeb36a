//! `stride`: generate, distill, train, evaluate and benchmark.

mod alloc;
mod bench;
mod device;
mod distill;
mod eval;
mod eval_policy;
mod eval_schedules;
mod generate;
mod interrupt;
mod params;
mod plot;
mod schedules;
mod train_base;
mod train_policy;
mod work;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

#[derive(Parser)]
#[command(
    name = "stride",
    version,
    about = "A diffusion sampler that learns where to put its steps",
    after_help = "Examples:
  stride generate \"a small red circle in the top left on a blue background\" -o circle.png
  stride generate \"a red circle\" --steps 8 --scheduler distilled   # the model's distilled schedule
  stride generate \"two green squares\" --steps auto                 # the step policy picks the count
  stride info circle.png                                           # how an image was made
  stride eval --steps 10                                           # ShapesEval pass rates

Each command's --help has more examples."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks that print tables (and write plots to assets/).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Text to image (the bundled tiny-shapes model by default); PNGs carry their parameters.
    Generate(generate::Args),
    /// Distill optimal step schedules for a model and solver (OSS dynamic programming);
    /// resumable and shardable (`stride distill merge`).
    Distill(distill::Args),
    /// Print the generation parameters stored in a PNG.
    Info(generate::InfoArgs),
    /// ShapesEval pass rates of the bundled model on held-out prompts, per step count.
    Eval(eval::Args),
    /// Train the bundled tiny-shapes model (resumable; checkpoints every few minutes).
    TrainBase(train_base::Args),
    /// Train a per-prompt step policy (AdaDiff) on a reward table made with the model;
    /// the table job is resumable and shardable (`stride train-policy merge`).
    TrainPolicy(train_policy::Args),
}

fn main() {
    alloc::keep_freed_memory();
    if let Err(err) = run(Cli::parse()) {
        if let Some(stopped) = err.downcast_ref::<interrupt::Stopped>() {
            eprintln!("{stopped}");
            std::process::exit(interrupt::EXIT_STATUS);
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench(command) => bench::run(command),
        Command::TrainBase(args) => train_base::run(args),
        Command::TrainPolicy(args) => train_policy::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Info(args) => generate::info(args),
        Command::Distill(args) => distill::run(args),
    }
}
