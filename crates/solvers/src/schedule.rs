//! Noise schedules: the forward process `x_t = alpha(t) x0 + sigma(t) eps` a model was trained with.
//!
//! Every schedule maps its own time `t` to `(alpha, sigma)`, to the log-SNR
//! `lambda = log(alpha / sigma)` and to the k-diffusion sigma `s = sigma / alpha`,
//! the one coordinate that crosses crate boundaries. Solvers only need the
//! schedule's [`Family`], which fixes `(alpha, sigma)` as functions of `s`.

use crate::error::ScheduleError;

/// How `alpha` and `sigma` relate; fixes them as functions of the k-diffusion sigma `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Variance preserving, `alpha^2 + sigma^2 = 1` (DDPM, Stable Diffusion).
    Vp,
    /// Variance exploding, `alpha = 1` (EDM, score SDE VE).
    Ve,
    /// Rectified flow, `alpha + sigma = 1` (SD3, Flux).
    Flow,
}

impl Family {
    /// `(alpha, sigma)` at k-diffusion sigma `s`; `s = +inf` is pure noise (VP and flow only).
    pub fn alpha_sigma(self, s: f64) -> (f64, f64) {
        match self {
            Family::Vp if s.is_infinite() => (0.0, 1.0),
            Family::Vp => {
                let alpha = 1.0 / s.mul_add(s, 1.0).sqrt();
                (alpha, s * alpha)
            }
            Family::Ve => (1.0, s),
            Family::Flow if s.is_infinite() => (0.0, 1.0),
            Family::Flow => (1.0 / (1.0 + s), s / (1.0 + s)),
        }
    }

    /// The state at noise level `s` built from a data point and noise: `alpha x0 + sigma eps`
    /// in native space. Its inverse scale `1/alpha` takes native states to k-diffusion's.
    pub fn alpha(self, s: f64) -> f64 {
        self.alpha_sigma(s).0
    }

    /// `sigma(s)`, the noise scale of the native state.
    pub fn sigma(self, s: f64) -> f64 {
        self.alpha_sigma(s).1
    }
}

/// Beta schedules of discrete-time (DDPM) models, as diffusers names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)`.
    Linear { beta_start: f64, beta_end: f64 },
    /// `linspace(sqrt(beta_start), sqrt(beta_end), T)^2` (Stable Diffusion).
    ScaledLinear { beta_start: f64, beta_end: f64 },
    /// The cosine schedule of Nichol & Dhariwal (`betas_for_alpha_bar`, betas capped at 0.999).
    SquaredCosCapV2,
}

/// A discrete-time variance-preserving schedule over `T` training steps.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscreteSchedule {
    /// Cumulative products of `1 - beta`, one per training timestep (private: `log_sigmas`
    /// is derived from it).
    alphas_cumprod: Vec<f64>,
    log_sigmas: Vec<f64>,
}

