//! # stride-models
//!
//! Denoisers implementing [`stride_solvers::Denoiser`]:
//!
//! - [`GaussianMixture`]: an exact model (its score and its ODE solution in closed form) that
//!   every solver test and benchmark checks against.
//! - [`TinyShapes`]: the bundled text-to-image model, trained offline on the shapes world.
//! - [`StableDiffusion`]: Stable Diffusion through candle-transformers, from the Hub or a
//!   local folder.

pub mod gmm;
pub mod init;
pub mod sd;
pub mod tiny_shapes;

pub use gmm::{GaussianMixture, MixtureError};
pub use sd::{SdError, StableDiffusion, Variant};
pub use tiny_shapes::{ModelError, TinyShapes};
