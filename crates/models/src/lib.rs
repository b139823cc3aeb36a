//! # stride-models
//!
//! Denoisers implementing [`stride_solvers::Denoiser`]. For now the exact Gaussian-mixture
//! model that every solver test and benchmark uses.

pub mod gmm;

pub use gmm::{GaussianMixture, MixtureError};
