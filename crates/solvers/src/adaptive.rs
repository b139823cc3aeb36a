//! Adaptive-step solvers: they pick their own steps between two noise levels from an
//! embedded error estimate, and stop at a hard cap on model evaluations.
//!
//! - [`AdaptiveSde`] (`adaptive_sde`): "Gotta Go Fast When Generating Data with Score-Based
//!   Models" (Jolicoeur-Martineau et al. 2021), the reverse SDE integrated by an
//!   Euler–Maruyama / improved-Euler pair sharing one noise draw, each sample with its own
//!   step size (AlexiaJM/score_sde_fast_sampling, `AdaptivePredictor`).
//! - [`DpmAdaptive`] (`dpm_adaptive`): k-diffusion's `sample_dpm_adaptive`, the DPM-Solver-12
//!   and -23 embedded pairs in log-SNR time with a PID step-size controller, one step size
//!   for the batch; `eta > 0` is the ancestral variant.
//!
//! Both work on the model's native state `x = alpha x0 + sigma eps` through [`Denoiser`],
//! report every iteration (accepted or not) to a callback and return per-sample statistics
//! ([`AdaptiveStats`]). Reaching the NFE cap is not an error: the sample stops where it is,
//! and the stats name it ([`AdaptiveStats::warnings`]). NaN or Inf from the model or in an
//! error estimate is [`SolverError::NonFinite`] naming the iteration.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::denoiser::{batch_size, lincomb_rows, predict_checked, to_x0_eps, Denoiser, Parameterization};
use crate::error::SolverError;
use crate::noise::NoiseSource;
use crate::schedule::{Family, NoiseSchedule};
use crate::update::{ancestral_split, axpby};

/// The adaptive samplers' community names.
pub const ADAPTIVE_SAMPLERS: &[&str] = &["adaptive_sde", "dpm_adaptive"];

/// Default cap on model evaluations per sample (`--max-nfe`).
pub const DEFAULT_MAX_NFE: usize = 1000;

/// A sample whose solver time is within this of the end is finished (the reference's loop
/// test `|t - eps| > 1e-6`).
const SDE_DONE_TOL: f64 = 1e-6;

/// k-diffusion's `sample_dpm_adaptive` loop test: it stops within 1e-5 of the end lambda.
const DPM_DONE_TOL: f64 = 1e-5;

/// How the per-sample error `(x_high - x_low) / delta` is reduced to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorNorm {
    /// `sqrt(sum(e^2) / n)`, `n` the elements of one sample (the reference's `L2_scaled`).
    L2Scaled,
    /// `max |e|` (the JAX reference's `Linf`).
    Linf,
}

/// What [`AdaptiveSde`] does at the end time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalDenoise {
    /// Return the model's data prediction `x0 = E[x0 | x]` (Tweedie), one more evaluation.
    X0,
    /// Return `x + sigma^2 score = x - sigma eps`, the reference's "Tweedie" step (score SDE):
    /// for VP it is `alpha x0`, not `x0` (`alpha(1e-3) = 0.99995` for the default VP).
    ScoreSde,
    /// Return the state at the end time, without a last evaluation.
    None,
}

// ------------------------------------------------------------------ forward SDE

/// The forward SDE `dx = f(t) x dt + g(t) dW` whose marginals are a schedule's
/// `x_t = alpha x0 + sigma eps`, in the time variable [`AdaptiveSde`] steps in. With
/// `k(t) = d ln s / dt` (`s` the k-diffusion sigma): `f = (d ln alpha / d ln s) k` and
/// `g^2 = 2 sigma^2 k`, which gives
///
/// - continuous VP (score SDE): the schedule's own `t in (0, 1]`, `beta(t) = beta_min +
///   t (beta_max - beta_min)`, `f = -beta / 2`, `g^2 = beta`, exactly as the reference;
/// - every other schedule: normalised log-SNR time, `ln s` linear in `t`,
///   `s(t) = s_lo (s_hi / s_lo)^t`, so `k = ln(s_hi / s_lo)`, `f = -sigma^2 k` (VP),
///   `-sigma k` (flow: the rectified-flow SDE of `x = (1-u) x0 + u eps`, `u = sigma`),
///   `0` (VE) and `g^2 = 2 sigma^2 k`. `(s_lo, s_hi)` is the schedule's trained range: for
///   VE this is score SDE's VE SDE (`sigma(t)` geometric from `sigma_min` at `t = 0` to
///   `sigma_max` at `t = 1`); for discrete VP `(sigma_min(), sigma_max())`; for flow the
///   k-sigmas of `u = 1e-3` and `u = 1 - 1e-3` (`1/999`, `999`), whatever the shift.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardSde {
    family: Family,
    clock: Clock,
}

#[derive(Debug, Clone, PartialEq)]
enum Clock {
    ContinuousVp { beta_min: f64, beta_max: f64, schedule: NoiseSchedule },
    LogSnr { ln_lo: f64, span: f64 },
}

impl ForwardSde {
    pub fn new(schedule: &NoiseSchedule) -> Self {
        let family = schedule.family();
        let clock = match schedule {
            NoiseSchedule::ContinuousVp { beta_min, beta_max } => {
                Clock::ContinuousVp { beta_min: *beta_min, beta_max: *beta_max, schedule: schedule.clone() }
            }
            NoiseSchedule::Flow { .. } => {
                let lo: f64 = 1e-3 / (1.0 - 1e-3);
                Clock::LogSnr { ln_lo: lo.ln(), span: -2.0 * lo.ln() }
            }
            NoiseSchedule::Ve { .. } | NoiseSchedule::Discrete(_) => {
                let (lo, hi) = (schedule.sigma_min(), schedule.sigma_max());
                Clock::LogSnr { ln_lo: lo.ln(), span: (hi / lo).ln() }
            }
        };
        Self { family, clock }
    }

