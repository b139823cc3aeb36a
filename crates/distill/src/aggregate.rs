//! One schedule from many: per-index aggregation of the calibration samples' schedules, and
//! log-linear interpolation to other step counts.

use stride_solvers::sigmas::loglinear_interp;
use stride_solvers::Sigmas;

use crate::error::DistillError;

/// How per-sample schedules become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Per-index median (the OSS code; the middle two averaged for an even count).
    Median,
    /// Per-index mean (the OSS paper).
    Mean,
}

impl Aggregate {
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Median => "median",
            Aggregate::Mean => "mean",
        }
    }
}

impl std::str::FromStr for Aggregate {
    type Err = DistillError;
    fn from_str(name: &str) -> Result<Self, DistillError> {
        match name {
            "median" => Ok(Aggregate::Median),
            "mean" => Ok(Aggregate::Mean),
            other => Err(DistillError::Config(format!("unknown aggregate `{other}`: use median or mean"))),
        }
    }
}

/// The per-index median or mean of per-sample schedules, in sigma space. Both keep a strictly
/// decreasing result: every sample decreases at every index, so every order statistic (and
/// the mean) does too.
pub fn aggregate(per_sample: &[Vec<f64>], how: Aggregate) -> Result<Sigmas, DistillError> {
    let Some(first) = per_sample.first() else {
        return Err(DistillError::Config("no per-sample schedules to aggregate".into()));
    };
    if let Some(bad) = per_sample.iter().position(|s| s.len() != first.len()) {
        return Err(DistillError::Config(format!(
            "per-sample schedule {bad} has {} sigmas, the first {}: all must have the same step count",
            per_sample[bad].len(),
            first.len()
        )));
    }
    let column = |k: usize| -> Vec<f64> { per_sample.iter().map(|s| s[k]).collect() };
    let values = (0..first.len())
        .map(|k| match how {
            Aggregate::Median => median(column(k)),
            Aggregate::Mean => column(k).iter().sum::<f64>() / per_sample.len() as f64,
        })
        .collect();
    Ok(Sigmas::new(values)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 || v[m - 1] == v[m] {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// `sigmas` moved to `steps` steps by log-linear interpolation of its nonzero entries (as
/// Align-Your-Steps tables are), keeping a final 0 and a leading `+inf` (pure noise, flow
/// models) in place.
pub fn interpolate(sigmas: &Sigmas, steps: usize) -> Result<Sigmas, DistillError> {
    if steps == sigmas.steps() {
        return Ok(sigmas.clone());
    }
    let s = sigmas.as_slice();
    let ends_at_zero = sigmas.last() == 0.0;
    let starts_at_inf = sigmas.first().is_infinite();
    let body = &s[usize::from(starts_at_inf)..s.len() - usize::from(ends_at_zero)];
    // Points to produce from the body: one per step, less the fixed ends.
    let points = (steps + 1).checked_sub(usize::from(ends_at_zero) + usize::from(starts_at_inf));
    let (Some(points), true) = (points.filter(|p| *p >= 1), body.len() >= 2) else {
        return Err(DistillError::Config(format!(
            "cannot interpolate a {}-step schedule ({sigmas}) to {steps} steps: it needs at least two \
             finite nonzero sigmas, and the result at least one",
            sigmas.steps()
        )));
    };
    let mut out = Vec::with_capacity(steps + 1);
    if starts_at_inf {
        out.push(f64::INFINITY);
    }
    out.extend(loglinear_interp(body, points)?);
    if ends_at_zero {
        out.push(0.0);
    }
    Ok(Sigmas::new(out)?)
}
