//! How the distiller calls a model: batches whose rows belong to different calibration
//! samples (and so, for a text-to-image model, to different prompts).

use candle_core::{DType, Tensor};
use stride_solvers::denoiser::to_x0;
use stride_solvers::sampler::process_x0;
use stride_solvers::{Denoiser, NoiseSchedule, Parameterization, X0Processing};

use crate::error::DistillError;

/// A denoiser whose batch rows may belong to different calibration samples: row `r` of `x` is
/// a state of sample `samples[r]` at k-diffusion sigma `sigmas[r]`. A conditional model picks
/// each row's conditioning by its sample; see [`Shared`] for models without one.
pub trait RowDenoiser {
    fn schedule(&self) -> &NoiseSchedule;
    fn parameterization(&self) -> Parameterization;
    fn predict(&self, x: &Tensor, sigmas: &[f64], samples: &[usize]) -> candle_core::Result<Tensor>;
}

/// A [`Denoiser`] whose conditioning is the same for every sample (an unconditional model, or
/// one prompt and guidance scale for the whole calibration set).
pub struct Shared<D>(pub D);

impl<D: Denoiser> RowDenoiser for Shared<D> {
    fn schedule(&self) -> &NoiseSchedule {
        self.0.schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.0.parameterization()
    }
    fn predict(&self, x: &Tensor, sigmas: &[f64], _samples: &[usize]) -> candle_core::Result<Tensor> {
        self.0.predict(x, sigmas)
    }
}

/// The rows `rows` of a [`RowDenoiser`] as a plain [`Denoiser`] over a batch in that order,
/// for the solver crate's samplers (the teacher run, fidelity checks).
pub struct InOrder<'a> {
    pub model: &'a dyn RowDenoiser,
    pub rows: &'a [usize],
}

impl Denoiser for InOrder<'_> {
    fn schedule(&self) -> &NoiseSchedule {
        self.model.schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.model.parameterization()
    }
    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> candle_core::Result<Tensor> {
        self.model.predict(x, sigmas, self.rows)
    }
}

/// One state to evaluate: sample, sigma, state (without the batch dimension).
pub struct Query<'a> {
    pub sample: usize,
    pub sigma: f64,
    pub x: &'a Tensor,
}

/// The x0 predictions (processed as the student's sampler would) for `queries`, in calls of at
/// most `max_rows` rows; each comes back without the batch dimension.
pub fn predict_x0(
    model: &dyn RowDenoiser,
    queries: &[Query],
    processing: X0Processing,
    max_rows: usize,
) -> Result<Vec<Tensor>, DistillError> {
    let family = model.schedule().family();
    let mut out = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(max_rows.max(1)) {
        let xs: Vec<&Tensor> = chunk.iter().map(|q| q.x).collect();
        let x = Tensor::stack(&xs, 0)?;
        let sigmas: Vec<f64> = chunk.iter().map(|q| q.sigma).collect();
        let samples: Vec<usize> = chunk.iter().map(|q| q.sample).collect();
        let raw = model.predict(&x, &sigmas, &samples)?;
        if raw.dims() != x.dims() {
            return Err(stride_solvers::SolverError::PredictionShape {
                input: x.dims().to_vec(),
                output: raw.dims().to_vec(),
            }
            .into());
        }
        let x0 = process_x0(&to_x0(model.parameterization(), family, &x, &raw, &sigmas)?, processing)?;
        if let Some(bad) = first_non_finite(&x0)? {
            return Err(DistillError::NonFinite { sample: chunk[bad].sample, sigma: chunk[bad].sigma });
        }
        for r in 0..chunk.len() {
            out.push(x0.get(r)?);
        }
    }
    Ok(out)
}

/// The first row holding NaN or Inf (a row sum propagates them).
fn first_non_finite(x: &Tensor) -> candle_core::Result<Option<usize>> {
    let sums = x.flatten_from(1)?.sum(1)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(sums.iter().position(|s| !s.is_finite()))
}
