//! Step schedules: the noise levels a sampler visits, as k-diffusion sigmas.
//!
//! A [`Sigmas`] is validated on construction (finite, non-negative, strictly decreasing,
//! at least one step), so every solver can rely on it. [`Scheduler`] generates them the
//! ways the community does (names as in ComfyUI / k-diffusion / diffusers).

use std::fmt;
use std::str::FromStr;

use crate::error::ScheduleError;
use crate::schedule::NoiseSchedule;

/// A validated, strictly decreasing list of k-diffusion sigmas; `len() - 1` steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Sigmas(Vec<f64>);

impl Sigmas {
    /// Validates a user-given list. Only the first entry may be `+inf` (pure noise, flow models).
    ///
    /// ```
    /// use stride_solvers::Sigmas;
    /// let ok = Sigmas::new(vec![14.6, 7.8, 3.5, 0.0]).unwrap();
    /// assert_eq!(ok.steps(), 3);
    /// let err = Sigmas::new(vec![14.6, 3.5, 7.8, 0.0]).unwrap_err();
    /// assert!(err.to_string().contains("sigma #2"));
    /// ```
    pub fn new(sigmas: Vec<f64>) -> Result<Self, ScheduleError> {
        if sigmas.len() < 2 {
            return Err(ScheduleError::TooShort(sigmas.len()));
        }
        for (index, &value) in sigmas.iter().enumerate() {
            let leading_inf = index == 0 && value == f64::INFINITY;
            if !value.is_finite() && !leading_inf {
                return Err(ScheduleError::NotFinite { index, value });
            }
            if value < 0.0 {
                return Err(ScheduleError::Negative { index, value });
            }
            if index > 0 && value >= sigmas[index - 1] {
                return Err(ScheduleError::NotDecreasing { index, prev: sigmas[index - 1], value });
            }
        }
        Ok(Sigmas(sigmas))
    }

    /// Parses a comma-separated list, as stable-diffusion.cpp's `--sigmas "14.6,7.8,3.5,0"`.
    pub fn parse(list: &str) -> Result<Self, ScheduleError> {
        let values = list
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .enumerate()
            .map(|(i, v)| {
                v.parse::<f64>()
                    .map_err(|_| ScheduleError::Invalid(format!("sigma #{i} (`{v}`) is not a number")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(values)
    }

    /// The sigmas, first (noisiest) to last.
    pub fn as_slice(&self) -> &[f64] {
        &self.0
    }

    /// Number of steps (`len - 1`).
    pub fn steps(&self) -> usize {
        self.0.len() - 1
    }

    /// The first (largest) sigma, where sampling starts.
    pub fn first(&self) -> f64 {
        self.0[0]
    }

    /// The last sigma, where sampling ends (0 for a full denoise).
    pub fn last(&self) -> f64 {
        self.0[self.0.len() - 1]
    }

    /// Replaces a final 0 by `sigma_final` (diffusers' `final_sigmas_type="sigma_min"`, DDIM with
    /// `set_alpha_to_one=False`), dropping the final step when it would not decrease.
    pub fn ending_at(mut self, sigma_final: f64) -> Result<Self, ScheduleError> {
        if self.last() == 0.0 {
            self.0.pop();
            if sigma_final < self.last() {
                self.0.push(sigma_final);
            }
        }
        Self::new(self.0)
    }
}

impl fmt::Display for Sigmas {
    /// Comma-separated, round-trippable through [`Sigmas::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|s| format!("{s}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// Align-Your-Steps 10-step tables (NVIDIA, as shipped by ComfyUI); log-linearly interpolated
/// to other step counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AysModel {
    Sd15,
    Sdxl,
}

impl AysModel {
    fn table(self) -> &'static [f64] {
        match self {
            AysModel::Sd15 => &[
                14.6146412293,
                6.4745760956,
                3.8636745985,
                2.6946151520,
                1.8841921177,
                1.3943805092,
                0.9642583904,
                0.6523686016,
                0.3977456272,
                0.1515232662,
                0.0291671582,
            ],
            AysModel::Sdxl => &[
                14.6146412293,
                6.3184485287,
                3.7681790315,
                2.1811480769,
                1.3405244945,
                0.8620721141,
                0.5550693289,
                0.3798540708,
                0.2332364134,
                0.1114188177,
                0.0291671582,
            ],
        }
    }
}

/// How to place `n` steps. The names are the community's (`--scheduler`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheduler {
    /// Uniform in the schedule's own time, then 0 (flow: `t = 1, 1 - 1/n, ..., 0`).
    Uniform,
    /// diffusers `timestep_spacing="linspace"` (DDIM's: `round(linspace(0, T-1, n))`), discrete models.
    Linspace,
    /// diffusers `"leading"`: `arange(n) * (T // n) + steps_offset`, discrete models.
    Leading { steps_offset: usize },
    /// diffusers `"trailing"`: `round(arange(T, 0, -T/n)) - 1`, discrete models.
    Trailing,
    /// Karras et al. (EDM): uniform in `sigma^(1/rho)`, then 0.
    Karras { rho: f64 },
    /// Uniform in log sigma, then 0 (k-diffusion `get_sigmas_exponential`).
    Exponential,
    /// Uniform in log-SNR over `n + 1` points ending at sigma_min (DPM-Solver's `logSNR`);
    /// the same spacing as [`Scheduler::Exponential`] without the final jump to 0.
    LogSnr,
    /// Align-Your-Steps table, log-linearly interpolated to `n` steps, then 0.
    Ays(AysModel),
}

/// Every name [`Scheduler::from_str`] accepts.
pub const SCHEDULER_NAMES: &[&str] =
    &["uniform", "linspace", "leading", "trailing", "karras", "exponential", "logsnr", "ays", "ays_sdxl"];

impl std::fmt::Display for Scheduler {
    /// The `--scheduler` name (Karras with another rho than 7 shows it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scheduler::Uniform => f.write_str("uniform"),
            Scheduler::Linspace => f.write_str("linspace"),
            Scheduler::Leading { .. } => f.write_str("leading"),
            Scheduler::Trailing => f.write_str("trailing"),
            Scheduler::Karras { rho } if *rho == 7.0 => f.write_str("karras"),
            Scheduler::Karras { rho } => write!(f, "karras (rho {rho})"),
            Scheduler::Exponential => f.write_str("exponential"),
            Scheduler::LogSnr => f.write_str("logsnr"),
            Scheduler::Ays(AysModel::Sd15) => f.write_str("ays"),
            Scheduler::Ays(AysModel::Sdxl) => f.write_str("ays_sdxl"),
        }
    }
}

