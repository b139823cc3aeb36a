//! The teacher: a fine solver run over an N-step grid, keeping its state and its x0
//! prediction at every grid point. The student may only land on these points.

use candle_core::Tensor;
use stride_solvers::{NoiseSchedule, Sampler, Scheduler, Sigmas, TorchNoise};

use crate::error::DistillError;
use crate::model::{InOrder, RowDenoiser};

/// The OSS default grid size.
pub const DEFAULT_GRID_STEPS: usize = 200;

/// The default teacher grid: `steps` steps uniform in the model's own time, as OSS (flow time)
/// and BOSS (uniform discretisation) use, then 0. For VE models the time is sigma itself, which
/// would leave almost no points at low noise, so they get uniform log-SNR (exponential) instead.
pub fn default_grid(schedule: &NoiseSchedule, steps: usize) -> Result<Sigmas, DistillError> {
    let scheduler = match schedule {
        NoiseSchedule::Ve { .. } => Scheduler::Exponential,
        _ => Scheduler::Uniform,
    };
    Ok(scheduler.sigmas(schedule, steps)?)
}

/// The name [`default_grid`] records in a schedule file.
pub fn default_grid_name(schedule: &NoiseSchedule) -> &'static str {
    match schedule {
        NoiseSchedule::Ve { .. } => "exponential",
        _ => "uniform",
    }
}

/// One sample's teacher trajectory, flattened: row `j` of each matrix belongs to grid index `j`
/// (0 = clean end, `n` = start).
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// The states `X_j`, `(n + 1, D)`.
    pub states: Tensor,
    /// The teacher's x0 predictions at `X_j`, `(n + 1, D)`; row 0 is the final state itself.
    pub x0: Tensor,
}

impl Trajectory {
    /// The rows the student is compared with.
    pub fn targets(&self, distance: crate::Distance) -> &Tensor {
        match distance {
            crate::Distance::Xt => &self.states,
            crate::Distance::X0 => &self.x0,
        }
    }
}

/// Runs `teacher` over `grid` from the batch `x` (native states at `grid.first()`, rows =
/// calibration samples `rows`) and returns one [`Trajectory`] per sample.
pub fn run(
    model: &dyn RowDenoiser,
    teacher: &Sampler,
    grid: &Sigmas,
    x: &Tensor,
    rows: &[usize],
) -> Result<Vec<Trajectory>, DistillError> {
    if teacher.eta != 0.0 {
        return Err(DistillError::Config(format!(
            "the teacher must be deterministic; `{}` has eta {}",
            teacher.kind, teacher.eta
        )));
    }
    let n = grid.steps();
    // Recorded in sampler order: states[t] and x0s[t] belong to grid index n - t.
    let mut states = vec![x.clone()];
    let mut x0s = Vec::with_capacity(n + 1);
    let adapter = InOrder { model, rows };
    let mut unused = TorchNoise::new(&[0]);
    let last = teacher.sample(&adapter, x.clone(), grid, &mut unused, |step| {
        states.push(step.x.clone());
        x0s.push(step.denoised.clone());
    })?;
    x0s.push(last);
    states.reverse();
    x0s.reverse();
    (0..rows.len()).map(|b| Ok(Trajectory { states: rows_of(&states, b)?, x0: rows_of(&x0s, b)? })).collect()
}

/// Sample `b` of every batch in `batches`, flattened and stacked.
fn rows_of(batches: &[Tensor], b: usize) -> candle_core::Result<Tensor> {
    let rows: Vec<Tensor> =
        batches.iter().map(|t| t.get(b)?.flatten_all()).collect::<candle_core::Result<_>>()?;
    Tensor::stack(&rows, 0)
}
