//! The diffusers `config.json` files of a Stable Diffusion folder (`unet/`, `vae/`,
//! `scheduler/`), read into candle-transformers' config structs.

use std::path::Path;

use candle_transformers::models::stable_diffusion::{unet_2d, vae};
use serde::Deserialize;
use stride_solvers::{BetaSchedule, DiscreteSchedule, Parameterization};

use super::SdError;

/// A value diffusers writes either once or once per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    fn get(&self, i: usize) -> Option<T> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Many(v) => v.get(i).copied(),
        }
    }
}

fn d_four() -> usize {
    4
}
fn d_three() -> usize {
    3
}
fn d_two() -> usize {
    2
}
fn d_one() -> usize {
    1
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}
fn d_one_f() -> f64 {
    1.0
}
fn d_heads() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn d_layers() -> PerBlock<usize> {
    PerBlock::One(1)
}

/// `unet/config.json` (`UNet2DConditionModel`), the fields stride reads.
#[derive(Debug, Clone, Deserialize)]
pub struct UnetJson {
    #[serde(default = "d_four")]
    pub in_channels: usize,
    #[serde(default = "d_four")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    #[serde(default = "d_two")]
    pub layers_per_block: usize,
    /// diffusers' historical name for the number of heads (as candle reads it too).
    #[serde(default = "d_heads")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub cross_attention_dim: usize,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d_layers")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub center_input_sample: bool,
    /// `"text_time"` for SDXL (pooled text embedding plus size conditioning).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// The latent side it was trained at (64 for 512 px, 96 for 768, 128 for 1024).
    #[serde(default)]
    pub sample_size: Option<usize>,
}

/// SDXL's extra conditioning: `add_time_ids` through sinusoidal features of width
/// `time_dim`, concatenated with the pooled text embedding (`input_dim` in all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTime {
    pub time_dim: usize,
    pub input_dim: usize,
}

impl TextTime {
    /// Width of the pooled text embedding the model expects (`input_dim - 6 time_dim`).
    pub fn pooled_dim(&self) -> usize {
        self.input_dim - 6 * self.time_dim
    }
}

impl UnetJson {
    pub fn read(path: &Path) -> Result<Self, SdError> {
        read_json(path)
    }

    /// The candle config, the SDXL text-time conditioning if any, and `(in, out)` channels.
    pub fn to_candle(&self) -> Result<(unet_2d::UNet2DConditionModelConfig, Option<TextTime>), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n {
            return Err(format!(
                "{} down_block_types for {} block_out_channels",
                self.down_block_types.len(),
                n
            ));
        }
        if let Some(c) = &self.class_embed_type {
            return Err(format!("class_embed_type {c:?} is not supported"));
        }
        if self.time_cond_proj_dim.is_some() {
            return Err("time_cond_proj_dim (LCM guidance embedding) is not supported".into());
        }
        let heads = self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim);
        let blocks = (0..n)
            .map(|i| {
                let cross = match self.down_block_types[i].as_str() {
                    "CrossAttnDownBlock2D" => true,
                    "DownBlock2D" => false,
                    other => return Err(format!("down block type {other:?} is not supported")),
                };
                let layers =
                    self.transformer_layers_per_block.get(i).ok_or("transformer_layers_per_block")?;
                let heads = heads.get(i).ok_or("attention_head_dim has too few entries")?;
                let channels = self.block_out_channels[i];
                if heads == 0
                    || !channels.is_multiple_of(heads)
                    || !channels.is_multiple_of(self.norm_num_groups)
                {
                    return Err(format!(
                        "block {i}: {channels} channels do not split into {heads} heads and {} groups",
                        self.norm_num_groups
                    ));
                }
                Ok(unet_2d::BlockConfig {
                    out_channels: channels,
                    use_cross_attn: cross.then_some(layers),
                    attention_head_dim: heads,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let text_time = match self.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let time_dim =
                    self.addition_time_embed_dim.ok_or("text_time needs addition_time_embed_dim")?;
                let input_dim = self
                    .projection_class_embeddings_input_dim
                    .ok_or("text_time needs projection_class_embeddings_input_dim")?;
                if input_dim <= 6 * time_dim {
                    return Err(format!("projection_class_embeddings_input_dim {input_dim} is too small"));
                }
                Some(TextTime { time_dim, input_dim })
            }
            Some(other) => return Err(format!("addition_embed_type {other:?} is not supported")),
        };
        let config = unet_2d::UNet2DConditionModelConfig {
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks,
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: self.use_linear_projection,
        };
        Ok((config, text_time))
    }
}

