//! Typed errors of the distillation crate.

use stride_solvers::{ScheduleError, SolverError};

/// Anything that can stop a distillation or refuse a schedule file.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// A setting that cannot work (step count, solver, grid).
    #[error("{0}")]
    Config(String),
    /// The search found no path of the requested length (every candidate cost was NaN).
    #[error("no {steps}-step path reaches the clean end of the {n}-step teacher grid (every cost was NaN?)")]
    NoPath { n: usize, steps: usize },
    /// The model produced NaN or Inf while the distiller evaluated it.
    #[error("the model returned NaN or Inf at sigma {sigma} (calibration sample {sample})")]
    NonFinite { sample: usize, sigma: f64 },
    /// A schedule file that cannot be read or is not a valid schedule.
    #[error("schedule file {origin}: {message}")]
    File { origin: String, message: String },
    /// A valid schedule file distilled for another model or solver.
    #[error("schedule file {origin} {}; use it anyway with --force", mismatches.join("; "))]
    Mismatch { origin: String, mismatches: Vec<String> },
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Solver(#[from] SolverError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
