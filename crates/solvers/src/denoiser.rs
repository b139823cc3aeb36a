//! The one trait between models and solvers, and the conversions from a model's raw
//! output to the data (`x0`) and noise (`eps`) predictions solvers work with.

use candle_core::{DType, Result, Tensor};

use crate::schedule::{Family, NoiseSchedule};
use crate::SolverError;

/// What a model's raw output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parameterization {
    /// The added noise `eps`.
    Epsilon,
    /// The clean sample `x0` (diffusers `"sample"`).
    X0,
    /// `v = alpha eps - sigma x0` (Salimans & Ho; SD 2.1).
    V,
    /// Flow velocity `dx/dt = eps - x0` (rectified flow: SD3, Flux).
    FlowVelocity,
}

/// A denoising model, bound to its conditioning (prompt embeddings, guidance): solvers only
/// see noisy states and noise levels. Classifier-free guidance is a wrapper implementing this.
///
/// ```
/// use candle_core::{Result, Tensor};
/// use stride_solvers::{Denoiser, NoiseSchedule, Parameterization};
///
/// /// The exact denoiser for data that is always 0.
/// struct Zero(NoiseSchedule);
/// impl Denoiser for Zero {
///     fn schedule(&self) -> &NoiseSchedule { &self.0 }
///     fn parameterization(&self) -> Parameterization { Parameterization::X0 }
///     fn predict(&self, x: &Tensor, _sigmas: &[f64]) -> Result<Tensor> { x.zeros_like() }
/// }
/// ```
/// Whether classifier-free guidance at `scale` needs the unconditional prediction. As in
/// diffusers, only a scale above 1 guides; at or below 1 the conditional prediction is used
/// alone (SD-Turbo's and SDXL-Turbo's model cards sample at scale 0).
pub fn cfg_guides(scale: f64) -> bool {
    scale > 1.0
}

pub trait Denoiser {
    /// The forward process the model was trained with.
    fn schedule(&self) -> &NoiseSchedule;

    /// What [`Denoiser::predict`] returns.
    fn parameterization(&self) -> Parameterization;

    /// The raw prediction for the native state `x` (batch first, `x = alpha x0 + sigma eps`)
    /// at k-diffusion sigma `sigmas[i]` for sample `i`. Discrete and VP models take their
    /// timestep from [`NoiseSchedule::t_at`]; flow-matching models (SD3, Flux, tiny-shapes)
    /// take the noise fraction `s / (1 + s)` (diffusers: times 1000) whatever the schedule's
    /// shift, where `t_at` would give the unshifted time.
    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> Result<Tensor>;
}

impl<D: Denoiser + ?Sized> Denoiser for &D {
    fn schedule(&self) -> &NoiseSchedule {
        (**self).schedule()
    }
    fn parameterization(&self) -> Parameterization {
        (**self).parameterization()
    }
    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
        (**self).predict(x, sigmas)
    }
}

/// One coefficient per sample of a non-empty batch.
fn check_rows(x: &Tensor, coeffs: &[f64]) -> Result<()> {
    let batch = x.dim(0)?;
    if batch == 0 || coeffs.len() != batch {
        candle_core::bail!("{} per-sample sigmas or coefficients for a batch of {batch}", coeffs.len());
    }
    Ok(())
}

/// Multiplies each sample of `x` by its own coefficient (one scalar op when they are equal).
pub(crate) fn scale_rows(x: &Tensor, coeffs: &[f64]) -> Result<Tensor> {
    check_rows(x, coeffs)?;
    if coeffs.windows(2).all(|w| w[0] == w[1]) {
        return x.affine(coeffs[0], 0.0);
    }
    let mut shape = vec![coeffs.len()];
    shape.resize(x.rank(), 1);
    let c = Tensor::new(coeffs, x.device())?.to_dtype(x.dtype())?.reshape(shape)?;
    x.broadcast_mul(&c)
}

/// `a * x + b * y`, per sample.
pub(crate) fn lincomb_rows(x: &Tensor, a: &[f64], y: &Tensor, b: &[f64]) -> Result<Tensor> {
    check_rows(x, a)?;
    check_rows(y, b)?;
    let uniform = |c: &[f64]| c.windows(2).all(|w| w[0] == w[1]);
    if uniform(a) && uniform(b) {
        return crate::update::lincomb(&[(a[0], x), (b[0], y)]);
    }
    scale_rows(x, a)? + scale_rows(y, b)?
}