impl DiscreteSchedule {
    /// Builds the schedule from a beta schedule over `num_train_timesteps` steps (f64 throughout).
    pub fn new(betas: BetaSchedule, num_train_timesteps: usize) -> Result<Self, ScheduleError> {
        if num_train_timesteps < 2 {
            return Err(ScheduleError::Invalid(format!(
                "a discrete schedule needs at least 2 training timesteps, got {num_train_timesteps}"
            )));
        }
        let n = num_train_timesteps;
        let lin = |a: f64, b: f64, i: usize| a + (b - a) * i as f64 / (n - 1) as f64;
        let betas: Vec<f64> = match betas {
            BetaSchedule::Linear { beta_start, beta_end } => {
                (0..n).map(|i| lin(beta_start, beta_end, i)).collect()
            }
            BetaSchedule::ScaledLinear { beta_start, beta_end } => {
                (0..n).map(|i| lin(beta_start.sqrt(), beta_end.sqrt(), i).powi(2)).collect()
            }
            BetaSchedule::SquaredCosCapV2 => {
                // Float division throughout: candle-transformers divides integers here and
                // degenerates this schedule (see REFERENCES.md).
                let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                    })
                    .collect()
            }
        };
        if betas.iter().any(|b| !(*b > 0.0 && *b < 1.0)) {
            return Err(ScheduleError::Invalid("betas must lie in (0, 1)".into()));
        }
        let mut acc = 1.0;
        let alphas_cumprod: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Self::from_alphas_cumprod(alphas_cumprod)
    }

    /// Stable Diffusion 1.x/2.x/XL: scaled_linear betas from 0.00085 to 0.012 over 1000 steps.
    pub fn stable_diffusion() -> Self {
        let betas = BetaSchedule::ScaledLinear { beta_start: 0.00085, beta_end: 0.012 };
        Self::new(betas, 1000).expect("the Stable Diffusion schedule is valid")
    }

    /// A schedule from explicit cumulative alphas (strictly decreasing, in (0, 1]).
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f64>) -> Result<Self, ScheduleError> {
        let ok = alphas_cumprod.len() >= 2
            && alphas_cumprod.iter().all(|a| *a > 0.0 && *a < 1.0)
            && alphas_cumprod.windows(2).all(|w| w[1] < w[0]);
        if !ok {
            return Err(ScheduleError::Invalid(
                "alphas_cumprod must be at least 2 strictly decreasing values in (0, 1)".into(),
            ));
        }
        let log_sigmas = alphas_cumprod.iter().map(|a| 0.5 * ((1.0 - a) / a).ln()).collect();
        Ok(Self { alphas_cumprod, log_sigmas })
    }

    /// Cumulative products of `1 - beta`, one per training timestep.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// Number of training timesteps `T`.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Always false: a schedule is built with at least two timesteps and cannot change.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// k-diffusion sigma at a (possibly fractional) timestep, interpolating log sigma linearly
    /// (k-diffusion `DiscreteSchedule.t_to_sigma`, diffusers' Karras timestep mapping).
    pub fn sigma_at(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.len() - 1) as f64);
        let lo = (t.floor() as usize).min(self.len() - 2);
        let w = t - lo as f64;
        ((1.0 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]).exp()
    }

    /// The fractional timestep whose sigma is `s` (inverse of [`Self::sigma_at`], clamped to the grid).
    pub fn t_at(&self, s: f64) -> f64 {
        let ls = s.ln();
        let last = self.len() - 1;
        if ls.is_nan() || ls <= self.log_sigmas[0] {
            return 0.0;
        }
        if ls >= self.log_sigmas[last] {
            return last as f64;
        }
        // log_sigmas increase with t: find lo with log_sigmas[lo] <= ls < log_sigmas[lo + 1].
        let lo = self.log_sigmas.partition_point(|v| *v <= ls) - 1;
        let (a, b) = (self.log_sigmas[lo], self.log_sigmas[lo + 1]);
        lo as f64 + (ls - a) / (b - a)
    }
}

/// A model's noise schedule. Time `t` is the schedule's own: a (fractional) training timestep
/// for [`NoiseSchedule::Discrete`], `t in (0, 1]` for continuous VP and flow, `t = s` for VE.
#[derive(Debug, Clone, PartialEq)]
pub enum NoiseSchedule {
    /// Discrete-time VP over `T` training steps.
    Discrete(DiscreteSchedule),
    /// Continuous VP (score SDE): `log alpha(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2`.
    ContinuousVp { beta_min: f64, beta_max: f64 },
    /// Variance exploding / EDM: `alpha = 1`, `sigma = t` on `[sigma_min, sigma_max]`.
    Ve { sigma_min: f64, sigma_max: f64 },
    /// Rectified flow `alpha = 1 - u`, `sigma = u`, where `u = shift t / (1 + (shift - 1) t)`.
    Flow { shift: f64 },
}

impl NoiseSchedule {
    /// Continuous VP with the score-SDE defaults (beta_min 0.1, beta_max 20).
    pub fn continuous_vp() -> Self {
        NoiseSchedule::ContinuousVp { beta_min: 0.1, beta_max: 20.0 }
    }

    /// EDM's VE range (sigma_min 0.002, sigma_max 80).
    pub fn edm() -> Self {
        NoiseSchedule::Ve { sigma_min: 0.002, sigma_max: 80.0 }
    }

    /// Flux's resolution-dependent shift: `mu` linear in the image token count from
    /// (256 tokens, 0.5) to (4096 tokens, 1.15), shift `= e^mu`.
    pub fn flux_dynamic_shift(image_tokens: usize) -> Self {
        let slope = (1.15 - 0.5) / (4096.0 - 256.0);
        let mu = 0.5 + slope * (image_tokens as f64 - 256.0);
        NoiseSchedule::Flow { shift: mu.exp() }
    }