    /// The solver time at k-diffusion sigma `s`.
    pub fn time_at(&self, s: f64) -> f64 {
        match &self.clock {
            Clock::ContinuousVp { schedule, .. } => schedule.t_at(s),
            Clock::LogSnr { ln_lo, span } => (s.ln() - ln_lo) / span,
        }
    }

    /// The k-diffusion sigma at solver time `t`.
    pub fn sigma_at(&self, t: f64) -> f64 {
        match &self.clock {
            Clock::ContinuousVp { schedule, .. } => schedule.sigma_at(t),
            Clock::LogSnr { ln_lo, span } => (ln_lo + span * t).exp(),
        }
    }

    /// `(f(t), g(t)^2)`.
    pub fn coefficients(&self, t: f64) -> (f64, f64) {
        match &self.clock {
            Clock::ContinuousVp { beta_min, beta_max, .. } => {
                let beta = beta_min + t * (beta_max - beta_min);
                (-0.5 * beta, beta)
            }
            Clock::LogSnr { span, .. } => {
                let sigma = self.family.sigma(self.sigma_at(t));
                let dlog_alpha = match self.family {
                    Family::Vp => -sigma * sigma,
                    Family::Flow => -sigma,
                    Family::Ve => 0.0,
                };
                (dlog_alpha * span, 2.0 * sigma * sigma * span)
            }
        }
    }
}

// ------------------------------------------------------------------ reporting

/// One sample's part in one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleProgress {
    /// Whether the sample tried a step this iteration (false once finished or capped).
    pub stepped: bool,
    /// Whether the step was accepted (false when it did not step).
    pub accepted: bool,
    /// Solver time before and after the iteration: the SDE time for `adaptive_sde`, the
    /// log-SNR `lambda = -ln s` for `dpm_adaptive`.
    pub t: f64,
    pub t_next: f64,
    /// k-diffusion sigma before and after.
    pub sigma: f64,
    pub sigma_next: f64,
    /// Step size tried (0 when the sample did not step) and the one proposed next.
    pub h: f64,
    pub h_next: f64,
    /// Scaled error estimate (accept when small enough; 0 when the sample did not step).
    pub error: f64,
    /// Model evaluations, accepted and rejected steps of this sample so far.
    pub nfe: usize,
    pub accepted_steps: usize,
    pub rejected_steps: usize,
}

/// What an adaptive solver reports after each iteration.
pub struct AdaptiveStep<'a> {
    /// 0-based iteration index (accepted or rejected).
    pub iteration: usize,
    /// The batch after the iteration (native space).
    pub x: &'a Tensor,
    /// The data prediction at the iteration's starting state.
    pub denoised: &'a Tensor,
    /// One entry per sample.
    pub samples: &'a [SampleProgress],
}

/// Per-sample totals of an adaptive run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleStats {
    /// Model evaluations spent on this sample (batched calls count once per sample in them).
    pub nfe: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// The k-diffusion sigma where the sample stopped when the NFE cap (or a vanishing step
    /// size) ended it before the target sigma.
    pub capped_at: Option<f64>,
}

/// What [`AdaptiveSde::sample`] and [`DpmAdaptive::sample`] return next to the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveStats {
    /// `adaptive_sde` or `dpm_adaptive`.
    pub solver: &'static str,
    pub max_nfe: usize,
    /// Solver iterations (accepted and rejected).
    pub iterations: usize,
    /// Calls of `Denoiser::predict` on the batch.
    pub model_calls: usize,
    pub sigma_min: f64,
    pub samples: Vec<SampleStats>,
}

impl AdaptiveStats {
    fn new(solver: &'static str, max_nfe: usize, sigma_min: f64, batch: usize) -> Self {
        Self {
            solver,
            max_nfe,
            iterations: 0,
            model_calls: 0,
            sigma_min,
            samples: vec![SampleStats::default(); batch],
        }
    }

    /// Indices of the samples the cap stopped early.
    pub fn capped(&self) -> Vec<usize> {
        self.samples.iter().enumerate().filter(|(_, s)| s.capped_at.is_some()).map(|(i, _)| i).collect()
    }

    /// One warning per sample the cap stopped early, naming it.
    pub fn warnings(&self) -> Vec<String> {
        self.samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.capped_at.map(|sigma| {
                    format!(
                        "{}: sample {i} stopped at sigma {sigma:.6} before sigma_min {:.6}: the model \
                         evaluation cap ({}, --max-nfe) was reached after {} evaluations ({} accepted, {} \
                         rejected steps); its result is not converged",
                        self.solver, self.sigma_min, self.max_nfe, s.nfe, s.accepted, s.rejected
                    )
                })
            })
            .collect()
    }
}