/// Converts a raw model output to `(x0, eps)` for the native state `x` at sigmas `s`
/// (per sample). Each form avoids dividing by a coefficient that can vanish: at `s = inf`
/// (alpha = 0) only epsilon prediction cannot give `x0`.
pub fn to_x0_eps(
    param: Parameterization,
    family: Family,
    x: &Tensor,
    out: &Tensor,
    sigmas: &[f64],
) -> Result<(Tensor, Tensor)> {
    let (alpha, sigma): (Vec<f64>, Vec<f64>) = sigmas.iter().map(|&s| family.alpha_sigma(s)).unzip();
    let map = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
        alpha.iter().zip(&sigma).map(|(&a, &s)| f(a, s)).collect()
    };
    Ok(match param {
        Parameterization::Epsilon => {
            // x0 = (x - sigma eps) / alpha
            let x0 = lincomb_rows(x, &map(&|a, _| 1.0 / a), out, &map(&|a, s| -s / a))?;
            (x0, out.clone())
        }
        Parameterization::X0 => {
            let eps = lincomb_rows(x, &map(&|_, s| 1.0 / s), out, &map(&|a, s| -a / s))?;
            (out.clone(), eps)
        }
        Parameterization::V => {
            // x = a x0 + s eps, v = a eps - s x0  =>  x0 = (a x - s v)/n, eps = (s x + a v)/n
            let x0 =
                lincomb_rows(x, &map(&|a, s| a / (a * a + s * s)), out, &map(&|a, s| -s / (a * a + s * s)))?;
            let eps =
                lincomb_rows(x, &map(&|a, s| s / (a * a + s * s)), out, &map(&|a, s| a / (a * a + s * s)))?;
            (x0, eps)
        }
        Parameterization::FlowVelocity => {
            // v = eps - x0  =>  x0 = (x - s v)/(a + s), eps = (x + a v)/(a + s)
            let x0 = lincomb_rows(x, &map(&|a, s| 1.0 / (a + s)), out, &map(&|a, s| -s / (a + s)))?;
            let eps = lincomb_rows(x, &map(&|a, s| 1.0 / (a + s)), out, &map(&|a, s| a / (a + s)))?;
            (x0, eps)
        }
    })
}

/// The data prediction `x0` alone (what every solver but Heun needs: one buffer fewer than
/// [`to_x0_eps`]).
pub fn to_x0(
    param: Parameterization,
    family: Family,
    x: &Tensor,
    out: &Tensor,
    sigmas: &[f64],
) -> Result<Tensor> {
    let (alpha, sigma): (Vec<f64>, Vec<f64>) = sigmas.iter().map(|&s| family.alpha_sigma(s)).unzip();
    let coeffs = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
        alpha.iter().zip(&sigma).map(|(&a, &s)| f(a, s)).collect()
    };
    match param {
        Parameterization::X0 => Ok(out.clone()),
        Parameterization::Epsilon => lincomb_rows(x, &coeffs(&|a, _| 1.0 / a), out, &coeffs(&|a, s| -s / a)),
        Parameterization::V => {
            lincomb_rows(x, &coeffs(&|a, s| a / (a * a + s * s)), out, &coeffs(&|a, s| -s / (a * a + s * s)))
        }
        Parameterization::FlowVelocity => {
            lincomb_rows(x, &coeffs(&|a, s| 1.0 / (a + s)), out, &coeffs(&|a, s| -s / (a + s)))
        }
    }
}

/// The raw output a model of parameterization `param` would give for `(x0, eps)` at
/// `(alpha, sigma)`: the inverse of [`to_x0_eps`], for models that compute `x0` directly
/// (such as the exact Gaussian-mixture denoiser) but report another parameterization.
pub fn from_x0_eps(
    param: Parameterization,
    x0: &Tensor,
    eps: &Tensor,
    alpha: &[f64],
    sigma: &[f64],
) -> Result<Tensor> {
    let ones = vec![1.0; alpha.len()];
    match param {
        Parameterization::Epsilon => Ok(eps.clone()),
        Parameterization::X0 => Ok(x0.clone()),
        Parameterization::V => {
            let neg_sigma: Vec<f64> = sigma.iter().map(|s| -s).collect();
            lincomb_rows(eps, alpha, x0, &neg_sigma)
        }
        Parameterization::FlowVelocity => {
            let minus_ones = vec![-1.0; alpha.len()];
            lincomb_rows(eps, &ones, x0, &minus_ones)
        }
    }
}

/// [`Denoiser::predict`], checked to return one prediction per element of `x`: the solvers
/// index their per-sample checks by the prediction's rows.
pub fn predict_checked<D: Denoiser + ?Sized>(
    model: &D,
    x: &Tensor,
    sigmas: &[f64],
) -> std::result::Result<Tensor, SolverError> {
    let out = model.predict(x, sigmas)?;
    if out.dims() != x.dims() {
        return Err(SolverError::PredictionShape { input: x.dims().to_vec(), output: out.dims().to_vec() });
    }
    Ok(out)
}

/// The batch size of a state, which must hold at least one sample.
pub(crate) fn batch_size(x: &Tensor) -> std::result::Result<usize, SolverError> {
    match x.dims().first() {
        Some(&batch) if batch > 0 => Ok(batch),
        _ => Err(SolverError::Options(format!(
            "the state must hold at least one sample (batch first), got shape {:?}",
            x.dims()
        ))),
    }
}

/// Whether every element of `t` is finite: one reduction, no latent-sized temporary (NaN and
/// Inf propagate through the sum; finite latents do not overflow it).
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    let total = t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(total.is_finite())
}
