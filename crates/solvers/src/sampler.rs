//! The samplers: each a short loop over a [`Sigmas`] schedule calling the update rules of
//! [`crate::update`], reporting every step.

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

use crate::denoiser::{all_finite, batch_size, predict_checked, to_x0, Denoiser};
use crate::error::SolverError;
use crate::noise::NoiseSource;
use crate::schedule::Family;
use crate::sigmas::Sigmas;
use crate::update::{self, MultistepParams, OdeFrame};

/// The solver families, with the community's names (k-diffusion / ComfyUI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// First-order ODE step (k-diffusion `sample_euler`).
    Euler,
    /// First order with ancestral noise, eta 1 by default (`sample_euler_ancestral`).
    EulerAncestral,
    /// EDM's second-order Heun (`sample_heun`); 2 model evaluations per step but the last.
    Heun,
    /// DDIM (Song et al.) with `eta`, 0 by default; the same update as `euler_ancestral`.
    Ddim,
    /// DPM-Solver++(2M), multistep second order.
    Dpmpp2m,
    /// DPM-Solver++(3M), multistep third order (diffusers' `solver_order=3`).
    Dpmpp3m,
    /// DPM-Solver++(2S), singlestep second order; eta 0 by default (ODE).
    Dpmpp2s,
    /// DPM-Solver++(2S) ancestral, eta 1 by default (`sample_dpmpp_2s_ancestral`).
    Dpmpp2sAncestral,
    /// SDE-DPM-Solver++(2M), eta 1 by default (`sample_dpmpp_2m_sde`).
    Dpmpp2mSde,
    /// SDE-DPM-Solver++(3M), eta 1 by default (`sample_dpmpp_3m_sde`).
    Dpmpp3mSde,
}

/// `(name, kind)` for every sampler, in the order help texts list them.
pub const SAMPLERS: &[(&str, SamplerKind)] = &[
    ("euler", SamplerKind::Euler),
    ("euler_ancestral", SamplerKind::EulerAncestral),
    ("heun", SamplerKind::Heun),
    ("ddim", SamplerKind::Ddim),
    ("dpmpp_2m", SamplerKind::Dpmpp2m),
    ("dpmpp_3m", SamplerKind::Dpmpp3m),
    ("dpmpp_2s", SamplerKind::Dpmpp2s),
    ("dpmpp_2s_ancestral", SamplerKind::Dpmpp2sAncestral),
    ("dpmpp_2m_sde", SamplerKind::Dpmpp2mSde),
    ("dpmpp_3m_sde", SamplerKind::Dpmpp3mSde),
];

impl SamplerKind {
    /// The community name.
    pub fn name(self) -> &'static str {
        SAMPLERS.iter().find(|(_, k)| *k == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// Default eta: 1 for the ancestral and SDE samplers, 0 otherwise.
    pub fn default_eta(self) -> f64 {
        use SamplerKind::*;
        match self {
            EulerAncestral | Dpmpp2sAncestral | Dpmpp2mSde | Dpmpp3mSde => 1.0,
            Euler | Heun | Ddim | Dpmpp2m | Dpmpp3m | Dpmpp2s => 0.0,
        }
    }

    /// Whether `eta` changes the update (euler and heun are ODE solvers only).
    pub fn takes_eta(self) -> bool {
        !matches!(self, SamplerKind::Euler | SamplerKind::Heun)
    }

    /// The solver's order of convergence as an ODE solver (eta 0).
    pub fn order(self) -> usize {
        use SamplerKind::*;
        match self {
            Euler | EulerAncestral | Ddim => 1,
            Heun | Dpmpp2m | Dpmpp2s | Dpmpp2sAncestral | Dpmpp2mSde => 2,
            Dpmpp3m | Dpmpp3mSde => 3,
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = SolverError;
    fn from_str(name: &str) -> Result<Self, SolverError> {
        SAMPLERS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k).ok_or_else(|| {
            SolverError::UnknownSampler {
                name: name.to_string(),
                valid: SAMPLERS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            }
        })
    }
}

/// What to do with the model's x0 prediction before a solver uses it (pixel-space models).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum X0Processing {
    None,
    /// Clamp to `[-c, c]` (diffusers `clip_sample`).
    Clip(f64),
    /// Imagen's dynamic thresholding: per sample, `q` = the `ratio` quantile of `|x0|` clamped
    /// to `[1, max]`; `x0 = clamp(x0, -q, q) / q` (diffusers `thresholding=True`).
    DynamicThreshold {
        ratio: f64,
        max: f64,
    },
}

impl X0Processing {
    /// Whether the settings can work: a positive clip value, a quantile in (0, 1] and a
    /// threshold cap of at least 1 (the quantile is clamped to [1, max]).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            X0Processing::None => Ok(()),
            X0Processing::Clip(c) if c > 0.0 && c.is_finite() => Ok(()),
            X0Processing::Clip(c) => Err(format!("clip value must be a positive number, got {c}")),
            X0Processing::DynamicThreshold { ratio, max } if ratio > 0.0 && ratio <= 1.0 && max >= 1.0 && max.is_finite() => {
                Ok(())
            }
            X0Processing::DynamicThreshold { ratio, max } => Err(format!(
                "dynamic thresholding needs a ratio in (0, 1] and a finite max >= 1, got ratio {ratio}, max {max}"
            )),
        }
    }
}

