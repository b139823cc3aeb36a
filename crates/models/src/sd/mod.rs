//! Stable Diffusion (1.5, 2.1, XL and the Turbo distillations) through candle-transformers'
//! `stable_diffusion` modules, as a [`Denoiser`] for stride's solvers.
//!
//! - Weights: a local diffusers folder, else the Hugging Face cache, else the Hub ([`Hub`]);
//!   offline, the error names the repository and file and how to pass a local folder.
//! - Configs: the folder's own `unet/config.json`, `vae/config.json` and
//!   `scheduler/scheduler_config.json` (so a fine-tune in the diffusers layout loads too).
//! - Noise schedule: stride's f64 [`DiscreteSchedule`] (not candle's scheduler code); the
//!   denoiser maps each k-diffusion sigma to its fractional training timestep with
//!   [`NoiseSchedule::t_at`].
//! - UNet: candle's blocks in [`unet::Unet`], which takes a timestep per sample and adds SDXL's
//!   pooled-text and size conditioning (candle's own UNet has neither).
//! - Classifier-free guidance: [`Guided`] batches the conditional and unconditional halves in
//!   one UNet call; scale 1 skips the unconditional half (the Turbo models' default).
//! - Decoding: the VAE at each model's latent scale (0.18215; SDXL 0.13025), upcast from f16
//!   to f32 where the config says so (SDXL).

pub mod config;
pub mod hub;
pub mod text;
pub mod unet;

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::{clip, vae};
use stride_solvers::Denoiser;
use stride_solvers::{DiscreteSchedule, NoiseSchedule, Parameterization};

pub use config::{SchedulerJson, TextTime, UnetJson, VaeJson};
pub use hub::{Hub, Source};
pub use text::{clip_tokenizer_from_bpe, ClipEncoder, ClipTokenizer, Layer};
pub use unet::{Added, Unet};

/// Why a Stable Diffusion model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error(
        "{repo}/{file} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set.\n  \
         Download it on a connected machine (`huggingface-cli download {repo} {file}`, into the same \
         cache), or pass a local diffusers folder: `--weights-dir DIR` (`weights_dir` in \
         `StableDiffusion::load`) with the file at DIR/{file}",
        .cache.display()
    )]
    Offline { repo: String, file: String, cache: PathBuf },
    #[error(
        "could not download {file} from the Hugging Face repository {repo}: {reason}.\n  \
         Without network access, pass a local diffusers folder: `--weights-dir DIR` (`weights_dir` \
         in `StableDiffusion::load`) with the file at DIR/{file}; or fill the cache (HF_HOME, \
         HF_HUB_CACHE) elsewhere and set HF_HUB_OFFLINE=1"
    )]
    Download { repo: String, file: String, reason: String },
    #[error(
        "{} is missing: a diffusers folder of {repo} holds {file} there (get it with \
         `huggingface-cli download {repo} {file} --local-dir DIR`)",
        .path.display()
    )]
    MissingFile { path: PathBuf, repo: String, file: String },
    #[error("{}: {reason}", .path.display())]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Size(String),
    #[error("{0}")]
    Prompt(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The released models stride knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// SD 1.5: epsilon prediction, 512 px, CLIP ViT-L/14.
    Sd15,
    /// SD 2.1: v-prediction, 768 px, OpenCLIP ViT-H.
    Sd21,
    /// SDXL 1.0 base: two text encoders, pooled embedding and size conditioning, 1024 px.
    Sdxl,
    /// SD-Turbo (distilled SD 2.1): 1-4 steps, trailing spacing, no guidance.
    SdTurbo,
    /// SDXL-Turbo: 1-4 steps, trailing spacing, no guidance, 512 px.
    SdxlTurbo,
}

/// A model's recommended sampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub steps: usize,
    /// Classifier-free guidance scale (at most 1: none).
    pub cfg_scale: f64,
    /// Step spacing, a `--scheduler` name (diffusers': `leading`, or `trailing` for Turbo).
    pub scheduler: &'static str,
    pub width: usize,
    pub height: usize,
}

impl Variant {
    pub const ALL: [Variant; 5] =
        [Variant::Sd15, Variant::Sd21, Variant::Sdxl, Variant::SdTurbo, Variant::SdxlTurbo];

