//! `stride`: generate, distill, train, evaluate and benchmark.

mod alloc;
mod bench;
mod plot;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

#[derive(Parser)]
#[command(name = "stride", version, about = "A diffusion sampler that learns where to put its steps")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks that print tables (and write plots to assets/).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench(command) => bench::run(command),
    }
}
