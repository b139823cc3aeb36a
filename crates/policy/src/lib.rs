//! # stride-policy
//!
//! A per-prompt step policy (AdaDiff, "Adaptive Step Selection for Fast Diffusion", AAAI-25):
//! a small network reads the prompt's text features from the model's own text encoder and
//! picks how many steps the prompt needs, trained as a contextual bandit on a cached table of
//! what every option is worth for each training prompt (AdaDiff's REINFORCE, or the optimum of
//! the same entropy-regularised objective fitted directly: see [`train`]).
//!
//! - [`PolicyNet`]: self-attention layers over per-token features, a masked mean, an MLP over
//!   the step-count options ([`DEFAULT_OPTIONS`]).
//! - [`Reward`]: quality minus a step cost, or AdaDiff's top-k reward.
//! - [`Policy`]: the saved policy (weights and a JSON sidecar), validated on load.
//! - [`train`]: the contextual bandit: AdaDiff's REINFORCE with an entropy bonus, its exact
//!   expected gradient, or the optimum of the same entropy-regularised objective fitted
//!   directly (the default: see [`Objective`]); [`PolicyNet::choose`] takes the argmax.

pub mod file;
pub mod net;
pub mod reward;
pub mod train;

pub use file::{Policy, PolicyError, Sidecar, MODEL_POLICY_DIR};
pub use net::{PolicyConfig, PolicyNet, DEFAULT_OPTIONS};
pub use reward::Reward;
pub use train::{train, Baseline, Objective, StepReport, TrainSettings};