impl fmt::Display for AdaptiveStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} iterations, {} model calls", self.solver, self.iterations, self.model_calls)?;
        for (i, s) in self.samples.iter().enumerate() {
            write!(f, "\n  sample {i}: {} NFE, {} accepted, {} rejected", s.nfe, s.accepted, s.rejected)?;
            if let Some(sigma) = s.capped_at {
                write!(f, " (NFE cap {} reached at sigma {sigma:.6})", self.max_nfe)?;
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ helpers

fn check_range(sigma_max: f64, sigma_min: f64) -> Result<(), SolverError> {
    if !(sigma_max.is_finite() && sigma_min > 0.0 && sigma_min < sigma_max) {
        return Err(SolverError::Options(format!(
            "adaptive solvers need finite 0 < sigma_min < sigma_max, got sigma_min {sigma_min}, sigma_max \
             {sigma_max} (for flow models start below pure noise, e.g. NoiseSchedule::sampling_range)"
        )));
    }
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), SolverError> {
    if ok {
        Ok(())
    } else {
        Err(SolverError::Options(what.to_string()))
    }
}

/// A small tensor's values on the host as f64 (Metal has no f64: reduce first, convert after).
fn host_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Index of the first sample holding NaN or Inf (a per-row sum of |x| propagates both).
fn first_nonfinite_row(t: &Tensor) -> candle_core::Result<Option<usize>> {
    let sums = host_f64(&t.flatten_from(1)?.abs()?.sum(1)?)?;
    Ok(sums.iter().position(|v| !v.is_finite()))
}

/// The norm of each sample of `e`.
fn row_norms(e: &Tensor, norm: ErrorNorm) -> candle_core::Result<Vec<f64>> {
    let flat = e.flatten_from(1)?;
    let n = flat.dim(1)? as f64;
    Ok(match norm {
        ErrorNorm::L2Scaled => host_f64(&flat.sqr()?.sum(1)?)?.into_iter().map(|v| (v / n).sqrt()).collect(),
        ErrorNorm::Linf => host_f64(&flat.abs()?.max(1)?)?,
    })
}

/// Row `i` of `a` where `mask[i]`, else of `b`.
fn select_rows(mask: &[bool], a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if mask.iter().all(|&m| m) {
        return Ok(a.clone());
    }
    if !mask.iter().any(|&m| m) {
        return Ok(b.clone());
    }
    let mut shape = vec![mask.len()];
    shape.resize(a.rank(), 1);
    let m: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
    let m = Tensor::from_vec(m, shape, a.device())?.broadcast_as(a.shape())?.contiguous()?;
    m.where_cond(a, b)
}

/// `delta = max(atol, rtol * max(|a|, |b|))`, elementwise.
fn mixed_tolerance(a: &Tensor, b: &Tensor, rtol: f64, atol: f64) -> candle_core::Result<Tensor> {
    a.abs()?.maximum(&b.abs()?)?.affine(rtol, 0.0)?.maximum(atol)
}

// ------------------------------------------------------------------ adaptive_sde

/// "Gotta Go Fast" adaptive reverse-SDE solver (`adaptive_sde`).
///
/// Per sample a state `(x, x_prev, t, h)`. Each iteration draws one `z` and, with the reverse
/// drift `F = f x - g^2 score` (`score = -eps / sigma`) of [`ForwardSde`]:
/// `K1 = -h F(x, t) + g(t) sqrt(h) z`, `K2 = -h F(x + K1, t - h) + g(t - h) sqrt(h) z`,
/// `x_low = x + K1` (Euler–Maruyama), `x_high = x + (K1 + K2) / 2` (improved Euler),
/// `delta = max(atol, rtol max(|x_prev|, |x_low|))`, `err = ||(x_high - x_low) / delta||`.
/// Accept iff `err <= 1`: `x = x_high`, `x_prev = x_low`, `t -= h`. Then always
/// `h = min(t - t_end, theta h err^(-r))`. At the end, [`FinalDenoise`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use stride_solvers::adaptive::AdaptiveSde;
/// use stride_solvers::{Denoiser, NoiseSchedule, Parameterization, TorchNoise};
///
/// struct Zero(NoiseSchedule); // exact denoiser for data that is always 0
/// impl Denoiser for Zero {
///     fn schedule(&self) -> &NoiseSchedule { &self.0 }
///     fn parameterization(&self) -> Parameterization { Parameterization::X0 }
///     fn predict(&self, x: &Tensor, _: &[f64]) -> candle_core::Result<Tensor> { x.zeros_like() }
/// }
/// let model = Zero(NoiseSchedule::continuous_vp());
/// let (s_max, s_min) = (model.0.sigma_max(), model.0.sigma_min());
/// let mut noise = TorchNoise::new(&[0, 1]);
/// let x = Tensor::randn(0f32, 1.0, (2, 4), &Device::Cpu).unwrap();
/// let (x0, stats) = AdaptiveSde::default().sample(&model, x, s_max, s_min, &mut noise, |_| {}).unwrap();
/// assert_eq!(x0.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
/// assert!(stats.samples.iter().all(|s| s.accepted > 0 && s.capped_at.is_none()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveSde {
    /// Relative tolerance (0.05; the paper sweeps 0.01..0.1).
    pub rtol: f64,
    /// Absolute tolerance (0.0078 = 2/255 for data in [-1, 1]; the paper uses 0.0039 for VE data in [0, 1]).
    pub atol: f64,
    /// First step size in solver time (0.01; the reference's VE configs use 0.5).
    pub h_init: f64,
    /// Safety factor on the proposed step (0.9).
    pub theta: f64,
    /// Exponent of the step-size update (0.9).
    pub r: f64,
    pub norm: ErrorNorm,
    /// Cap on model evaluations per sample, the final denoise included.
    pub max_nfe: usize,
    /// One `t` and `h` for the whole batch (for models that take one time per call): a step is
    /// accepted when every sample's error is at most 1, and `h` follows the largest error.
    pub shared_step: bool,
    pub denoise: FinalDenoise,
}

impl Default for AdaptiveSde {
    fn default() -> Self {
        Self {
            rtol: 0.05,
            atol: 0.0078,
            h_init: 0.01,
            theta: 0.9,
            r: 0.9,
            norm: ErrorNorm::L2Scaled,
            max_nfe: DEFAULT_MAX_NFE,
            shared_step: false,
            denoise: FinalDenoise::X0,
        }
    }
}

/// Evaluates the reverse drift `F = f x + (g^2 / sigma) eps` of a batch at per-sample times.
struct SdeModel<'a> {
    model: &'a dyn Denoiser,
    sde: ForwardSde,
    family: Family,
    param: Parameterization,
    calls: usize,
}

