//! # stride-models
//!
//! Denoisers implementing [`stride_solvers::Denoiser`]. For now the exact Gaussian-mixture
//! model that every solver test and benchmark uses.

pub mod gmm;
pub mod init;
pub mod sd;
pub mod tiny_shapes;

pub use gmm::{GaussianMixture, MixtureError};
pub use sd::{SdError, StableDiffusion, Variant};
pub use tiny_shapes::{ModelError, TinyShapes};