impl FromStr for Scheduler {
    type Err = ScheduleError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "uniform" => Scheduler::Uniform,
            "linspace" => Scheduler::Linspace,
            "leading" => Scheduler::Leading { steps_offset: 1 },
            "trailing" => Scheduler::Trailing,
            "karras" => Scheduler::Karras { rho: 7.0 },
            "exponential" => Scheduler::Exponential,
            "logsnr" => Scheduler::LogSnr,
            "ays" => Scheduler::Ays(AysModel::Sd15),
            "ays_sdxl" => Scheduler::Ays(AysModel::Sdxl),
            _ => {
                return Err(ScheduleError::UnknownScheduler {
                    name: name.to_string(),
                    valid: SCHEDULER_NAMES.join(", "),
                })
            }
        })
    }
}

/// The most steps a generated schedule may have: far beyond any sampler's use (references
/// are solved in a few thousand), low enough that a mistyped count is an error, not an
/// allocation of the machine's memory.
pub const MAX_STEPS: usize = 100_000;

fn check_step_count(steps: usize) -> Result<(), ScheduleError> {
    match steps {
        0 => Err(ScheduleError::ZeroSteps),
        n if n > MAX_STEPS => Err(ScheduleError::TooManySteps(n)),
        _ => Ok(()),
    }
}

