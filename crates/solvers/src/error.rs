//! Typed errors of the solver crate.

/// A step schedule or noise schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("a step schedule needs at least two sigmas (one step), got {0}")]
    TooShort(usize),
    #[error("sigma #{index} is {value}: sigmas must be finite (only the first may be +inf, pure noise)")]
    NotFinite { index: usize, value: f64 },
    #[error("sigma #{index} is {value}: sigmas must be non-negative")]
    Negative { index: usize, value: f64 },
    #[error("sigma #{index} ({value}) is not below sigma #{} ({prev}): sigmas must strictly decrease", index - 1)]
    NotDecreasing { index: usize, prev: f64, value: f64 },
    #[error("step count must be at least 1")]
    ZeroSteps,
    #[error("{0} steps is more than the {max} a schedule may have", max = crate::sigmas::MAX_STEPS)]
    TooManySteps(usize),
    #[error("{0}")]
    Invalid(String),
    #[error("unknown scheduler `{name}`; valid names: {valid}")]
    UnknownScheduler { name: String, valid: String },
}

/// Anything that can stop a sampling run.
#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("the model returned NaN or Inf at step {step} (sigma {sigma})")]
    NonFinite { step: usize, sigma: f64 },
    #[error("the model returned a prediction of shape {output:?} for a state of shape {input:?}")]
    PredictionShape { input: Vec<usize>, output: Vec<usize> },
    #[error("the noise source ran out: {0}")]
    Noise(String),
    #[error("invalid solver option: {0}")]
    Options(String),
    #[error("unknown sampler `{name}`; valid names: {valid}")]
    UnknownSampler { name: String, valid: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