impl<'a> SdeModel<'a> {
    fn new(model: &'a dyn Denoiser) -> Self {
        let schedule = model.schedule();
        let (sde, family) = (ForwardSde::new(schedule), schedule.family());
        Self { model, sde, family, param: model.parameterization(), calls: 0 }
    }

    fn predict(
        &mut self,
        x: &Tensor,
        ts: &[f64],
        step: usize,
    ) -> Result<(Tensor, Tensor, Vec<f64>), SolverError> {
        let s: Vec<f64> = ts.iter().map(|&t| self.sde.sigma_at(t)).collect();
        let out = predict_checked(self.model, x, &s)?;
        self.calls += 1;
        if let Some(i) = first_nonfinite_row(&out)? {
            return Err(SolverError::NonFinite { step, sigma: s[i] });
        }
        let (x0, eps) = to_x0_eps(self.param, self.family, x, &out, &s)?;
        Ok((x0, eps, s))
    }

    /// `(F, x0)` at `(x, ts)`.
    fn drift(&mut self, x: &Tensor, ts: &[f64], step: usize) -> Result<(Tensor, Tensor), SolverError> {
        let (x0, eps, s) = self.predict(x, ts, step)?;
        let (f, c): (Vec<f64>, Vec<f64>) = ts
            .iter()
            .zip(&s)
            .map(|(&t, &s)| {
                let (f, g2) = self.sde.coefficients(t);
                (f, g2 / self.family.sigma(s))
            })
            .unzip();
        Ok((lincomb_rows(x, &f, &eps, &c)?, x0))
    }
}

impl SdeModel<'_> {
    /// What [`FinalDenoise`] returns for the state `x` at per-sample times `ts`.
    fn final_denoise(
        &mut self,
        x: Tensor,
        ts: &[f64],
        denoise: FinalDenoise,
        step: usize,
    ) -> Result<Tensor, SolverError> {
        if denoise == FinalDenoise::None {
            return Ok(x);
        }
        let (x0, eps, s) = self.predict(&x, ts, step)?;
        if denoise == FinalDenoise::X0 {
            return Ok(x0);
        }
        let ones = vec![1.0; s.len()];
        let neg_sigma: Vec<f64> = s.iter().map(|&s| -self.family.sigma(s)).collect();
        Ok(lincomb_rows(&x, &ones, &eps, &neg_sigma)?)
    }
}

impl AdaptiveSde {
    fn validate(&self) -> Result<(), SolverError> {
        check(self.rtol >= 0.0 && self.rtol.is_finite(), "adaptive_sde: rtol must be finite and >= 0")?;
        check(self.atol > 0.0 && self.atol.is_finite(), "adaptive_sde: atol must be finite and > 0")?;
        check(self.h_init > 0.0 && self.h_init.is_finite(), "adaptive_sde: h_init must be finite and > 0")?;
        check(self.theta > 0.0 && self.theta.is_finite(), "adaptive_sde: theta must be finite and > 0")?;
        check(self.r > 0.0 && self.r.is_finite(), "adaptive_sde: r must be finite and > 0")?;
        check(self.max_nfe >= 3, "adaptive_sde: max_nfe must be at least 3 (one step and the final denoise)")
    }

