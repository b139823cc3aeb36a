//! The Stable Diffusion UNet, assembled from candle-transformers' blocks.
//!
//! candle's `UNet2DConditionModel` takes one timestep for the whole batch and has no
//! `add_embedding` (SDXL's pooled text embedding and size conditioning). This is the same
//! network over the same blocks and weight names, with both: a timestep per sample, and the
//! optional SDXL `text_time` embedding added to the time embedding. With no `text_time` its
//! output equals candle's (`tests/sd_offline.rs` checks it on random weights).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn as nn;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use candle_transformers::models::stable_diffusion::unet_2d::{BlockConfig, UNet2DConditionModelConfig};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    CrossAttnDownBlock2D, CrossAttnDownBlock2DConfig, CrossAttnUpBlock2D, CrossAttnUpBlock2DConfig,
    DownBlock2D, DownBlock2DConfig, UNetMidBlock2DCrossAttn, UNetMidBlock2DCrossAttnConfig, UpBlock2D,
    UpBlock2DConfig,
};

use super::config::TextTime;

enum Down {
    Basic(DownBlock2D),
    CrossAttn(CrossAttnDownBlock2D),
}

enum Up {
    Basic(UpBlock2D),
    CrossAttn(CrossAttnUpBlock2D),
}

/// SDXL's `add_time_proj` + `add_embedding`.
struct AddEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
    time_dim: usize,
}

/// SDXL's extra inputs, per sample: the pooled text embedding `[B, P]` and the six size
/// numbers `[B, 6]` (original h, w, crop top, left, target h, w).
pub struct Added<'a> {
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
}

pub struct Unet {
    conv_in: nn::Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add: Option<AddEmbedding>,
    down_blocks: Vec<Down>,
    mid_block: UNetMidBlock2DCrossAttn,
    up_blocks: Vec<Up>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
    n_blocks: usize,
    center_input: bool,
    pub in_channels: usize,
    pub cross_attention_dim: usize,
    pub text_time: Option<TextTime>,
}