    /// The `--model` name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Sd15 => "sd15",
            Variant::Sd21 => "sd21",
            Variant::Sdxl => "sdxl",
            Variant::SdTurbo => "sd-turbo",
            Variant::SdxlTurbo => "sdxl-turbo",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The Hugging Face repository (diffusers layout).
    pub fn repo(self) -> &'static str {
        match self {
            Variant::Sd15 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
            Variant::Sd21 => "stabilityai/stable-diffusion-2-1",
            Variant::Sdxl => "stabilityai/stable-diffusion-xl-base-1.0",
            Variant::SdTurbo => "stabilityai/sd-turbo",
            Variant::SdxlTurbo => "stabilityai/sdxl-turbo",
        }
    }

    /// What the UNet predicts (a folder's `scheduler_config.json` overrides it).
    pub fn prediction(self) -> Parameterization {
        match self {
            Variant::Sd21 => Parameterization::V,
            Variant::Sd15 | Variant::Sdxl | Variant::SdTurbo | Variant::SdxlTurbo => {
                Parameterization::Epsilon
            }
        }
    }

    /// The VAE latent scale (a folder's `vae/config.json` `scaling_factor` overrides it).
    pub fn latent_scale(self) -> f64 {
        if self.is_xl() {
            0.13025
        } else {
            0.18215
        }
    }

    pub fn is_xl(self) -> bool {
        matches!(self, Variant::Sdxl | Variant::SdxlTurbo)
    }

    pub fn defaults(self) -> Defaults {
        let (steps, cfg_scale, scheduler, side) = match self {
            Variant::Sd15 => (30, 7.5, "leading", 512),
            Variant::Sd21 => (30, 7.5, "leading", 768),
            Variant::Sdxl => (30, 5.0, "leading", 1024),
            Variant::SdTurbo | Variant::SdxlTurbo => (1, 1.0, "trailing", 512),
        };
        Defaults { steps, cfg_scale, scheduler, width: side, height: side }
    }

    /// The text encoders: (folder, CLIP config, layer read, tokenizer padding, projection).
    fn encoders(self) -> Vec<EncoderSpec> {
        let spec = |folder, config, layer, pad_with, projection| EncoderSpec {
            folder,
            config,
            layer,
            pad_with,
            projection,
        };
        match self {
            Variant::Sd15 => vec![spec("text_encoder", clip::Config::v1_5(), Layer::Last, None, None)],
            Variant::Sd21 | Variant::SdTurbo => {
                vec![spec("text_encoder", clip::Config::v2_1(), Layer::Last, Some("!"), None)]
            }
            Variant::Sdxl | Variant::SdxlTurbo => vec![
                spec("text_encoder", clip::Config::sdxl(), Layer::Penultimate, None, None),
                spec("text_encoder_2", clip::Config::sdxl2(), Layer::Penultimate, Some("!"), Some(1280)),
            ],
        }
    }

    /// The variant a diffusers folder's `unet/config.json` describes (XL when it has the
    /// text-time embedding, 2.x when its cross-attention is 1024 wide, else 1.x); a 2.x or XL
    /// folder whose scheduler spaces steps `trailing` is a few-step distillation: Turbo.
    pub fn infer(dir: &Path) -> Result<Self, SdError> {
        let json = UnetJson::read(&dir.join("unet/config.json"))?;
        let trailing = folder_spacing(dir).as_deref() == Some("trailing");
        Ok(if json.addition_embed_type.as_deref() == Some("text_time") {
            if trailing {
                Variant::SdxlTurbo
            } else {
                Variant::Sdxl
            }
        } else if json.cross_attention_dim == 1024 {
            if trailing {
                Variant::SdTurbo
            } else {
                Variant::Sd21
            }
        } else {
            Variant::Sd15
        })
    }

    /// [`Self::defaults`], with a diffusers folder's own image size (its UNet's
    /// `sample_size`: SD 2.1-base is 512 px where 2.1 is 768) and step spacing.
    pub fn defaults_in(self, dir: Option<&Path>) -> Defaults {
        let mut d = self.defaults();
        let Some(dir) = dir else { return d };
        if let Some(side) = UnetJson::read(&dir.join("unet/config.json")).ok().and_then(|u| u.sample_size) {
            (d.width, d.height) = (side * 8, side * 8);
        }
        d.scheduler = match folder_spacing(dir).as_deref() {
            Some("leading") => "leading",
            Some("trailing") => "trailing",
            Some("linspace") => "linspace",
            _ => d.scheduler,
        };
        d
    }
}

