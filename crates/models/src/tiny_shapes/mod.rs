//! tiny-shapes: the bundled text-to-image model (32x32 RGB, rectified flow), trained on the
//! procedural shapes world of `stride-shapes`. Weights live under `models/tiny-shapes/`
//! (`config.json`, `tokenizer.json`, `model.safetensors`).

pub mod net;
pub mod tokenizer;
pub mod train;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stride_solvers::{Denoiser, NoiseSchedule, Parameterization};

pub use net::{Config, Net};

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("{0}")]
    Prompt(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    fn tokenizer(e: impl std::fmt::Display) -> Self {
        ModelError::Tokenizer(e.to_string())
    }
}

/// The loaded model: network, tokenizer, device.
pub struct TinyShapes {
    pub net: Net,
    pub tokenizer: tokenizers::Tokenizer,
    pub device: Device,
}

/// Encoded prompts: token ids `[B, L]` (padded) and mask `[B, L]` (1 = token).
pub struct Tokens {
    pub ids: Tensor,
    pub mask: Tensor,
}

impl TinyShapes {
    /// The folder shipped in this repository.
    pub fn default_dir() -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-shapes");
        // Without the `crates/models/../..` detour in messages, when it exists.
        dir.canonicalize().unwrap_or(dir)
    }

    /// The folder a `--model` value names: `tiny-shapes` is the bundled model, anything else a
    /// folder holding one.
    pub fn dir_of(model: &str) -> PathBuf {
        if model == "tiny-shapes" {
            Self::default_dir()
        } else {
            PathBuf::from(model)
        }
    }

    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let file_err = |path: &Path, reason: String| ModelError::File { path: path.to_path_buf(), reason };
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| file_err(&config_path, e.to_string()))?;
        let config: Config =
            serde_json::from_str(&text).map_err(|e| file_err(&config_path, e.to_string()))?;
        config.validate().map_err(ModelError::Config)?;
        let tokenizer = tokenizer::load(&dir.join("tokenizer.json"))?;
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| file_err(&weights, format!("cannot read weights ({e})")))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let net = Net::new(&config, vb)
            .map_err(|e| file_err(&weights, format!("weights do not fit config.json ({e})")))?;
        Ok(Self { net, tokenizer, device: device.clone() })
    }

    /// Tokenizes prompts (the empty string is the unconditional prompt), padded to one length.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Tokens, ModelError> {
        let (ids, mask) =
            tokenizer::encode_batch(&self.tokenizer, prompts, self.net.config.max_tokens, &self.device)?;
        Ok(Tokens { ids, mask })
    }

    /// The denoiser for `prompts` (one per sample) with classifier-free guidance `cfg_scale`
    /// (1 = no guidance, one model call per step; otherwise conditional and unconditional
    /// halves batched in one call).
    pub fn denoiser(&self, prompts: &[&str], cfg_scale: f64) -> Result<Guided<'_>, ModelError> {
        self.denoiser_with_negative(prompts, "", cfg_scale)
    }

    /// As [`Self::denoiser`], guiding away from `negative` instead of the empty prompt.
    pub fn denoiser_with_negative(
        &self,
        prompts: &[&str],
        negative: &str,
        cfg_scale: f64,
    ) -> Result<Guided<'_>, ModelError> {
        if let Some(i) = prompts.iter().position(|p| p.trim().is_empty()) {
            return Err(ModelError::Prompt(format!(
                "prompt {} is empty: describe the image, e.g. \"a red circle\"",
                i + 1
            )));
        }
        if !cfg_scale.is_finite() {
            return Err(ModelError::Prompt(format!("cfg scale must be a finite number, got {cfg_scale}")));
        }
        let mut all: Vec<&str> = prompts.to_vec();
        if stride_solvers::cfg_guides(cfg_scale) {
            all.extend(std::iter::repeat_n(negative, prompts.len()));
        }
        let tokens = self.tokenize(&all)?;
        let text = self.net.text.forward(&tokens.ids, &tokens.mask)?;
        Ok(Guided {
            model: self,
            text,
            mask: tokens.mask,
            cfg_scale,
            schedule: NoiseSchedule::Flow { shift: 1.0 },
        })
    }
}

/// tiny-shapes bound to prompts and a guidance scale: the [`Denoiser`] solvers sample.
pub struct Guided<'a> {
    model: &'a TinyShapes,
    text: Tensor,
    mask: Tensor,
    cfg_scale: f64,
    schedule: NoiseSchedule,
}

impl Guided<'_> {
    /// The denoiser for a batch whose row `r` is prompt `prompts[r]` of this one (repeats
    /// allowed): the text encodings are gathered, not recomputed. For the distiller, whose
    /// batches mix calibration samples.
    pub fn rows(&self, prompts: &[usize]) -> candle_core::Result<Self> {
        let n = if !stride_solvers::cfg_guides(self.cfg_scale) {
            self.text.dim(0)?
        } else {
            self.text.dim(0)? / 2
        };
        if let Some(&bad) = prompts.iter().find(|&&p| p >= n) {
            candle_core::bail!("prompt index {bad} out of range: the denoiser holds {n} prompts");
        }
        let mut index: Vec<u32> = prompts.iter().map(|&p| p as u32).collect();
        if stride_solvers::cfg_guides(self.cfg_scale) {
            index.extend(prompts.iter().map(|&p| (n + p) as u32));
        }
        let index = Tensor::new(index, self.text.device())?;
        Ok(Self {
            model: self.model,
            text: self.text.index_select(&index, 0)?,
            mask: self.mask.index_select(&index, 0)?,
            cfg_scale: self.cfg_scale,
            schedule: self.schedule.clone(),
        })
    }
}

impl Denoiser for Guided<'_> {
    fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn parameterization(&self) -> Parameterization {
        Parameterization::FlowVelocity
    }

    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> candle_core::Result<Tensor> {
        let t: Vec<f32> =
            sigmas.iter().map(|&s| if s.is_infinite() { 1.0 } else { (s / (1.0 + s)) as f32 }).collect();
        let t = Tensor::new(t, x.device())?;
        let x32 = x.to_dtype(DType::F32)?;
        let out = if !stride_solvers::cfg_guides(self.cfg_scale) {
            self.model.net.forward(&x32, &t, &self.text, &self.mask)?
        } else {
            let b = x.dim(0)?;
            let both = self.model.net.forward(
                &Tensor::cat(&[&x32, &x32], 0)?,
                &Tensor::cat(&[&t, &t], 0)?,
                &self.text,
                &self.mask,
            )?;
            let (cond, uncond) = (both.narrow(0, 0, b)?, both.narrow(0, b, b)?);
            (&uncond + ((cond - &uncond)? * self.cfg_scale)?)?
        };
        out.to_dtype(x.dtype())
    }
}