impl Unet {
    /// Builds the network from diffusers weight names under `vs` (as candle's
    /// `UNet2DConditionModel::new`, plus `add_embedding` when `text_time` is given).
    pub fn new(
        vs: nn::VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: &UNet2DConditionModelConfig,
        text_time: Option<TextTime>,
    ) -> Result<Self> {
        let n_blocks = config.blocks.len();
        let (first, last) = match (config.blocks.first(), config.blocks.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => candle_core::bail!("the UNet config has no blocks"),
        };
        let b_channels = first.out_channels;
        let time_embed_dim = b_channels * 4;
        let conv_cfg = nn::Conv2dConfig { padding: 1, ..Default::default() };
        let conv_in = nn::conv2d(in_channels, b_channels, 3, conv_cfg, vs.pp("conv_in"))?;
        let time_proj = Timesteps::new(b_channels, config.flip_sin_to_cos, config.freq_shift);
        let time_embedding = TimestepEmbedding::new(vs.pp("time_embedding"), b_channels, time_embed_dim)?;
        let add = match text_time {
            None => None,
            Some(tt) => Some(AddEmbedding {
                time_proj: Timesteps::new(tt.time_dim, config.flip_sin_to_cos, config.freq_shift),
                embedding: TimestepEmbedding::new(vs.pp("add_embedding"), tt.input_dim, time_embed_dim)?,
                time_dim: tt.time_dim,
            }),
        };
        let sliced = |heads: usize| match config.sliced_attention_size {
            Some(0) => Some(heads / 2),
            s => s,
        };

        let vs_db = vs.pp("down_blocks");
        let mut down_blocks = Vec::with_capacity(n_blocks);
        for (i, block) in config.blocks.iter().enumerate() {
            let BlockConfig { out_channels, use_cross_attn, attention_head_dim } = *block;
            let in_ch = if i > 0 { config.blocks[i - 1].out_channels } else { b_channels };
            let db_cfg = DownBlock2DConfig {
                num_layers: config.layers_per_block,
                resnet_eps: config.norm_eps,
                resnet_groups: config.norm_num_groups,
                add_downsample: i < n_blocks - 1,
                downsample_padding: config.downsample_padding,
                ..Default::default()
            };
            let vs_i = vs_db.pp(i.to_string());
            down_blocks.push(match use_cross_attn {
                Some(layers) => {
                    let cfg = CrossAttnDownBlock2DConfig {
                        downblock: db_cfg,
                        attn_num_head_channels: attention_head_dim,
                        cross_attention_dim: config.cross_attention_dim,
                        sliced_attention_size: sliced(attention_head_dim),
                        use_linear_projection: config.use_linear_projection,
                        transformer_layers_per_block: layers,
                    };
                    Down::CrossAttn(CrossAttnDownBlock2D::new(
                        vs_i,
                        in_ch,
                        out_channels,
                        Some(time_embed_dim),
                        false,
                        cfg,
                    )?)
                }
                None => {
                    Down::Basic(DownBlock2D::new(vs_i, in_ch, out_channels, Some(time_embed_dim), db_cfg)?)
                }
            });
        }

        let mid_cfg = UNetMidBlock2DCrossAttnConfig {
            resnet_eps: config.norm_eps,
            output_scale_factor: config.mid_block_scale_factor,
            cross_attn_dim: config.cross_attention_dim,
            attn_num_head_channels: last.attention_head_dim,
            resnet_groups: Some(config.norm_num_groups),
            use_linear_projection: config.use_linear_projection,
            transformer_layers_per_block: last.use_cross_attn.unwrap_or(1),
            ..Default::default()
        };
        let mid_block = UNetMidBlock2DCrossAttn::new(
            vs.pp("mid_block"),
            last.out_channels,
            Some(time_embed_dim),
            false,
            mid_cfg,
        )?;

        let vs_ub = vs.pp("up_blocks");
        let mut up_blocks = Vec::with_capacity(n_blocks);
        for i in 0..n_blocks {
            let BlockConfig { out_channels, use_cross_attn, attention_head_dim } =
                config.blocks[n_blocks - 1 - i];
            let prev_out = if i > 0 { config.blocks[n_blocks - i].out_channels } else { last.out_channels };
            let in_ch = config.blocks[if i == n_blocks - 1 { 0 } else { n_blocks - i - 2 }].out_channels;
            let ub_cfg = UpBlock2DConfig {
                num_layers: config.layers_per_block + 1,
                resnet_eps: config.norm_eps,
                resnet_groups: config.norm_num_groups,
                add_upsample: i < n_blocks - 1,
                ..Default::default()
            };
            let vs_i = vs_ub.pp(i.to_string());
            up_blocks.push(match use_cross_attn {
                Some(layers) => {
                    let cfg = CrossAttnUpBlock2DConfig {
                        upblock: ub_cfg,
                        attn_num_head_channels: attention_head_dim,
                        cross_attention_dim: config.cross_attention_dim,
                        sliced_attention_size: sliced(attention_head_dim),
                        use_linear_projection: config.use_linear_projection,
                        transformer_layers_per_block: layers,
                    };
                    Up::CrossAttn(CrossAttnUpBlock2D::new(
                        vs_i,
                        in_ch,
                        prev_out,
                        out_channels,
                        Some(time_embed_dim),
                        false,
                        cfg,
                    )?)
                }
                None => Up::Basic(UpBlock2D::new(
                    vs_i,
                    in_ch,
                    prev_out,
                    out_channels,
                    Some(time_embed_dim),
                    ub_cfg,
                )?),
            });
        }

        let conv_norm_out =
            nn::group_norm(config.norm_num_groups, b_channels, config.norm_eps, vs.pp("conv_norm_out"))?;
        let conv_out = nn::conv2d(b_channels, out_channels, 3, conv_cfg, vs.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            time_proj,
            time_embedding,
            add,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            n_blocks,
            center_input: config.center_input_sample,
            in_channels,
            cross_attention_dim: config.cross_attention_dim,
            text_time,
        })
    }

    /// The model output for `xs` `[B, C, H, W]` at fractional training timesteps
    /// `timesteps` (`B` values) with text context `[B, L, D]`; `added` is required exactly
    /// when the model has SDXL's text-time embedding.
    pub fn forward(
        &self,
        xs: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
        added: Option<Added>,
    ) -> Result<Tensor> {
        let (bsize, _, height, width) = xs.dims4()?;
        if timesteps.len() != bsize {
            candle_core::bail!("{} timesteps for a batch of {bsize}", timesteps.len());
        }
        let dtype = xs.dtype();
        let device = xs.device();
        let up_factor = 1usize << (self.n_blocks - 1);
        let forward_upsample_size = height % up_factor != 0 || width % up_factor != 0;
        // 1. time (sinusoidal features in f32, as diffusers, then the model's dtype)
        let t: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        let t = Tensor::from_vec(t, bsize, device)?;
        let emb = self.time_proj.forward(&t)?.to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&emb)?;
        match (&self.add, added) {
            (Some(add), Some(added)) => {
                let ids = added.time_ids.to_dtype(DType::F32)?.flatten_all()?;
                let time_embeds = add.time_proj.forward(&ids)?.reshape((bsize, 6 * add.time_dim))?;
                let add_embeds =
                    Tensor::cat(&[&added.text_embeds.to_dtype(dtype)?, &time_embeds.to_dtype(dtype)?], 1)?;
                emb = (emb + add.embedding.forward(&add_embeds)?)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                candle_core::bail!("this UNet (SDXL) needs pooled text embeddings and time ids")
            }
            (None, Some(_)) => candle_core::bail!("this UNet takes no pooled text embeddings"),
        }
        // 2. pre-process, 3. down
        let xs = if self.center_input {
            self.conv_in.forward(&((xs * 2.0)? - 1.0)?)?
        } else {
            self.conv_in.forward(xs)?
        };
        let mut res = vec![xs.clone()];
        let mut xs = xs;
        for block in &self.down_blocks {
            let (out, states) = match block {
                Down::Basic(b) => b.forward(&xs, Some(&emb))?,
                Down::CrossAttn(b) => b.forward(&xs, Some(&emb), Some(context))?,
            };
            res.extend(states);
            xs = out;
        }
        // 4. mid
        let mut xs = self.mid_block.forward(&xs, Some(&emb), Some(context))?;
        // 5. up
        let mut upsample_size = None;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let n_resnets = match block {
                Up::Basic(b) => b.resnets.len(),
                Up::CrossAttn(b) => b.upblock.resnets.len(),
            };
            let skips = res.split_off(res.len() - n_resnets);
            if i < self.n_blocks - 1 && forward_upsample_size {
                if let Some(last) = res.last() {
                    let (_, _, h, w) = last.dims4()?;
                    upsample_size = Some((h, w));
                }
            }
            xs = match block {
                Up::Basic(b) => b.forward(&xs, &skips, Some(&emb), upsample_size)?,
                Up::CrossAttn(b) => b.forward(&xs, &skips, Some(&emb), upsample_size, Some(context))?,
            };
        }
        // 6. post-process
        let xs = nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}