/// A CLIP tokenizer and the file it came from: the local folder's `FOLDER/tokenizer.json`
/// when it has one, else the model's `FOLDER/vocab.json` and `merges.txt` (from the folder,
/// the cache or the Hub: what the diffusers repositories ship), built as transformers builds
/// CLIP's tokenizer.
fn load_tokenizer(source: &Source, folder: &str) -> Result<(tokenizers::Tokenizer, PathBuf), SdError> {
    if let Some(json) = source.dir.map(|d| d.join(folder).join("tokenizer.json")).filter(|p| p.is_file()) {
        let tokenizer = tokenizers::Tokenizer::from_file(&json)
            .map_err(|e| SdError::File { path: json.clone(), reason: e.to_string() })?;
        return Ok((tokenizer, json));
    }
    let vocab = source.get(&format!("{folder}/vocab.json"))?;
    let merges = source.get(&format!("{folder}/merges.txt"))?;
    Ok((text::clip_tokenizer_from_bpe(&vocab, &merges)?, vocab))
}

/// The `timestep_spacing` of a diffusers folder's scheduler, if it says.
fn folder_spacing(dir: &Path) -> Option<String> {
    SchedulerJson::read(&dir.join("scheduler/scheduler_config.json")).ok()?.timestep_spacing
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

struct EncoderSpec {
    folder: &'static str,
    config: clip::Config,
    layer: Layer,
    pad_with: Option<&'static str>,
    projection: Option<usize>,
}

/// A loaded Stable Diffusion model.
pub struct StableDiffusion {
    pub variant: Variant,
    pub prediction: Parameterization,
    pub latent_scale: f64,
    pub schedule: NoiseSchedule,
    pub unet: Unet,
    pub vae: vae::AutoEncoderKL,
    /// The text encoders (none until [`StableDiffusion::load_text_encoders`]).
    pub text: Vec<ClipEncoder>,
    pub device: Device,
    /// The UNet's and text encoders' dtype.
    pub dtype: DType,
    /// The VAE's (f32 instead of f16 when its config says `force_upcast`, as SDXL's).
    pub vae_dtype: DType,
    pub latent_channels: usize,
    /// Pixels per latent element along each side.
    pub downscale: usize,
}

/// Weight files of `folder`, the preferred precision first.
fn weight_files(folder: &str, stem: &str, dtype: DType) -> Vec<String> {
    let full = format!("{folder}/{stem}.safetensors");
    let half = format!("{folder}/{stem}.fp16.safetensors");
    if dtype == DType::F32 {
        vec![full, half]
    } else {
        vec![half, full]
    }
}

fn mmap(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>, SdError> {
    // SAFETY: the file is memory-mapped read-only; as everywhere in candle, it must not be
    // modified while the model is loaded.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }
        .map_err(|e| SdError::File { path: path.to_path_buf(), reason: format!("cannot read weights ({e})") })
}

fn unfit(path: &Path, e: impl fmt::Display) -> SdError {
    SdError::File { path: path.to_path_buf(), reason: format!("the weights do not fit the config ({e})") }
}

impl StableDiffusion {
    /// Loads everything (UNet, VAE, text encoders, tokenizers) from `weights_dir` (a diffusers
    /// folder) or, when `None`, the Hugging Face cache / Hub, as the environment sets it up.
    pub fn load(
        variant: Variant,
        weights_dir: Option<&Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, SdError> {
        let hub = Hub::from_env();
        let mut sd = Self::load_denoiser(variant, weights_dir, &hub, device, dtype)?;
        sd.load_text_encoders(weights_dir, &hub)?;
        Ok(sd)
    }

    /// The UNet, VAE and configs, without the text encoders (then condition with
    /// [`StableDiffusion::guided`] on precomputed embeddings, or call
    /// [`StableDiffusion::load_text_encoders`]).
    pub fn load_denoiser(
        variant: Variant,
        weights_dir: Option<&Path>,
        hub: &Hub,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, SdError> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(SdError::Config(format!("Stable Diffusion runs in f32, f16 or bf16, not {dtype:?}")));
        }
        let source = Source { repo: variant.repo(), dir: weights_dir, hub };
        let config_err = |path: &Path, reason: String| SdError::File { path: path.to_path_buf(), reason };

        let unet_config_path = source.get("unet/config.json")?;
        let unet_json = UnetJson::read(&unet_config_path)?;
        let (unet_config, text_time) = unet_json.to_candle().map_err(|e| config_err(&unet_config_path, e))?;
        if text_time.is_some() != variant.is_xl() {
            return Err(config_err(
                &unet_config_path,
                format!(
                    "this UNet {} SDXL's text-time conditioning, which {} {}",
                    if text_time.is_some() { "has" } else { "lacks" },
                    variant,
                    if variant.is_xl() { "needs" } else { "does not have" }
                ),
            ));
        }
        let vae_config_path = source.get("vae/config.json")?;
        let vae_json = VaeJson::read(&vae_config_path)?;
        let vae_config = vae_json.to_candle().map_err(|e| config_err(&vae_config_path, e))?;
        let downscale = vae_json.downscale().map_err(|e| config_err(&vae_config_path, e))?;
        if unet_json.in_channels != vae_json.latent_channels
            || unet_json.out_channels != vae_json.latent_channels
        {
            return Err(SdError::Config(format!(
                "the UNet maps {} to {} channels but the VAE's latents have {}",
                unet_json.in_channels, unet_json.out_channels, vae_json.latent_channels
            )));
        }

        let unet_path = source.first_of(&weight_files("unet", "diffusion_pytorch_model", dtype))?;
        let unet = Unet::new(
            mmap(&unet_path, dtype, device)?,
            unet_json.in_channels,
            unet_json.out_channels,
            &unet_config,
            text_time,
        )
        .map_err(|e| unfit(&unet_path, e))?;
        // As diffusers: an f16 VAE that overflows (SDXL's, `force_upcast`) decodes in f32.
        let upcast = dtype == DType::F16 && vae_json.force_upcast.unwrap_or(variant.is_xl());
        let vae_dtype = if upcast { DType::F32 } else { dtype };
        let vae_path = source.first_of(&weight_files("vae", "diffusion_pytorch_model", vae_dtype))?;
        let vae = vae::AutoEncoderKL::new(mmap(&vae_path, vae_dtype, device)?, 3, 3, vae_config)
            .map_err(|e| unfit(&vae_path, e))?;

        // The scheduler config is optional: it only refines the variant's defaults.
        let scheduler = match source.get("scheduler/scheduler_config.json") {
            Ok(path) => Some((SchedulerJson::read(&path)?, path)),
            Err(SdError::MissingFile { .. }) if weights_dir.is_some() => None,
            Err(e) => return Err(e),
        };
        let (prediction, schedule) = match &scheduler {
            Some((json, path)) => (
                json.parameterization().map_err(|e| config_err(path, e))?.unwrap_or(variant.prediction()),
                json.schedule().map_err(|e| config_err(path, e))?,
            ),
            None => (variant.prediction(), None),
        };
        let schedule = NoiseSchedule::Discrete(schedule.unwrap_or_else(DiscreteSchedule::stable_diffusion));
        Ok(Self {
            variant,
            prediction,
            latent_scale: vae_json.scaling_factor.unwrap_or(variant.latent_scale()),
            schedule,
            unet,
            vae,
            text: Vec::new(),
            device: device.clone(),
            dtype,
            vae_dtype,
            latent_channels: vae_json.latent_channels,
            downscale,
        })
    }

    /// Loads the variant's CLIP text encoders and tokenizers (`tokenizer*/tokenizer.json` from
    /// the folder when present, else the model's `tokenizer*/vocab.json` and `merges.txt`).
    pub fn load_text_encoders(&mut self, weights_dir: Option<&Path>, hub: &Hub) -> Result<(), SdError> {
        let source = Source { repo: self.variant.repo(), dir: weights_dir, hub };
        let mut encoders = Vec::new();
        for (i, spec) in self.variant.encoders().into_iter().enumerate() {
            let path = source.first_of(&weight_files(spec.folder, "model", self.dtype))?;
            let vb = mmap(&path, self.dtype, &self.device)?;
            let mut encoder = ClipEncoder::new(vb, &spec.config, spec.layer, spec.projection)
                .map_err(|e| unfit(&path, e))?;
            let folder = if i == 0 { "tokenizer" } else { "tokenizer_2" };
            let (tokenizer, tokenizer_path) = load_tokenizer(&source, folder)?;
            let max_len = spec.config.max_position_embeddings;
            encoder.tokenizer = Some(
                ClipTokenizer::new(tokenizer, max_len, spec.pad_with)
                    .map_err(|e| SdError::File { path: tokenizer_path.clone(), reason: e.to_string() })?,
            );
            encoders.push(encoder);
        }
        self.text = encoders;
        Ok(())
    }

    /// The latent shape `[batch, C, height / 8, width / 8]` of images of this size.
    pub fn latent_dims(&self, batch: usize, width: usize, height: usize) -> Result<[usize; 4], SdError> {
        let f = self.downscale;
        if width == 0 || height == 0 || !width.is_multiple_of(f) || !height.is_multiple_of(f) {
            return Err(SdError::Size(format!(
                "{width}x{height}: width and height must be positive multiples of {f}"
            )));
        }
        Ok([batch, self.latent_channels, height / f, width / f])
    }

    /// Encodes `prompts` (and, when `guided`, as many copies of `negative` after them) for
    /// images of `width` x `height`. SDXL's empty negative prompt is zeros (diffusers'
    /// `force_zeros_for_empty_prompt`).
    pub fn encode_prompts(
        &self,
        prompts: &[&str],
        negative: &str,
        guided: bool,
        width: usize,
        height: usize,
    ) -> Result<Conditioning, SdError> {
        if self.text.is_empty() {
            return Err(SdError::Prompt("the text encoders are not loaded".into()));
        }
        if let Some(i) = prompts.iter().position(|p| p.trim().is_empty()) {
            return Err(SdError::Prompt(format!("prompt {} is empty: describe the image", i + 1)));
        }
        let zero_negative = self.variant.is_xl() && negative.trim().is_empty();
        let mut all: Vec<&str> = prompts.to_vec();
        if guided && !zero_negative {
            all.extend(std::iter::repeat_n(negative, prompts.len()));
        }
        let mut contexts = Vec::new();
        let mut pooled = None;
        for encoder in &self.text {
            let (hidden, p) = encoder.encode(&all, &self.device)?;
            contexts.push(hidden);
            pooled = pooled.or(p);
        }
        let mut context = Tensor::cat(&contexts, 2)?;
        if guided && zero_negative {
            context = Tensor::cat(&[&context, &context.zeros_like()?], 0)?;
            pooled = pooled.map(|p| Tensor::cat(&[&p, &p.zeros_like()?], 0)).transpose()?;
        }
        let rows = context.dim(0)?;
        let time_ids = if self.variant.is_xl() {
            let (h, w) = (height as f32, width as f32);
            let ids: Vec<f32> = (0..rows).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();
            Some(Tensor::from_vec(ids, (rows, 6), &self.device)?)
        } else {
            None
        };
        Ok(Conditioning { context, text_embeds: pooled, time_ids })
    }

    /// The denoiser for `prompts` (one per sample) with guidance `cfg_scale` (1 = none).
    pub fn denoiser(
        &self,
        prompts: &[&str],
        negative: &str,
        cfg_scale: f64,
        width: usize,
        height: usize,
    ) -> Result<Guided<'_>, SdError> {
        let cond =
            self.encode_prompts(prompts, negative, stride_solvers::cfg_guides(cfg_scale), width, height)?;
        self.guided(cond, cfg_scale)
    }

    /// The denoiser over precomputed conditioning: `B` rows, or `2B` (conditional, then
    /// unconditional) when `cfg_scale != 1`.
    pub fn guided(&self, cond: Conditioning, cfg_scale: f64) -> Result<Guided<'_>, SdError> {
        if !cfg_scale.is_finite() {
            return Err(SdError::Prompt(format!("cfg scale must be a finite number, got {cfg_scale}")));
        }
        let (rows, _, width) = cond.context.dims3()?;
        if width != self.unet.cross_attention_dim {
            return Err(SdError::Config(format!(
                "text embeddings are {width} wide; this UNet reads {}",
                self.unet.cross_attention_dim
            )));
        }
        let guided = stride_solvers::cfg_guides(cfg_scale);
        if guided && rows % 2 != 0 {
            return Err(SdError::Config(format!(
                "guidance needs conditional and unconditional rows, got {rows}"
            )));
        }
        match (&self.unet.text_time, &cond.text_embeds, &cond.time_ids) {
            (Some(tt), Some(p), Some(ids)) => {
                if p.dims2()? != (rows, tt.pooled_dim()) || ids.dims2()? != (rows, 6) {
                    return Err(SdError::Config(format!(
                        "SDXL conditioning needs pooled [{rows}, {}] and time ids [{rows}, 6]",
                        tt.pooled_dim()
                    )));
                }
            }
            (None, None, None) => {}
            (Some(_), _, _) => {
                return Err(SdError::Config("SDXL needs pooled embeddings and time ids".into()))
            }
            (None, _, _) => return Err(SdError::Config("this model takes no pooled embeddings".into())),
        }
        let context = cond.context.to_dtype(self.dtype)?;
        let text_embeds = cond.text_embeds.map(|t| t.to_dtype(self.dtype)).transpose()?;
        Ok(Guided {
            model: self,
            context,
            text_embeds,
            time_ids: cond.time_ids,
            cfg_scale,
            samples: if guided { rows / 2 } else { rows },
        })
    }

    /// Decodes native latents `[B, C, h, w]` to images `[B, 3, 8h, 8w]` in `[-1, 1]` (f32),
    /// one sample at a time (the VAE's activations dominate memory at 1024 px).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, SdError> {
        let z = (latents.to_dtype(DType::F32)? / self.latent_scale)?.to_dtype(self.vae_dtype)?;
        let images = (0..z.dim(0)?)
            .map(|i| self.vae.decode(&z.narrow(0, i, 1)?)?.to_dtype(DType::F32)?.clamp(-1f32, 1f32))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&images, 0)?)
    }
}