    /// Integrates the reverse SDE from `x` (native state at k-sigma `sigma_max`) down to
    /// `sigma_min`, then applies [`Self::denoise`]. `noise` gives one batch-shaped draw per
    /// iteration. Returns the samples and per-sample statistics.
    pub fn sample(
        &self,
        model: &dyn Denoiser,
        x: Tensor,
        sigma_max: f64,
        sigma_min: f64,
        noise: &mut dyn NoiseSource,
        mut on_step: impl FnMut(&AdaptiveStep),
    ) -> Result<(Tensor, AdaptiveStats), SolverError> {
        self.validate()?;
        check_range(sigma_max, sigma_min)?;
        let mut m = SdeModel::new(model);
        let sde = m.sde.clone();
        let batch = batch_size(&x)?;
        let (t_start, t_end) = (sde.time_at(sigma_max), sde.time_at(sigma_min));
        let mut stats = AdaptiveStats::new("adaptive_sde", self.max_nfe, sigma_min, batch);
        let reserve = usize::from(self.denoise != FinalDenoise::None);
        let mut t = vec![t_start; batch];
        // The reference starts at h_init whatever the range; a first step past t_end would
        // leave the process's time range, so it is capped (no change on the full range).
        let mut h = vec![self.h_init.min(t_start - t_end); batch];
        let mut capped = vec![false; batch];
        let mut x_prev = x.clone();
        let mut x = x;
        // The first stage's (F, x0), reusable for rows whose (x, t) did not change since.
        let mut cache: Option<(Tensor, Tensor)> = None;
        let mut cache_valid = vec![false; batch];
        let mut progress = vec![
            SampleProgress {
                stepped: false,
                accepted: false,
                t: t_start,
                t_next: t_start,
                sigma: sigma_max,
                sigma_next: sigma_max,
                h: 0.0,
                h_next: self.h_init,
                error: 0.0,
                nfe: 0,
                accepted_steps: 0,
                rejected_steps: 0,
            };
            batch
        ];
        for iteration in 0.. {
            let mut stepping: Vec<bool> =
                (0..batch).map(|i| !capped[i] && (t[i] - t_end).abs() > SDE_DONE_TOL).collect();
            if !stepping.iter().any(|&s| s) {
                break;
            }
            let reuse = cache.is_some() && (0..batch).all(|i| !stepping[i] || cache_valid[i]);
            let cost = if reuse { 1 } else { 2 };
            // h = 0 before the end would never move again (an underflowed step size).
            let mut stop: Vec<usize> = (0..batch)
                .filter(|&i| {
                    stepping[i] && (stats.samples[i].nfe + cost + reserve > self.max_nfe || h[i] <= 0.0)
                })
                .collect();
            if self.shared_step && !stop.is_empty() {
                stop = (0..batch).filter(|&i| stepping[i]).collect();
            }
            for i in stop {
                capped[i] = true;
                stepping[i] = false;
                stats.samples[i].capped_at = Some(sde.sigma_at(t[i]));
            }
            if !stepping.iter().any(|&s| s) {
                break;
            }
            let z = noise.sample_like(&x)?;
            let hs: Vec<f64> = (0..batch).map(|i| if stepping[i] { h[i] } else { 0.0 }).collect();
            let (drift1, x0) = match (&cache, reuse) {
                (Some(c), true) => c.clone(),
                _ => m.drift(&x, &t, iteration)?,
            };
            let neg_h: Vec<f64> = hs.iter().map(|h| -h).collect();
            let noise_scale = |ts: &[f64]| -> Vec<f64> {
                ts.iter().zip(&hs).map(|(&t, &h)| sde.coefficients(t).1.sqrt() * h.sqrt()).collect()
            };
            let k1 = lincomb_rows(&drift1, &neg_h, &z, &noise_scale(&t))?;
            let x_low = (&x + &k1)?;
            let t2: Vec<f64> = t.iter().zip(&hs).map(|(t, h)| t - h).collect();
            let (drift2, _) = m.drift(&x_low, &t2, iteration)?;
            let k2 = lincomb_rows(&drift2, &neg_h, &z, &noise_scale(&t2))?;
            let x_high = (&x + (&k1 + &k2)?.affine(0.5, 0.0)?)?;
            let e = (&k2 - &k1)?.affine(0.5, 0.0)?;
            let delta = mixed_tolerance(&x_prev, &x_low, self.rtol, self.atol)?;
            let mut errs = row_norms(&(e / delta)?, self.norm)?;
            for i in (0..batch).filter(|&i| stepping[i]) {
                if !errs[i].is_finite() {
                    return Err(SolverError::NonFinite { step: iteration, sigma: sde.sigma_at(t[i]) });
                }
            }
            if self.shared_step {
                let worst = (0..batch).filter(|&i| stepping[i]).map(|i| errs[i]).fold(0.0, f64::max);
                errs.iter_mut().for_each(|e| *e = worst);
            }
            let accept: Vec<bool> = (0..batch).map(|i| stepping[i] && errs[i] <= 1.0).collect();
            x = select_rows(&accept, &x_high, &x)?;
            x_prev = select_rows(&accept, &x_low, &x_prev)?;
            for i in 0..batch {
                let p = &mut progress[i];
                let s = &mut stats.samples[i];
                p.stepped = stepping[i];
                p.accepted = accept[i];
                p.t = t[i];
                p.sigma = sde.sigma_at(t[i]);
                p.h = hs[i];
                p.error = if stepping[i] { errs[i] } else { 0.0 };
                if stepping[i] {
                    s.nfe += cost;
                    if accept[i] {
                        t[i] -= h[i];
                        s.accepted += 1;
                    } else {
                        s.rejected += 1;
                    }
                    let h_max = (t[i] - t_end).max(0.0);
                    h[i] = h_max.min(self.theta * h[i] * errs[i].powf(-self.r));
                }
                cache_valid[i] = !accept[i] && (!reuse || cache_valid[i]);
                p.t_next = t[i];
                p.sigma_next = sde.sigma_at(t[i]);
                p.h_next = h[i];
                (p.nfe, p.accepted_steps, p.rejected_steps) = (s.nfe, s.accepted, s.rejected);
            }
            stats.iterations += 1;
            on_step(&AdaptiveStep { iteration, x: &x, denoised: &x0, samples: &progress });
            cache = Some((drift1, x0));
        }
        // A finished sample is denoised at the end time (the reference's eps), a capped one where it stopped.
        let t_final: Vec<f64> = (0..batch).map(|i| if capped[i] { t[i] } else { t_end }).collect();
        let out = m.final_denoise(x, &t_final, self.denoise, stats.iterations)?;
        if self.denoise != FinalDenoise::None {
            stats.samples.iter_mut().for_each(|s| s.nfe += 1);
        }
        stats.model_calls = m.calls;
        Ok((out, stats))
    }
}

/// Euler–Maruyama on the same reverse SDE as [`AdaptiveSde`], with `steps` equal steps in its
/// solver time: the fixed-step baseline "Gotta Go Fast" compares against (score SDE's
/// `EulerMaruyamaPredictor`): `x <- x - h F(x, t) + g(t) sqrt(h) z`, then [`FinalDenoise`].
/// Costs `steps` model evaluations, plus one for the final denoise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EulerMaruyama {
    pub steps: usize,
    pub denoise: FinalDenoise,
}

impl EulerMaruyama {
    pub fn new(steps: usize) -> Self {
        Self { steps, denoise: FinalDenoise::X0 }
    }