    /// The family fixing `(alpha, sigma)` as functions of `s`.
    pub fn family(&self) -> Family {
        match self {
            NoiseSchedule::Discrete(_) | NoiseSchedule::ContinuousVp { .. } => Family::Vp,
            NoiseSchedule::Ve { .. } => Family::Ve,
            NoiseSchedule::Flow { .. } => Family::Flow,
        }
    }

    /// The time range `(t_min, t_max)` the model was trained on (continuous VP stops at 1e-3;
    /// flow runs from pure noise, t = 1, to data, t = 0).
    pub fn t_range(&self) -> (f64, f64) {
        match self {
            NoiseSchedule::Discrete(d) => (0.0, (d.len() - 1) as f64),
            NoiseSchedule::ContinuousVp { .. } => (1e-3, 1.0),
            NoiseSchedule::Ve { sigma_min, sigma_max } => (*sigma_min, *sigma_max),
            NoiseSchedule::Flow { .. } => (0.0, 1.0),
        }
    }

    /// k-diffusion sigma `s = sigma / alpha` at time `t`.
    pub fn sigma_at(&self, t: f64) -> f64 {
        match self {
            NoiseSchedule::Discrete(d) => d.sigma_at(t),
            NoiseSchedule::ContinuousVp { beta_min, beta_max } => {
                // s^2 = 1/alpha^2 - 1 = exp(-2 log alpha) - 1
                let log_alpha = -0.25 * t * t * (beta_max - beta_min) - 0.5 * t * beta_min;
                (-2.0 * log_alpha).exp_m1().sqrt()
            }
            NoiseSchedule::Ve { .. } => t,
            NoiseSchedule::Flow { shift } => {
                let u = shift * t / (1.0 + (shift - 1.0) * t);
                if u >= 1.0 {
                    f64::INFINITY
                } else {
                    u / (1.0 - u)
                }
            }
        }
    }

    /// The time at which the k-diffusion sigma is `s` (inverse of [`Self::sigma_at`]).
    pub fn t_at(&self, s: f64) -> f64 {
        match self {
            NoiseSchedule::Discrete(d) => d.t_at(s),
            NoiseSchedule::ContinuousVp { beta_min, beta_max } => {
                // Solve (b1 - b0)/2 t^2 + b0 t = log(1 + s^2) for t >= 0.
                let l = s.mul_add(s, 1.0).ln();
                let db = beta_max - beta_min;
                2.0 * l / (beta_min + (beta_min * beta_min + 2.0 * db * l).sqrt())
            }
            NoiseSchedule::Ve { .. } => s,
            NoiseSchedule::Flow { shift } => {
                let u = if s.is_infinite() { 1.0 } else { s / (1.0 + s) };
                u / (shift - (shift - 1.0) * u)
            }
        }
    }

    /// `(alpha(t), sigma(t))`.
    pub fn alpha_sigma(&self, t: f64) -> (f64, f64) {
        self.family().alpha_sigma(self.sigma_at(t))
    }

    /// Log-SNR `lambda(t) = log(alpha / sigma) = -log s`.
    pub fn lambda(&self, t: f64) -> f64 {
        -self.sigma_at(t).ln()
    }

    /// The time whose log-SNR is `lambda`.
    pub fn t_at_lambda(&self, lambda: f64) -> f64 {
        self.t_at((-lambda).exp())
    }

    /// Smallest k-diffusion sigma the model was trained on.
    pub fn sigma_min(&self) -> f64 {
        self.sigma_at(self.t_range().0)
    }

    /// Largest k-diffusion sigma the model was trained on (`+inf` for flow: pure noise).
    pub fn sigma_max(&self) -> f64 {
        self.sigma_at(self.t_range().1)
    }

    /// The finite `(sigma_max, sigma_min)` that schedules spaced in sigma (Karras, exponential,
    /// log-SNR) and the adaptive solvers run between: the trained range, except that flow
    /// models start at `t = 1 - 1e-3` rather than at pure noise (`s = inf`) and stop at
    /// `t = 1e-3` rather than at the data (`s = 0`), as diffusers' flow schedules do.
    pub fn sampling_range(&self) -> (f64, f64) {
        let (t_min, t_max) = self.t_range();
        let hi = self.sigma_max();
        let hi = if hi.is_finite() { hi } else { self.sigma_at(t_max - 1e-3) };
        let lo = self.sigma_min();
        let lo = if lo > 0.0 { lo } else { self.sigma_at(t_min + 1e-3) };
        (hi, lo)
    }
}