/// What each step reports.
pub struct Step<'a> {
    /// 0-based step index.
    pub index: usize,
    /// Number of steps in the schedule.
    pub steps: usize,
    pub sigma: f64,
    pub sigma_next: f64,
    /// The state after the step (native space).
    pub x: &'a Tensor,
    /// The model's x0 prediction at the start of the step.
    pub denoised: &'a Tensor,
    /// Model evaluations so far.
    pub nfe: usize,
}

/// A configured sampler.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use stride_solvers::{Denoiser, NoiseSchedule, Parameterization, Sampler, Scheduler, TorchNoise};
///
/// struct Zero(NoiseSchedule); // exact denoiser for data that is always 0
/// impl Denoiser for Zero {
///     fn schedule(&self) -> &NoiseSchedule { &self.0 }
///     fn parameterization(&self) -> Parameterization { Parameterization::X0 }
///     fn predict(&self, x: &Tensor, _: &[f64]) -> candle_core::Result<Tensor> { x.zeros_like() }
/// }
///
/// let model = Zero(NoiseSchedule::edm());
/// let sigmas = Scheduler::Karras { rho: 7.0 }.sigmas(model.schedule(), 10).unwrap();
/// let sampler: Sampler = "dpmpp_2m".parse().unwrap();
/// let mut noise = TorchNoise::new(&[42]);
/// let x = sampler.initial_latent(&model, &sigmas, &[1, 4, 8, 8], &mut noise, &Device::Cpu).unwrap();
/// let x0 = sampler.sample(&model, x, &sigmas, &mut noise, |_| {}).unwrap();
/// assert_eq!(x0.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    pub kind: SamplerKind,
    /// Stochasticity of ancestral / SDE samplers (DDIM's eta).
    pub eta: f64,
    /// Scale on injected noise.
    pub s_noise: f64,
    /// Heun instead of midpoint second-order correction in second-order multistep steps
    /// (2M, 2M SDE, and the warm-up step of 3M / 3M SDE).
    pub heun_correction: bool,
    /// diffusers' `lower_order_final`: with fewer than 15 steps the last step is first order
    /// and the one before at most second order. A step to sigma 0 is always first order.
    pub lower_order_final: bool,
    /// Use the Taylor-exact D2 coefficient in third-order steps (the references use half).
    pub taylor_exact_d2: bool,
    pub x0_processing: X0Processing,
}

impl FromStr for Sampler {
    type Err = SolverError;
    fn from_str(name: &str) -> Result<Self, SolverError> {
        Ok(Sampler::new(name.parse()?))
    }
}

impl Sampler {
    /// The sampler with its references' defaults.
    pub fn new(kind: SamplerKind) -> Self {
        Self {
            kind,
            eta: kind.default_eta(),
            s_noise: 1.0,
            // k-diffusion's 3M SDE warms up with the heun-form second-order step.
            heun_correction: kind == SamplerKind::Dpmpp3mSde,
            lower_order_final: true,
            taylor_exact_d2: false,
            x0_processing: X0Processing::None,
        }
    }

    /// Model evaluations this sampler spends on `sigmas` for a model of `family`.
    pub fn nfe(&self, family: Family, sigmas: &Sigmas) -> usize {
        sigmas.as_slice().windows(2).map(|w| if self.two_stage(family, w[0], w[1]) { 2 } else { 1 }).sum()
    }