    /// Integrates from `x` (native state at k-sigma `sigma_max`) down to `sigma_min`; `noise`
    /// gives one batch-shaped draw per step.
    pub fn sample(
        &self,
        model: &dyn Denoiser,
        x: Tensor,
        sigma_max: f64,
        sigma_min: f64,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, SolverError> {
        check(self.steps > 0, "euler_maruyama: steps must be at least 1")?;
        check_range(sigma_max, sigma_min)?;
        let mut m = SdeModel::new(model);
        let sde = m.sde.clone();
        let batch = batch_size(&x)?;
        let (t_start, t_end) = (sde.time_at(sigma_max), sde.time_at(sigma_min));
        let h = (t_start - t_end) / self.steps as f64;
        let mut x = x;
        for step in 0..self.steps {
            let t = t_start - step as f64 * h;
            let (drift, _) = m.drift(&x, &vec![t; batch], step)?;
            let z = noise.sample_like(&x)?;
            x = (&x
                + lincomb_rows(
                    &drift,
                    &vec![-h; batch],
                    &z,
                    &vec![(sde.coefficients(t).1 * h).sqrt(); batch],
                )?)?;
        }
        m.final_denoise(x, &vec![t_end; batch], self.denoise, self.steps)
    }
}

// ------------------------------------------------------------------ dpm_adaptive

/// k-diffusion's `sample_dpm_adaptive` (`dpm_adaptive`): DPM-Solver-12 (order 2) or -23
/// (order 3) embedded pairs in log-SNR time `lambda = -ln s`, for the batch as a whole.
///
/// Each iteration proposes `lambda' = min(lambda_end, lambda + h)`; order 3 compares
/// DPM-Solver-2 (`r1 = 1/3`) with DPM-Solver-3 (`r1 = 1/3, r2 = 2/3`), order 2 DPM-Solver-1
/// with -2 (`r1 = 1/2`), in k-diffusion's coordinates `y = x / alpha`. With
/// `delta = max(atol, rtol max(|y_low|, |y_prev|))` and
/// `err = ||(y_low - y_high) / delta||_2 / sqrt(numel of the batch)`, the PID controller
/// (`b1 = (p+i+d)/k`, `b2 = -(p+2d)/k`, `b3 = d/k`, `k` the order or 1.5 when `eta > 0`)
/// gives `factor = 1 + atan(inv0^b1 inv1^b2 inv2^b3 - 1)` from `inv = 1/(err + 1e-8)`;
/// accept iff `factor >= accept_safety`, and always `h *= factor`. An accepted step keeps
/// `y_low` as `y_prev` and moves to `y_high` (plus ancestral noise when `eta > 0`). The run
/// ends within 1e-5 of `lambda_end`, at `sigma_min`, without a final denoise (as k-diffusion).
///
/// Unlike k-diffusion, a rejected step reuses the model evaluation at its (unchanged)
/// starting point, so each rejection costs one evaluation less.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmAdaptive {
    /// 2 or 3.
    pub order: usize,
    pub rtol: f64,
    pub atol: f64,
    /// First step in lambda.
    pub h_init: f64,
    pub pcoeff: f64,
    pub icoeff: f64,
    pub dcoeff: f64,
    pub accept_safety: f64,
    /// Ancestral noise (k-diffusion's `eta`); 0 is the ODE.
    pub eta: f64,
    pub s_noise: f64,
    /// Cap on model evaluations (the batch shares them).
    pub max_nfe: usize,
}

impl Default for DpmAdaptive {
    fn default() -> Self {
        Self {
            order: 3,
            rtol: 0.05,
            atol: 0.0078,
            h_init: 0.05,
            pcoeff: 0.0,
            icoeff: 1.0,
            dcoeff: 0.0,
            accept_safety: 0.81,
            eta: 0.0,
            s_noise: 1.0,
            max_nfe: DEFAULT_MAX_NFE,
        }
    }
}

/// k-diffusion's `PIDStepSizeController`.
struct Pid {
    h: f64,
    b: [f64; 3],
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl Pid {
    fn propose(&mut self, error: f64) -> bool {
        let inv = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv; 3]);
        errs[0] = inv;
        let factor = errs[0].powf(self.b[0]) * errs[1].powf(self.b[1]) * errs[2].powf(self.b[2]);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

/// The model in k-diffusion coordinates: `eps` at `(y, lambda)`, `y = x / alpha`.
struct KModel<'a> {
    model: &'a dyn Denoiser,
    family: Family,
    param: Parameterization,
    batch: usize,
    calls: usize,
}

impl KModel<'_> {
    fn eps(&mut self, y: &Tensor, lambda: f64, step: usize) -> Result<(Tensor, Tensor), SolverError> {
        let s = (-lambda).exp();
        let alpha = self.family.alpha(s);
        let x = if alpha == 1.0 { y.clone() } else { y.affine(alpha, 0.0)? };
        let sigmas = vec![s; self.batch];
        let out = predict_checked(self.model, &x, &sigmas)?;
        self.calls += 1;
        if first_nonfinite_row(&out)?.is_some() {
            return Err(SolverError::NonFinite { step, sigma: s });
        }
        let (x0, eps) = to_x0_eps(self.param, self.family, &x, &out, &sigmas)?;
        Ok((eps, x0))
    }
}

fn sigma_of(lambda: f64) -> f64 {
    (-lambda).exp()
}

