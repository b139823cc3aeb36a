//! `stride bench ...`: benchmarks that print tables and write plots.

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
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Solvers(args) => solvers::run(args),
    }
}