impl Scheduler {
    /// The sigmas for `steps` steps of a model with noise schedule `schedule`. Karras,
    /// exponential and log-SNR spacing run over [`NoiseSchedule::sampling_range`], which for
    /// flow models starts just below pure noise.
    ///
    /// ```
    /// use stride_solvers::{DiscreteSchedule, NoiseSchedule, Scheduler};
    /// let sd = NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion());
    /// let sigmas = Scheduler::Karras { rho: 7.0 }.sigmas(&sd, 10).unwrap();
    /// assert_eq!(sigmas.steps(), 10);
    /// assert!((sigmas.first() - 14.6146).abs() < 1e-3 && sigmas.last() == 0.0);
    /// ```
    pub fn sigmas(&self, schedule: &NoiseSchedule, steps: usize) -> Result<Sigmas, ScheduleError> {
        check_step_count(steps)?;
        // Flow models start from pure noise (s = inf): sigma-spaced schedules start just below.
        let (s_max, s_min) = schedule.sampling_range();
        let mut sigmas: Vec<f64> = match *self {
            Scheduler::Uniform => {
                let (t_min, t_max) = schedule.t_range();
                if schedule.sigma_at(t_min) == 0.0 {
                    // The time range reaches the data (flow): the last point is already sigma 0.
                    return Sigmas::new(
                        linspace(t_max, t_min, steps + 1).map(|t| schedule.sigma_at(t)).collect(),
                    );
                }
                linspace(t_max, t_min, steps).map(|t| schedule.sigma_at(t)).collect()
            }
            Scheduler::Linspace | Scheduler::Leading { .. } | Scheduler::Trailing => {
                let NoiseSchedule::Discrete(d) = schedule else {
                    return Err(ScheduleError::Invalid(format!(
                        "{self} spacing needs a discrete-time schedule (Stable Diffusion's); \
                         use uniform, karras, exponential or logsnr"
                    )));
                };
                return Sigmas::new(
                    self.timesteps(d.len(), steps)?
                        .iter()
                        .map(|&t| d.sigma_at(t as f64))
                        .chain([0.0])
                        .collect(),
                );
            }
            Scheduler::Karras { rho } => {
                let (a, b) = (s_max.powf(1.0 / rho), s_min.powf(1.0 / rho));
                ramp(steps).map(|r| (a + r * (b - a)).powf(rho)).collect()
            }
            Scheduler::Exponential => linspace(s_max.ln(), s_min.ln(), steps).map(f64::exp).collect(),
            Scheduler::LogSnr => {
                return Sigmas::new(linspace(s_max.ln(), s_min.ln(), steps + 1).map(f64::exp).collect());
            }
            Scheduler::Ays(model) => {
                let mut s = loglinear_interp(model.table(), steps + 1)?;
                s.pop();
                s
            }
        };
        sigmas.push(0.0);
        Sigmas::new(sigmas)
    }

    /// The integer training timesteps of the diffusers spacings, noisiest first.
    pub fn timesteps(&self, train_steps: usize, steps: usize) -> Result<Vec<usize>, ScheduleError> {
        check_step_count(steps)?;
        if steps > train_steps {
            return Err(ScheduleError::Invalid(format!(
                "{steps} steps exceed the {train_steps} training timesteps"
            )));
        }
        let t = train_steps;
        let ts: Vec<usize> = match *self {
            Scheduler::Linspace => {
                linspace(0.0, (t - 1) as f64, steps).map(|v| round_half_even(v) as usize).rev().collect()
            }
            Scheduler::Leading { steps_offset } => {
                (0..steps).rev().map(|i| (i * (t / steps) + steps_offset).min(t - 1)).collect()
            }
            Scheduler::Trailing => {
                let ratio = t as f64 / steps as f64;
                (0..steps).map(|i| round_half_even(t as f64 - i as f64 * ratio) as usize - 1).collect()
            }
            _ => return Err(ScheduleError::Invalid(format!("{self} has no integer timesteps"))),
        };
        Ok(ts)
    }
}

/// `n` evenly spaced points from `a` to `b` inclusive (numpy's `linspace`; `[a]` for `n = 1`).
fn linspace(a: f64, b: f64, n: usize) -> impl DoubleEndedIterator<Item = f64> {
    let step = if n > 1 { (b - a) / (n - 1) as f64 } else { 0.0 };
    (0..n).map(move |i| if i + 1 == n && n > 1 { b } else { a + step * i as f64 })
}

/// `linspace(0, 1, n)`.
fn ramp(n: usize) -> impl Iterator<Item = f64> {
    linspace(0.0, 1.0, n)
}

/// numpy's `round` (half to even), which diffusers' spacings use.
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

/// Log-linear interpolation of a decreasing table of positive values to `n` points (AYS / OSS
/// tables); the table needs at least two.
pub fn loglinear_interp(table: &[f64], n: usize) -> Result<Vec<f64>, ScheduleError> {
    if table.len() < 2 {
        return Err(ScheduleError::TooShort(table.len()));
    }
    if n == table.len() {
        return Ok(table.to_vec());
    }
    let last = (table.len() - 1) as f64;
    Ok(ramp(n)
        .map(|x| {
            let pos = x * last;
            let lo = (pos.floor() as usize).min(table.len() - 2);
            let w = pos - lo as f64;
            ((1.0 - w) * table[lo].ln() + w * table[lo + 1].ln()).exp()
        })
        .collect())
}