impl DpmAdaptive {
    fn validate(&self) -> Result<(), SolverError> {
        check(self.order == 2 || self.order == 3, "dpm_adaptive: order must be 2 or 3")?;
        check(self.rtol >= 0.0 && self.rtol.is_finite(), "dpm_adaptive: rtol must be finite and >= 0")?;
        check(self.atol > 0.0 && self.atol.is_finite(), "dpm_adaptive: atol must be finite and > 0")?;
        check(self.h_init > 0.0 && self.h_init.is_finite(), "dpm_adaptive: h_init must be finite and > 0")?;
        let coeffs = [self.pcoeff, self.icoeff, self.dcoeff, self.accept_safety, self.s_noise];
        check(coeffs.iter().all(|c| c.is_finite()), "dpm_adaptive: PID coefficients must be finite")?;
        check(self.eta >= 0.0 && self.eta.is_finite(), "dpm_adaptive: eta must be finite and >= 0")?;
        check(self.max_nfe >= self.order, "dpm_adaptive: max_nfe must allow one step")
    }

    /// Integrates from `x` (native state at k-sigma `sigma_max`) to `sigma_min`. `noise` is
    /// drawn once per accepted step when `eta > 0`, never otherwise.
    pub fn sample(
        &self,
        model: &dyn Denoiser,
        x: Tensor,
        sigma_max: f64,
        sigma_min: f64,
        noise: &mut dyn NoiseSource,
        mut on_step: impl FnMut(&AdaptiveStep),
    ) -> Result<(Tensor, AdaptiveStats), SolverError> {
        self.validate()?;
        check_range(sigma_max, sigma_min)?;
        let family = model.schedule().family();
        let batch = batch_size(&x)?;
        let mut m = KModel { model, family, param: model.parameterization(), batch, calls: 0 };
        let mut stats = AdaptiveStats::new("dpm_adaptive", self.max_nfe, sigma_min, batch);
        let k = if self.eta > 0.0 { 1.5 } else { self.order as f64 };
        let (p, i, d) = (self.pcoeff, self.icoeff, self.dcoeff);
        let mut pid = Pid {
            h: self.h_init,
            b: [(p + i + d) / k, -(p + 2.0 * d) / k, d / k],
            accept_safety: self.accept_safety,
            errs: None,
        };
        let (mut lambda, lambda_end) = (-sigma_max.ln(), -sigma_min.ln());
        let alpha0 = family.alpha(sigma_max);
        let mut y = if alpha0 == 1.0 { x } else { x.affine(1.0 / alpha0, 0.0)? };
        let mut y_prev = y.clone();
        let numel = y.elem_count() as f64;
        let mut cache: Option<(Tensor, Tensor)> = None;
        let (mut nfe, mut accepted, mut rejected) = (0, 0, 0);
        let mut iteration = 0;
        while lambda < lambda_end - DPM_DONE_TOL {
            let cost = self.order - usize::from(cache.is_some());
            if nfe + cost > self.max_nfe {
                let sigma = sigma_of(lambda);
                stats.samples.iter_mut().for_each(|s| s.capped_at = Some(sigma));
                break;
            }
            let lambda_next = lambda_end.min(lambda + pid.h);
            let (lambda_down, sigma_up) = if self.eta > 0.0 {
                let (down, _) = ancestral_split(sigma_of(lambda), sigma_of(lambda_next), self.eta);
                let lambda_down = lambda_end.min(-down.ln());
                let up = (sigma_of(lambda_next).powi(2) - sigma_of(lambda_down).powi(2)).sqrt();
                (lambda_down, up)
            } else {
                (lambda_next, 0.0)
            };
            let (eps, x0) = match cache.take() {
                Some(c) => c,
                None => m.eps(&y, lambda, iteration)?,
            };
            let (y_low, y_high) = self.pair(&mut m, &y, &eps, lambda, lambda_down, iteration)?;
            let delta = mixed_tolerance(&y_low, &y_prev, self.rtol, self.atol)?;
            let ratio = ((&y_low - &y_high)? / delta)?;
            let error = host_f64(&ratio.sqr()?.sum_all()?)?[0].sqrt() / numel.sqrt();
            if !error.is_finite() {
                return Err(SolverError::NonFinite { step: iteration, sigma: sigma_of(lambda) });
            }
            let h_tried = lambda_next - lambda;
            let lambda_before = lambda;
            let accept = pid.propose(error);
            nfe += cost;
            if accept {
                y_prev = y_low;
                y = if self.eta > 0.0 {
                    // k-diffusion draws on every accepted step, even when sigma_up is 0.
                    let z = noise.sample_like(&y_high)?;
                    axpby(1.0, &y_high, sigma_up * self.s_noise, &z)?
                } else {
                    y_high
                };
                lambda = lambda_next;
                accepted += 1;
            } else {
                rejected += 1;
                cache = Some((eps, x0.clone()));
            }
            let x_native = self.native(family, &y, lambda)?;
            let progress = SampleProgress {
                stepped: true,
                accepted: accept,
                t: lambda_before,
                t_next: lambda,
                sigma: sigma_of(lambda_before),
                sigma_next: sigma_of(lambda),
                h: h_tried,
                h_next: pid.h,
                error,
                nfe,
                accepted_steps: accepted,
                rejected_steps: rejected,
            };
            let samples = vec![progress; batch];
            stats.iterations += 1;
            on_step(&AdaptiveStep { iteration, x: &x_native, denoised: &x0, samples: &samples });
            iteration += 1;
        }
        for s in &mut stats.samples {
            (s.nfe, s.accepted, s.rejected) = (nfe, accepted, rejected);
        }
        stats.model_calls = m.calls;
        Ok((self.native(family, &y, lambda)?, stats))
    }

    fn native(&self, family: Family, y: &Tensor, lambda: f64) -> candle_core::Result<Tensor> {
        let alpha = family.alpha(sigma_of(lambda));
        if alpha == 1.0 {
            Ok(y.clone())
        } else {
            y.affine(alpha, 0.0)
        }
    }

