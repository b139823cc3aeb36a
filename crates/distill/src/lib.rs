//! # stride-distill
//!
//! Step schedules distilled for a model and a solver: where to put K steps so that a K-step
//! run lands as close as possible to a fine teacher run.
//!
//! - The **teacher** runs a fine solver over an N-step grid (default N = 200, uniform in the
//!   model's time; euler, which is DDIM for VP models) and keeps its state and x0 prediction at
//!   every grid point ([`teacher`]).
//! - The **OSS search** (Pei et al. 2025, "Optimal Stepsize for Diffusion Sampling") lets the
//!   student solver run: from every state kept after k steps it takes one step to every lower
//!   grid point, and per (k, landing index) keeps the landing closest to the teacher, with its
//!   solver history (so multistep students, `dpmpp_2m` and `dpmpp_3m`, are searched with the
//!   update they will run). N + K N model evaluations per sample with the x_t distance
//!   ([`Method::Oss`], [`Distance`]).
//! - The **exact mode** (BOSS / GITS) measures one student step between the teacher's own states
//!   and takes the exact K-edge shortest path; only the teacher's N evaluations, for single-step
//!   students ([`Method::Exact`]).
//! - Per-sample schedules are **aggregated** per index (median or mean, in sigma space) and can be
//!   **interpolated** log-linearly to other step counts ([`aggregate()`], [`interpolate`]).
//! - The **schedule file** records the model, solver, teacher, calibration set and costs, and
//!   refuses to be used with another model or solver unless forced ([`ScheduleFile`]).
//!
//! The searches themselves ([`dp`]) are generic over their costs, so they are tested against
//! brute force on synthetic tables; the model-facing part ([`distill`]) is a thin driver that
//! batches model calls across samples and search states.
//!
//! ```
//! use candle_core::{DType, Device};
//! use stride_distill::{aggregate, distill, Aggregate, Config, Shared};
//! use stride_models::GaussianMixture;
//! use stride_solvers::{Denoiser, NoiseSchedule, NoiseSource, Sampler, SamplerKind, TorchNoise};
//!
//! let model = GaussianMixture::synthetic(8, 3, NoiseSchedule::edm()).unwrap();
//! let mut config = Config::new(model.schedule(), Sampler::new(SamplerKind::Dpmpp2m), 4).unwrap();
//! config.grid = stride_distill::teacher::default_grid(model.schedule(), 40).unwrap();
//! let noise = TorchNoise::new(&[1, 2]).sample(&(2, 8).into(), DType::F64, &Device::Cpu).unwrap();
//! let distilled = distill(&Shared(&model), &noise, &config, |_| {}).unwrap();
//! let per_sample: Vec<Vec<f64>> = distilled.samples.iter().map(|s| s.sigmas.clone()).collect();
//! let schedule = aggregate(&per_sample, Aggregate::Median).unwrap();
//! assert_eq!(schedule.steps(), 4);
//! assert_eq!(schedule.last(), 0.0);
//! ```

pub mod aggregate;
pub mod dp;
pub mod error;
pub mod file;
pub mod model;
pub mod search;
pub mod student;
pub mod teacher;

pub use aggregate::{aggregate, interpolate, Aggregate};
pub use dp::{oss_search, shortest_path, OssSearch, Path};
pub use error::DistillError;
pub use file::{Compute, Intended, Provenance, ScheduleFile};
pub use model::{RowDenoiser, Shared};
pub use search::{distill, distill_counts, fidelity, Config, Distilled, Method, Progress, SampleSchedule};
pub use student::{Distance, Student};
