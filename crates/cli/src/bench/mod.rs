//! `stride bench ...`: benchmarks that print tables and write plots.

mod adaptive;
mod generate;
mod solvers;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Every solver x step schedule on an exact Gaussian mixture: error against the exact ODE
    /// solution at fixed NFE, solver overhead per step, and live latent buffers.
    ///
    /// Example: `stride bench solvers` (full, about a minute), `stride bench solvers --quick`.
    Solvers(solvers::Args),
    /// Images/s and seconds per step of the bundled model at batch 1 and 8, and the share of
    /// each step spent in the solver versus the model.
    ///
    /// Example: `stride bench generate`, `stride bench generate --batch 1,8,32 --steps 10`.
    Generate(generate::Args),
    /// Model evaluations against error: adaptive_sde against Euler–Maruyama and dpm_adaptive
    /// against dpmpp_2m, on a Gaussian mixture and on the bundled model.
    ///
    /// Example: `stride bench adaptive` (several minutes), `stride bench adaptive --model-samples 0`
    /// (the mixture only, seconds).
    Adaptive(adaptive::Args),
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Solvers(args) => solvers::run(args),
        BenchCommand::Generate(args) => generate::run(args),
        BenchCommand::Adaptive(args) => adaptive::run(args),
    }
}