/// Text conditioning for a batch: `context` `[rows, 77, D]`; SDXL's pooled `text_embeds`
/// `[rows, P]` and `time_ids` `[rows, 6]`. With guidance the rows are the `B` conditional
/// samples, then the `B` unconditional ones.
#[derive(Debug, Clone)]
pub struct Conditioning {
    pub context: Tensor,
    pub text_embeds: Option<Tensor>,
    pub time_ids: Option<Tensor>,
}

/// Stable Diffusion bound to prompts and a guidance scale: the [`Denoiser`] solvers sample.
/// The UNet takes a timestep per sample, so samples at different sigmas share one call.
pub struct Guided<'a> {
    model: &'a StableDiffusion,
    context: Tensor,
    text_embeds: Option<Tensor>,
    time_ids: Option<Tensor>,
    cfg_scale: f64,
    samples: usize,
}

impl Guided<'_> {
    /// Number of samples the conditioning is for.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The denoiser for a batch whose row `r` is sample `samples[r]` of this one (repeats
    /// allowed): the conditioning is gathered, not re-encoded. For the distiller, whose batches
    /// mix calibration samples.
    pub fn rows(&self, samples: &[usize]) -> candle_core::Result<Self> {
        if let Some(&bad) = samples.iter().find(|&&s| s >= self.samples) {
            candle_core::bail!(
                "sample index {bad} out of range: the denoiser holds {} samples",
                self.samples
            );
        }
        let mut index: Vec<u32> = samples.iter().map(|&s| s as u32).collect();
        if stride_solvers::cfg_guides(self.cfg_scale) {
            index.extend(samples.iter().map(|&s| (self.samples + s) as u32));
        }
        let index = Tensor::new(index, self.context.device())?;
        let pick = |t: &Tensor| t.index_select(&index.to_device(t.device())?, 0);
        Ok(Self {
            model: self.model,
            context: pick(&self.context)?,
            text_embeds: self.text_embeds.as_ref().map(pick).transpose()?,
            time_ids: self.time_ids.as_ref().map(pick).transpose()?,
            cfg_scale: self.cfg_scale,
            samples: samples.len(),
        })
    }
}

impl Denoiser for Guided<'_> {
    fn schedule(&self) -> &NoiseSchedule {
        &self.model.schedule
    }

    fn parameterization(&self) -> Parameterization {
        self.model.prediction
    }

    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        if b != self.samples || sigmas.len() != b {
            candle_core::bail!("the denoiser was conditioned for {} samples, got {b}", self.samples);
        }
        let mut t: Vec<f64> = sigmas.iter().map(|&s| self.model.schedule.t_at(s)).collect();
        let xin = x.to_dtype(self.model.dtype)?;
        let guided = stride_solvers::cfg_guides(self.cfg_scale);
        let xin = if guided {
            t.extend_from_within(..);
            Tensor::cat(&[&xin, &xin], 0)?
        } else {
            xin
        };
        let added = match (&self.text_embeds, &self.time_ids) {
            (Some(text_embeds), Some(time_ids)) => Some(Added { text_embeds, time_ids }),
            _ => None,
        };
        let out = self.model.unet.forward(&xin, &t, &self.context, added)?;
        let out = if guided {
            let (cond, uncond) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
            (&uncond + ((cond - &uncond)? * self.cfg_scale)?)?
        } else {
            out
        };
        out.to_dtype(x.dtype())
    }
}
