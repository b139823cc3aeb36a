//! # stride-solvers
//!
//! Everything a diffusion sampler needs except the model: noise schedules, step schedules,
//! seeded noise and the ODE/SDE solvers (Euler, Heun, DDIM, DPM-Solver++ multistep,
//! singlestep and SDE) and two adaptive-step solvers (`adaptive_sde`, `dpm_adaptive`), on [candle](https://github.com/huggingface/candle) tensors (CPU,
//! CUDA, Metal; f32, or f64 for reference work).
//!
//! Three contracts:
//! - a model implements [`Denoiser`]: raw prediction for a native state `x = alpha x0 + sigma eps`
//!   at per-sample noise levels, plus its [`Parameterization`] and [`NoiseSchedule`];
//! - noise levels cross every boundary as the k-diffusion sigma `s = sigma / alpha` (for flow
//!   models `s = t / (1 - t)`), so schedules interoperate with ComfyUI, stable-diffusion.cpp
//!   and diffusers' `sigmas=`; a step schedule is a validated [`Sigmas`];
//! - randomness comes from a [`NoiseSource`]; [`TorchNoise`] reproduces
//!   `torch.manual_seed(s); torch.randn(...)` bit for bit on every device.
//!
//! ```
//! use candle_core::{Device, Result, Tensor};
//! use stride_solvers::{Denoiser, NoiseSchedule, Parameterization, Sampler, Scheduler, TorchNoise};
//!
//! /// A model whose data is a single point `mu` (its exact denoiser returns `mu`).
//! struct Point { mu: f32, schedule: NoiseSchedule }
//! impl Denoiser for Point {
//!     fn schedule(&self) -> &NoiseSchedule { &self.schedule }
//!     fn parameterization(&self) -> Parameterization { Parameterization::X0 }
//!     fn predict(&self, x: &Tensor, _sigmas: &[f64]) -> Result<Tensor> {
//!         x.ones_like()?.affine(self.mu as f64, 0.0)
//!     }
//! }
//!
//! let model = Point { mu: 0.5, schedule: NoiseSchedule::edm() };
//! let sigmas = Scheduler::Karras { rho: 7.0 }.sigmas(model.schedule(), 8).unwrap();
//! let sampler: Sampler = "dpmpp_2m".parse().unwrap();
//! let mut noise = TorchNoise::new(&[42]);
//! let x = sampler.initial_latent(&model, &sigmas, &[1, 3, 4, 4], &mut noise, &Device::Cpu).unwrap();
//! let out = sampler.sample(&model, x, &sigmas, &mut noise, |step| {
//!     assert!(step.sigma > step.sigma_next);
//! }).unwrap();
//! let max_err = (out - 0.5).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
//! assert!(max_err < 1e-5);
//! ```

pub mod adaptive;
pub mod denoiser;
pub mod error;
pub mod noise;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod sigmas;
pub mod update;

pub use adaptive::{
    AdaptiveSampler, AdaptiveSde, AdaptiveStats, AdaptiveStep, DpmAdaptive, ErrorNorm, EulerMaruyama,
};
pub use denoiser::{cfg_guides, from_x0_eps, predict_checked, to_x0_eps, Denoiser, Parameterization};
pub use error::{ScheduleError, SolverError};
pub use noise::{NoiseSource, ReplayNoise, TorchNoise};
pub use rng::TorchGenerator;
pub use sampler::{Sampler, SamplerKind, Step, X0Processing, SAMPLERS};
pub use schedule::{BetaSchedule, DiscreteSchedule, Family, NoiseSchedule};
pub use sigmas::{AysModel, Scheduler, Sigmas, SCHEDULER_NAMES};