/// `vae/config.json` (`AutoencoderKL`).
#[derive(Debug, Clone, Deserialize)]
pub struct VaeJson {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_two")]
    pub layers_per_block: usize,
    #[serde(default = "d_four")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    /// The latent scale (0.18215 for SD 1.x/2.x, 0.13025 for SDXL); older configs omit it.
    #[serde(default)]
    pub scaling_factor: Option<f64>,
    /// SDXL's VAE overflows in f16 and must decode in f32.
    #[serde(default)]
    pub force_upcast: Option<bool>,
}

impl VaeJson {
    pub fn read(path: &Path) -> Result<Self, SdError> {
        read_json(path)
    }

    pub fn to_candle(&self) -> Result<vae::AutoEncoderKLConfig, String> {
        if self.block_out_channels.is_empty() {
            return Err("block_out_channels is empty".into());
        }
        if self.in_channels != 3 || self.out_channels != 3 {
            return Err("only RGB autoencoders (3 channels in and out) are supported".into());
        }
        if let Some(c) = self.block_out_channels.iter().find(|c| !c.is_multiple_of(self.norm_num_groups)) {
            return Err(format!("{c} channels do not split into {} groups", self.norm_num_groups));
        }
        Ok(vae::AutoEncoderKLConfig {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: self.norm_num_groups,
            use_quant_conv: self.use_quant_conv,
            use_post_quant_conv: self.use_post_quant_conv,
        })
    }

    /// Pixels per latent element along each side: 2 per level after the first (8 for every
    /// released SD VAE).
    pub fn downscale(&self) -> Result<usize, String> {
        match self.block_out_channels.len() {
            levels @ 1..=16 => Ok(1 << (levels - 1)),
            levels => Err(format!("{levels} levels in block_out_channels: expected 1 to 16")),
        }
    }
}

/// `scheduler/scheduler_config.json`: the training schedule and prediction type.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerJson {
    #[serde(default)]
    pub prediction_type: Option<String>,
    #[serde(default)]
    pub beta_schedule: Option<String>,
    #[serde(default)]
    pub beta_start: Option<f64>,
    #[serde(default)]
    pub beta_end: Option<f64>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
    #[serde(default)]
    pub timestep_spacing: Option<String>,
}

impl SchedulerJson {
    pub fn read(path: &Path) -> Result<Self, SdError> {
        read_json(path)
    }

    pub fn parameterization(&self) -> Result<Option<Parameterization>, String> {
        Ok(match self.prediction_type.as_deref() {
            None => None,
            Some("epsilon") => Some(Parameterization::Epsilon),
            Some("v_prediction") => Some(Parameterization::V),
            Some("sample") => Some(Parameterization::X0),
            Some(other) => return Err(format!("prediction_type {other:?} is not supported")),
        })
    }

    /// The training noise schedule, when the file describes one stride supports (our own
    /// f64 construction, not candle's scheduler code).
    pub fn schedule(&self) -> Result<Option<DiscreteSchedule>, String> {
        let (Some(kind), Some(b0), Some(b1)) =
            (self.beta_schedule.as_deref(), self.beta_start, self.beta_end)
        else {
            return Ok(None);
        };
        let betas = match kind {
            "scaled_linear" => BetaSchedule::ScaledLinear { beta_start: b0, beta_end: b1 },
            "linear" => BetaSchedule::Linear { beta_start: b0, beta_end: b1 },
            "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
            other => return Err(format!("beta_schedule {other:?} is not supported")),
        };
        DiscreteSchedule::new(betas, self.num_train_timesteps.unwrap_or(1000))
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SdError> {
    let file_err = |reason: String| SdError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))
}