    /// Whether the step `sigma -> sigma_next` evaluates the model twice (Heun, 2S). A step to 0
    /// is a pure x0 step, and a step from pure noise is first order except Heun in flow time.
    fn two_stage(&self, family: Family, sigma: f64, sigma_next: f64) -> bool {
        match self.kind {
            SamplerKind::Heun => sigma_next > 0.0 && (sigma.is_finite() || family == Family::Flow),
            SamplerKind::Dpmpp2s | SamplerKind::Dpmpp2sAncestral => {
                update::ancestral_split(sigma, sigma_next, self.eta).0 > 0.0 && sigma.is_finite()
            }
            _ => false,
        }
    }

    /// The initial state at the schedule's first sigma, `sigma(s_0) * noise`, shape `dims`.
    pub fn initial_latent(
        &self,
        model: &dyn Denoiser,
        sigmas: &Sigmas,
        dims: &[usize],
        noise: &mut dyn NoiseSource,
        device: &candle_core::Device,
    ) -> Result<Tensor, SolverError> {
        let z = noise.sample(&dims.into(), candle_core::DType::F32, device)?;
        let sigma = model.schedule().family().sigma(sigmas.first());
        Ok(z.affine(sigma, 0.0)?)
    }

    /// Integrates from `x` (the native state at `sigmas.first()`) down the schedule and
    /// returns the final state; `on_step` sees every step.
    pub fn sample(
        &self,
        model: &dyn Denoiser,
        x: Tensor,
        sigmas: &Sigmas,
        noise: &mut dyn NoiseSource,
        mut on_step: impl FnMut(&Step),
    ) -> Result<Tensor, SolverError> {
        if !(self.eta >= 0.0 && self.eta.is_finite()) {
            return Err(SolverError::Options(format!("eta must be a finite number >= 0, got {}", self.eta)));
        }
        self.x0_processing.validate().map_err(SolverError::Options)?;
        let mut model = Evaluator::new(model, self.x0_processing, batch_size(&x)?);
        let family = model.family;
        let s = sigmas.as_slice();
        let steps = sigmas.steps();
        let mut x = x;
        // (x0, lambda) of earlier steps, newest first, for the multistep solvers.
        let mut history: Vec<(Tensor, f64)> = Vec::with_capacity(3);
        for i in 0..steps {
            let (sigma, sigma_next) = (s[i], s[i + 1]);
            let x0 = model.eval(&x, sigma, i)?;
            let next = match self.kind {
                SamplerKind::Euler => update::first_order(family, &x, &x0, sigma, sigma_next)?,
                SamplerKind::EulerAncestral | SamplerKind::Ddim => {
                    let (down, up) = update::ancestral_split(sigma, sigma_next, self.eta);
                    let z = self.draw(noise, &x, up)?;
                    let noise = z.as_ref().map(|z| (up * self.s_noise, z));
                    update::ancestral_step(family, &x, &[(1.0, &x0)], sigma, (down, sigma_next), noise)?
                }
                SamplerKind::Heun => {
                    if self.two_stage(family, sigma, sigma_next) {
                        let frame = OdeFrame::new(family);
                        let x_euler = frame.euler(&x, &x0, sigma, sigma_next)?;
                        let x0_euler = model.eval(&x_euler, sigma_next, i)?;
                        drop(x_euler);
                        frame.heun(&x, &x0, &x0_euler, sigma, sigma_next)?
                    } else {
                        update::first_order(family, &x, &x0, sigma, sigma_next)?
                    }
                }
                SamplerKind::Dpmpp2s | SamplerKind::Dpmpp2sAncestral => {
                    let (down, up) = update::ancestral_split(sigma, sigma_next, self.eta);
                    let x0_mid = if self.two_stage(family, sigma, sigma_next) {
                        let mid = (sigma * down).sqrt();
                        let x_mid = update::first_order(family, &x, &x0, sigma, mid)?;
                        Some((mid, model.eval(&x_mid, mid, i)?))
                    } else {
                        None
                    };
                    let prediction = match &x0_mid {
                        Some((mid, x0_mid)) => {
                            let (w0, w_mid) = update::dpmpp_2s_weights(sigma, *mid, down);
                            vec![(w0, &x0), (w_mid, x0_mid)]
                        }
                        None => vec![(1.0, &x0)],
                    };
                    let z = self.draw(noise, &x, up)?;
                    let noise = z.as_ref().map(|z| (up * self.s_noise, z));
                    update::ancestral_step(family, &x, &prediction, sigma, (down, sigma_next), noise)?
                }
                SamplerKind::Dpmpp2m
                | SamplerKind::Dpmpp3m
                | SamplerKind::Dpmpp2mSde
                | SamplerKind::Dpmpp3mSde => {
                    // From pure noise (sigma = inf) lambda is -inf: the next steps' ratios r are
                    // infinite and their difference terms vanish, so they fall back to lower order.
                    history.insert(0, (x0.clone(), -sigma.ln()));
                    history.truncate(self.kind.order());
                    let order = self.step_order(i, steps);
                    let params = MultistepParams {
                        order,
                        eta: self.eta,
                        s_noise: self.s_noise,
                        heun: self.heun_correction,
                        taylor_exact_d2: self.taylor_exact_d2,
                    };
                    let z = self.draw(noise, &x, if sigma_next > 0.0 { self.eta } else { 0.0 })?;
                    let refs: Vec<(&Tensor, f64)> = history.iter().map(|(m, l)| (m, *l)).collect();
                    update::dpmpp_multistep(family, &x, &refs, sigma, sigma_next, params, z.as_ref())?
                }
            };
            x = next;
            on_step(&Step { index: i, steps, sigma, sigma_next, x: &x, denoised: &x0, nfe: model.nfe });
        }
        Ok(x)
    }