    /// `(y_low, y_high)` of the embedded pair from `lambda` to `lambda_next` (k-diffusion
    /// `dpm_solver_{1,2,3}_step`), sharing the intermediate evaluation.
    fn pair(
        &self,
        m: &mut KModel,
        y: &Tensor,
        eps: &Tensor,
        t: f64,
        t_next: f64,
        step: usize,
    ) -> Result<(Tensor, Tensor), SolverError> {
        let h = t_next - t;
        let sn = sigma_of(t_next);
        // x - sigma(t_next) expm1(h) eps: the first-order part every member shares.
        let base = axpby(1.0, y, -sn * h.exp_m1(), eps)?;
        let r1 = if self.order == 2 { 1.0 / 2.0 } else { 1.0 / 3.0 };
        let s1 = t + r1 * h;
        let u1 = axpby(1.0, y, -sigma_of(s1) * (r1 * h).exp_m1(), eps)?;
        let (eps_r1, _) = m.eps(&u1, s1, step)?;
        let d1 = (&eps_r1 - eps)?;
        let dpm2 = axpby(1.0, &base, -sn / (2.0 * r1) * h.exp_m1(), &d1)?;
        if self.order == 2 {
            return Ok((base, dpm2));
        }
        let r2 = 2.0 / 3.0;
        let s2 = t + r2 * h;
        let phi = (r2 * h).exp_m1();
        let u2 = axpby(1.0, y, -sigma_of(s2) * phi, eps)?;
        let u2 = axpby(1.0, &u2, -sigma_of(s2) * (r2 / r1) * (phi / (r2 * h) - 1.0), &d1)?;
        let (eps_r2, _) = m.eps(&u2, s2, step)?;
        let dpm3 = axpby(1.0, &base, -sn / r2 * (h.exp_m1() / h - 1.0), &(&eps_r2 - eps)?)?;
        Ok((dpm2, dpm3))
    }
}

// ------------------------------------------------------------------ by name

/// Either adaptive sampler, by community name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdaptiveSampler {
    Sde(AdaptiveSde),
    Dpm(DpmAdaptive),
}

impl FromStr for AdaptiveSampler {
    type Err = SolverError;
    fn from_str(name: &str) -> Result<Self, SolverError> {
        match name {
            "adaptive_sde" => Ok(Self::Sde(AdaptiveSde::default())),
            "dpm_adaptive" => Ok(Self::Dpm(DpmAdaptive::default())),
            _ => Err(SolverError::UnknownSampler {
                name: name.to_string(),
                valid: ADAPTIVE_SAMPLERS.join(", "),
            }),
        }
    }
}

impl AdaptiveSampler {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sde(_) => "adaptive_sde",
            Self::Dpm(_) => "dpm_adaptive",
        }
    }

    pub fn max_nfe(&self) -> usize {
        match self {
            Self::Sde(s) => s.max_nfe,
            Self::Dpm(s) => s.max_nfe,
        }
    }

    /// Sets the model-evaluation cap (`--max-nfe`).
    pub fn set_max_nfe(&mut self, max_nfe: usize) {
        match self {
            Self::Sde(s) => s.max_nfe = max_nfe,
            Self::Dpm(s) => s.max_nfe = max_nfe,
        }
    }

    /// Sets the relative and absolute tolerances (`--rtol`, `--atol`); `None` keeps the default.
    pub fn set_tolerances(&mut self, rtol: Option<f64>, atol: Option<f64>) {
        let (r, a) = match self {
            Self::Sde(s) => (&mut s.rtol, &mut s.atol),
            Self::Dpm(s) => (&mut s.rtol, &mut s.atol),
        };
        *r = rtol.unwrap_or(*r);
        *a = atol.unwrap_or(*a);
    }

    /// Whether it has an `eta` (dpm_adaptive's ancestral noise; adaptive_sde always
    /// integrates the SDE).
    pub fn takes_eta(&self) -> bool {
        matches!(self, Self::Dpm(_))
    }

    /// Sets dpm_adaptive's ancestral noise (`--eta`); adaptive_sde, which always integrates
    /// the SDE, has none.
    pub fn set_eta(&mut self, eta: f64) -> Result<(), SolverError> {
        match self {
            Self::Dpm(s) => {
                s.eta = eta;
                Ok(())
            }
            Self::Sde(_) => Err(SolverError::Options(
                "adaptive_sde has no eta (it always integrates the SDE; dpm_adaptive takes one)".into(),
            )),
        }
    }

    /// The initial state at `sigma_max`: `sigma(sigma_max) z`, shape `dims`.
    pub fn initial_latent(
        &self,
        model: &dyn Denoiser,
        sigma_max: f64,
        dims: &[usize],
        noise: &mut dyn NoiseSource,
        device: &Device,
    ) -> Result<Tensor, SolverError> {
        let z = noise.sample(&dims.into(), DType::F32, device)?;
        Ok(z.affine(model.schedule().family().sigma(sigma_max), 0.0)?)
    }

    pub fn sample(
        &self,
        model: &dyn Denoiser,
        x: Tensor,
        sigma_max: f64,
        sigma_min: f64,
        noise: &mut dyn NoiseSource,
        on_step: impl FnMut(&AdaptiveStep),
    ) -> Result<(Tensor, AdaptiveStats), SolverError> {
        match self {
            Self::Sde(s) => s.sample(model, x, sigma_max, sigma_min, noise, on_step),
            Self::Dpm(s) => s.sample(model, x, sigma_max, sigma_min, noise, on_step),
        }
    }
}