    /// The order a multistep solver uses at step `i` of `steps` (warm-up, `lower_order_final`).
    fn step_order(&self, i: usize, steps: usize) -> usize {
        let mut order = self.kind.order().min(i + 1);
        if self.lower_order_final && steps < 15 {
            if i + 1 == steps {
                order = 1;
            } else if i + 2 == steps {
                order = order.min(2);
            }
        }
        order
    }

    /// Noise for a step whose injected scale is `scale` (none drawn when it is 0).
    fn draw(
        &self,
        noise: &mut dyn NoiseSource,
        like: &Tensor,
        scale: f64,
    ) -> Result<Option<Tensor>, SolverError> {
        Ok(if scale > 0.0 { Some(noise.sample_like(like)?) } else { None })
    }
}

/// Calls the model, converts its output to `(x0, eps)`, applies x0 processing, counts
/// evaluations and turns NaN/Inf into an error naming the step.
struct Evaluator<'a> {
    model: &'a dyn Denoiser,
    family: Family,
    processing: X0Processing,
    batch: usize,
    nfe: usize,
}

impl<'a> Evaluator<'a> {
    fn new(model: &'a dyn Denoiser, processing: X0Processing, batch: usize) -> Self {
        Self { model, family: model.schedule().family(), processing, batch, nfe: 0 }
    }

    fn eval(&mut self, x: &Tensor, sigma: f64, step: usize) -> Result<Tensor, SolverError> {
        let sigmas = vec![sigma; self.batch];
        let out = predict_checked(self.model, x, &sigmas)?;
        self.nfe += 1;
        if !all_finite(&out)? {
            return Err(SolverError::NonFinite { step, sigma });
        }
        let x0 = to_x0(self.model.parameterization(), self.family, x, &out, &sigmas)?;
        Ok(process_x0(&x0, self.processing)?)
    }
}

/// Applies clipping or dynamic thresholding to a batch of x0 predictions.
pub fn process_x0(x0: &Tensor, processing: X0Processing) -> candle_core::Result<Tensor> {
    if let Err(e) = processing.validate() {
        candle_core::bail!("{e}");
    }
    match processing {
        X0Processing::None => Ok(x0.clone()),
        X0Processing::Clip(c) => x0.clamp(-c, c),
        X0Processing::DynamicThreshold { ratio, max } => {
            let batch = x0.dim(0)?;
            let flat = x0.flatten_from(1)?.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
            let q: Vec<f64> = flat.iter().map(|row| quantile_abs(row, ratio).clamp(1.0, max)).collect();
            let mut shape = vec![batch];
            shape.resize(x0.rank(), 1);
            let q = Tensor::new(q, x0.device())?.to_dtype(x0.dtype())?.reshape(shape)?;
            x0.broadcast_minimum(&q)?.broadcast_maximum(&q.neg()?)?.broadcast_div(&q)
        }
    }
}

/// torch.quantile's linear interpolation of `|row|` at `q`.
fn quantile_abs(row: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = row.iter().map(|x| x.abs()).collect();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}
