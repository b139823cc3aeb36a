//! The tiny-shapes network: a small text transformer and a denoiser with cross-attention to
//! its per-token outputs, either a U-Net (convolutional levels around transformer blocks, the
//! default) or a DiT (patch tokens). Every layer is a matmul, convolutions included (a fused
//! 3x3 gather, `ops::im2col3x3`): candle's CPU conv2d backward is several times slower than
//! its forward while its matmul is fast, so the network trains on two CPU cores.

pub mod ops;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{embedding, Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

/// Architecture hyper-parameters (`config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub max_tokens: usize,
    pub text_dim: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub patch: usize,
    pub image_size: usize,
    pub channels: usize,
    pub mlp_ratio: usize,
    /// The denoiser's body. Files written before the U-Net existed lack the field: DiT.
    #[serde(default)]
    pub arch: Arch,
    /// U-Net only: channels of the convolutional levels, full resolution first; each level
    /// halves the resolution, and the transformer blocks (`dim`, `depth`, `heads`) run below
    /// the last one.
    #[serde(default)]
    pub levels: Vec<usize>,
    /// Add a fixed 2-D sine-cosine code of each image token's place to its cross-attention
    /// query in every block (as DETR adds positions to its queries). Without it the U-Net's
    /// queries carried their place only through the learned positions added once at the
    /// bottom (std 0.3 beside features of std 1.5), and its cross-attention learned to give
    /// every token the same text summary: position words changed nothing. Files without the
    /// field (written before it existed): off.
    #[serde(default)]
    pub query_positions: bool,
}

/// The denoiser's body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Patchified transformer (`patch` x `patch` tokens): every layer a matmul.
    #[default]
    Dit,
    /// Convolutional levels (3x3 convolutions as matmuls) around transformer blocks at the
    /// lowest resolution: the convolutions give the local bias a patch transformer must learn.
    Unet,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            vocab_size: 40,
            max_tokens: 32,
            text_dim: 128,
            text_layers: 2,
            text_heads: 4,
            dim: 128,
            depth: 4,
            heads: 2,
            patch: 1,
            image_size: 32,
            channels: 3,
            mlp_ratio: 4,
            arch: Arch::Unet,
            levels: vec![32, 64],
            query_positions: true,
        }
    }
}

impl Config {
    pub fn validate(&self) -> std::result::Result<(), String> {
        let checks = [
            (self.dim.is_multiple_of(self.heads), "dim must be divisible by heads"),
            (self.text_dim.is_multiple_of(self.text_heads), "text_dim must be divisible by text_heads"),
            (
                self.patch > 0 && self.image_size.is_multiple_of(self.patch),
                "image_size must be a multiple of patch",
            ),
            (self.depth > 0 && self.text_layers > 0, "depth and text_layers must be at least 1"),
            (!self.query_positions || self.dim.is_multiple_of(4), "query_positions needs dim divisible by 4"),
            (self.vocab_size > 3 && self.max_tokens > 1, "vocab_size and max_tokens are too small"),
            (
                self.arch != Arch::Unet
                    || (!self.levels.is_empty()
                        && self.levels.iter().all(|&c| c > 0)
                        && self.image_size.is_multiple_of(self.patch << self.levels.len())),
                "a unet needs levels (channels > 0) and an image_size divisible by patch * 2^levels",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(msg.to_string()),
            None => Ok(()),
        }
    }

    /// Tokens the transformer blocks see: patches (DiT) or the lowest U-Net level's pixels.
    fn tokens(&self) -> usize {
        match self.arch {
            Arch::Dit => (self.image_size / self.patch).pow(2),
            Arch::Unet => ((self.image_size / self.patch) >> self.levels.len()).pow(2),
        }
    }
}

/// A linear layer (`x W^T + b`) whose bias add has a fused backward.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, inp) = self.weight.dims2()?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / inp;
        let y = x.reshape((rows, inp))?.matmul(&self.weight.t()?)?;
        let y = ops::add_bias(&y, &self.bias)?;
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        y.reshape(dims)
    }

    /// As a 3x3 convolution of NHWC `x` (`[Cout, 9 Cin]` weights over [`ops::im2col3x3`]'s taps).
    fn conv3x3(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv3x3(x, &self.weight, &self.bias)
    }
}

/// candle_nn's linear initialisation: Kaiming weights, uniform(+-1/sqrt(in)) bias.
fn linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((o, i), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
    let bound = 1.0 / (i as f64).sqrt();
    let bias = vb.get_with_hints(o, "bias", candle_nn::Init::Uniform { lo: -bound, up: bound })?;
    Ok(Linear { weight, bias })
}

/// Multi-head attention over `x` (queries) and `context` (keys/values), with an optional
/// additive key mask `[B, 1, 1, Lk]` (0 or a large negative number). Self-attention projects
/// q, k and v with one matmul; cross-attention projects k and v together.
struct Attention {
    q: Option<Linear>,
    qkv: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new_self(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: None,
            qkv: linear(dim, 3 * dim, vb.pp("qkv"))?,
            out: linear(dim, dim, vb.pp("out"))?,
            heads,
        })
    }

    fn new_cross(dim: usize, context_dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: Some(linear(dim, dim, vb.pp("q"))?),
            qkv: linear(context_dim, 2 * dim, vb.pp("kv"))?,
            out: linear(dim, dim, vb.pp("out"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let dim = self.out.weight.dim(0)?;
        let hd = dim / self.heads;
        let heads = self.heads;
        // [B, L, k * dim] -> k tensors [B, H, L, hd]
        let split = |t: &Tensor, k: usize| -> Result<Vec<Tensor>> {
            let len = t.dim(1)?;
            let t = t.reshape((b, len, k, heads, hd))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
            (0..k).map(|i| t.get(i)).collect()
        };
        let (q, k, v) = match (&self.q, context) {
            (Some(q), Some(context)) => {
                let kv = split(&self.qkv.forward(context)?, 2)?;
                (split(&q.forward(x)?, 1)?.remove(0), kv[0].clone(), kv[1].clone())
            }
            _ => {
                let qkv = split(&self.qkv.forward(x)?, 3)?;
                (qkv[0].clone(), qkv[1].clone(), qkv[2].clone())
            }
        };
        let q = (q * (1.0 / (hd as f64).sqrt()))?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = ops::softmax(&scores)?;
        let y = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, n, dim))?;
        self.out.forward(&y)
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(dim, hidden, vb.pp("fc1"))?, fc2: linear(hidden, dim, vb.pp("fc2"))? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&ops::gelu(&self.fc1.forward(x)?)?)
    }
}

/// Layer norm with a learned scale and shift (the text encoder's).
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Pre-norm transformer layer of the text encoder.
struct TextLayer {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

/// The text encoder: token and position embeddings, then pre-norm transformer layers. Its
/// per-token outputs condition the denoiser and feed the step policy.
pub struct TextEncoder {
    tokens: Embedding,
    positions: Tensor,
    layers: Vec<TextLayer>,
    norm: LayerNorm,
}

impl TextEncoder {
    fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        let layers = (0..c.text_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(TextLayer {
                    norm1: LayerNorm::new(c.text_dim, vb.pp("norm1"))?,
                    attn: Attention::new_self(c.text_dim, c.text_heads, vb.pp("attn"))?,
                    norm2: LayerNorm::new(c.text_dim, vb.pp("norm2"))?,
                    mlp: Mlp::new(c.text_dim, c.text_dim * c.mlp_ratio, vb.pp("mlp"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            tokens: embedding(c.vocab_size, c.text_dim, vb.pp("tokens"))?,
            positions: vb.get_with_hints((1, c.max_tokens, c.text_dim), "positions", TEXT_POSITION_INIT)?,
            layers,
            norm: LayerNorm::new(c.text_dim, vb.pp("norm"))?,
        })
    }

    /// Features `[B, L, text_dim]` of token ids `[B, L]` with mask `[B, L]` (1 = token).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let len = ids.dim(1)?;
        let mut h = self.tokens.forward(ids)?.broadcast_add(&self.positions.narrow(1, 0, len)?)?;
        let bias = key_bias(mask, h.dtype())?;
        for layer in &self.layers {
            let n = layer.norm1.forward(&h)?;
            h = (&h + layer.attn.forward(&n, None, Some(&bias))?)?;
            h = (&h + layer.mlp.forward(&layer.norm2.forward(&h)?)?)?;
        }
        self.norm.forward(&h)
    }
}

/// Additive attention bias `[B, 1, 1, L]` from a 0/1 key mask `[B, L]`.
fn key_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    ((mask.to_dtype(dtype)? - 1.0)? * 1e9)?.reshape((b, 1, 1, l))
}

/// One denoiser block: adaLN-Zero self-attention, cross-attention to the text (after a plain
/// layer norm), adaLN-Zero MLP.
struct Block {
    attn: Attention,
    cross: Attention,
    mlp: Mlp,
    modulation: Linear,
}

impl Block {
    fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attn: Attention::new_self(c.dim, c.heads, vb.pp("attn"))?,
            cross: Attention::new_cross(c.dim, c.text_dim, c.heads, vb.pp("cross"))?,
            mlp: Mlp::new(c.dim, c.dim * c.mlp_ratio, vb.pp("mlp"))?,
            modulation: zero_linear(c.dim, 6 * c.dim, vb.pp("modulation"))?,
        })
    }

    /// `query_positions` `[1, N, dim]`: added to the cross-attention queries' input.
    fn forward(
        &self,
        x: &Tensor,
        cond: &Tensor,
        text: &Tensor,
        text_bias: &Tensor,
        query_positions: Option<&Tensor>,
    ) -> Result<Tensor> {
        let m = self.modulation.forward(cond)?.chunk(6, D::Minus1)?;
        let h = ops::ln_modulate(x, &m[0], &m[1])?;
        let x = ops::gated_residual(x, &self.attn.forward(&h, None, None)?, &m[2])?;
        let mut queries = ops::layer_norm(&x)?;
        if let Some(p) = query_positions {
            queries = queries.broadcast_add(p)?;
        }
        let x = (&x + self.cross.forward(&queries, Some(text), Some(text_bias))?)?;
        let h = ops::ln_modulate(&x, &m[3], &m[4])?;
        ops::gated_residual(&x, &self.mlp.forward(&h)?, &m[5])
    }
}

/// A linear layer initialised to zero (adaLN-Zero, the output projection).
fn zero_linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((o, i), "weight", candle_nn::Init::Const(0.0))?;
    let b = vb.get_with_hints(o, "bias", candle_nn::Init::Const(0.0))?;
    Ok(Linear { weight: w, bias: b })
}

/// Sinusoidal embedding of `t * 1000` (per sample), `[B, dim]`.
fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp()).collect();
    let freqs = Tensor::new(freqs, t.device())?.to_dtype(t.dtype())?.unsqueeze(0)?;
    let args = (t.unsqueeze(1)? * 1000.0)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)
}

/// The DiT body: patchify, add positions, blocks, adaLN-modulated unpatchify.
struct Dit {
    patch_in: Linear,
    positions: Tensor,
    blocks: Blocks,
    final_modulation: Linear,
    patch_out: Linear,
}

impl Dit {
    fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        let patch_dim = c.channels * c.patch * c.patch;
        Ok(Self {
            patch_in: linear(patch_dim, c.dim, vb.pp("patch_in"))?,
            positions: vb.get_with_hints((1, c.tokens(), c.dim), "positions", IMAGE_POSITION_INIT)?,
            blocks: Blocks::new(c, &vb)?,
            final_modulation: zero_linear(c.dim, 2 * c.dim, vb.pp("final_modulation"))?,
            patch_out: zero_linear(c.dim, patch_dim, vb.pp("patch_out"))?,
        })
    }

    fn forward(&self, c: &Config, x: &Tensor, cond: &Tensor, text: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, ch, hgt, wid) = x.dims4()?;
        let (gh, gw, p) = (hgt / c.patch, wid / c.patch, c.patch);
        // [B, C, gh, p, gw, p] -> [B, gh, gw, C, p, p] -> [B, N, C p p]
        let patches = x.reshape((b, ch, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((
            b,
            gh * gw,
            ch * p * p,
        ))?;
        let h = self.patch_in.forward(&patches)?.broadcast_add(&self.positions)?;
        let h = self.blocks.forward(&h, cond, text, bias)?;
        let m = self.final_modulation.forward(cond)?.chunk(2, D::Minus1)?;
        let h = ops::ln_modulate(&h, &m[0], &m[1])?;
        self.patch_out
            .forward(&h)?
            .reshape((b, gh, gw, ch, p, p))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((b, ch, hgt, wid))
    }
}

/// A residual block on NHWC features: twice a layer norm over channels modulated by the
/// time/text condition (adaLN), SiLU and a 3x3 convolution, the second zero-initialised (so
/// the block starts as its skip path).
struct ResBlock {
    modulation: Linear,
    conv1: Linear,
    conv2: Linear,
    skip: Option<Linear>,
    cin: usize,
    cout: usize,
}

impl ResBlock {
    fn new(cin: usize, cout: usize, cond_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            modulation: zero_linear(cond_dim, 2 * (cin + cout), vb.pp("modulation"))?,
            conv1: linear(9 * cin, cout, vb.pp("conv1"))?,
            conv2: zero_linear(9 * cout, cout, vb.pp("conv2"))?,
            skip: if cin == cout { None } else { Some(linear(cin, cout, vb.pp("skip"))?) },
            cin,
            cout,
        })
    }

    fn forward(&self, x: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        let (cin, cout) = (self.cin, self.cout);
        let m = self.modulation.forward(cond)?;
        let part = |start: usize, len: usize| m.narrow(1, start, len);
        let (shift1, scale1) = (part(0, cin)?, part(cin, cin)?);
        let (shift2, scale2) = (part(2 * cin, cout)?, part(2 * cin + cout, cout)?);
        let y = ops::silu(&ops::ln_modulate(&x.reshape((b, h * w, cin))?, &shift1, &scale1)?)?;
        let y = self.conv1.conv3x3(&y.reshape((b, h, w, cin))?)?;
        let y = ops::silu(&ops::ln_modulate(&y.reshape((b, h * w, cout))?, &shift2, &scale2)?)?;
        let y = self.conv2.conv3x3(&y.reshape((b, h, w, cout))?)?;
        match &self.skip {
            Some(skip) => skip.forward(x)? + y,
            None => x + y,
        }
    }
}

/// `[B, H, W, C]` -> `[B, H/p, W/p, p p C]`: each p x p neighbourhood as one pixel.
fn space_to_depth(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    x.reshape((b, h / p, p, w / p, p, c))?.permute((0, 1, 3, 2, 4, 5))?.reshape((b, h / p, w / p, p * p * c))
}

/// The inverse of [`space_to_depth`].
fn depth_to_space(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, h, w, cpp) = x.dims4()?;
    let c = cpp / (p * p);
    x.reshape((b, h, w, p, p, c))?.permute((0, 1, 3, 2, 4, 5))?.reshape((b, p * h, p * w, c))
}

/// The U-Net body, NHWC throughout: `patch` x `patch` pixels in, per level a residual block
/// (3x3 convolutions) and a 2x2 space-to-depth projection down, transformer blocks (self- and
/// cross-attention) at the lowest resolution, then per level a projection up, the skip
/// concatenated and a residual block; a modulated norm and a zero-initialised projection out.
struct Unet {
    patch_in: Linear,
    encoder: Vec<ResBlock>,
    down: Vec<Linear>,
    positions: Tensor,
    blocks: Blocks,
    up: Vec<Linear>,
    decoder: Vec<ResBlock>,
    out_modulation: Linear,
    patch_out: Linear,
}

impl Unet {
    fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        let widths: Vec<usize> = c.levels.iter().copied().chain([c.dim]).collect();
        let levels = c.levels.len();
        let patch_dim = c.channels * c.patch * c.patch;
        let per_level = |name: &str, f: &dyn Fn(usize, VarBuilder) -> Result<ResBlock>| {
            (0..levels).map(|i| f(i, vb.pp(format!("{name}.{i}")))).collect::<Result<Vec<_>>>()
        };
        let projections = |name: &str, f: &dyn Fn(usize) -> (usize, usize)| {
            (0..levels)
                .map(|i| {
                    let (i_dim, o_dim) = f(i);
                    linear(i_dim, o_dim, vb.pp(format!("{name}.{i}")))
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            patch_in: linear(patch_dim, widths[0], vb.pp("patch_in"))?,
            encoder: per_level("encoder", &|i, vb| ResBlock::new(widths[i], widths[i], c.dim, vb))?,
            down: projections("down", &|i| (4 * widths[i], widths[i + 1]))?,
            positions: vb.get_with_hints((1, c.tokens(), c.dim), "positions", IMAGE_POSITION_INIT)?,
            blocks: Blocks::new(c, &vb)?,
            up: projections("up", &|i| (widths[i + 1], 4 * widths[i]))?,
            decoder: per_level("decoder", &|i, vb| ResBlock::new(2 * widths[i], widths[i], c.dim, vb))?,
            out_modulation: zero_linear(c.dim, 2 * widths[0], vb.pp("out_modulation"))?,
            patch_out: zero_linear(widths[0], patch_dim, vb.pp("patch_out"))?,
        })
    }

    fn forward(&self, c: &Config, x: &Tensor, cond: &Tensor, text: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let x = x.permute((0, 2, 3, 1))?.contiguous()?;
        let mut h = self.patch_in.forward(&space_to_depth(&x, c.patch)?)?;
        let mut skips = Vec::with_capacity(self.encoder.len());
        for (block, down) in self.encoder.iter().zip(&self.down) {
            h = block.forward(&h, cond)?;
            skips.push(h.clone());
            h = down.forward(&space_to_depth(&h, 2)?)?;
        }
        let (_, gh, gw, _) = h.dims4()?;
        let tokens = h.reshape((b, gh * gw, c.dim))?.broadcast_add(&self.positions)?;
        let tokens = self.blocks.forward(&tokens, cond, text, bias)?;
        let mut h = tokens.reshape((b, gh, gw, c.dim))?;
        for ((up, block), skip) in self.up.iter().zip(&self.decoder).zip(&skips).rev() {
            h = depth_to_space(&up.forward(&h)?, 2)?;
            h = block.forward(&Tensor::cat(&[&h, skip], 3)?, cond)?;
        }
        let (_, ph, pw, width) = h.dims4()?;
        let m = self.out_modulation.forward(cond)?.chunk(2, D::Minus1)?;
        let h = ops::ln_modulate(&h.reshape((b, ph * pw, width))?, &m[0], &m[1])?;
        let out = self.patch_out.forward(&h.reshape((b, ph, pw, width))?)?;
        depth_to_space(&out, c.patch)?.permute((0, 3, 1, 2))?.contiguous()
    }
}

// Position embeddings start near the scale of what they are added to. At std 0.02 beside word
// embeddings of std 1 (candle's `embedding` init) and image tokens of std ~0.8 (LeCun-normal
// projections of inputs of std 0.7-1), word order and place were 2% of each token: a U-Net
// trained that way for 5500 steps used the prompt's words but not their order (swapping the
// object's and the background's colour words left the loss unchanged; `probe_loss`). Text
// positions now match the words; image positions start at 0.3, 15 times the old scale.
const TEXT_POSITION_INIT: candle_nn::Init = candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 };
const IMAGE_POSITION_INIT: candle_nn::Init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.3 };

/// The transformer blocks and, with [`Config::query_positions`], the code of each token's
/// place their cross-attention queries get.
struct Blocks {
    blocks: Vec<Block>,
    query_positions: Option<Tensor>,
}

impl Blocks {
    fn new(c: &Config, vb: &VarBuilder) -> Result<Self> {
        let side = (c.tokens() as f64).sqrt() as usize;
        Ok(Self {
            blocks: (0..c.depth)
                .map(|i| Block::new(c, vb.pp(format!("blocks.{i}"))))
                .collect::<Result<_>>()?,
            query_positions: c
                .query_positions
                .then(|| sincos_2d(side, c.dim, vb.dtype(), vb.device()))
                .transpose()?,
        })
    }

    fn forward(&self, tokens: &Tensor, cond: &Tensor, text: &Tensor, text_bias: &Tensor) -> Result<Tensor> {
        let mut h = tokens.clone();
        for block in &self.blocks {
            h = block.forward(&h, cond, text, text_bias, self.query_positions.as_ref())?;
        }
        Ok(h)
    }
}

/// The fixed 2-D sine-cosine code of a `side` x `side` grid of tokens, `[1, side^2, dim]`,
/// row-major: the first half of the channels codes the row, the second the column, each as
/// sines and cosines of `dim / 4` frequencies from 1 to 1/10000 radians per token (MAE's
/// code), scaled by sqrt 2 to unit mean square like the layer-normed features beside it.
fn sincos_2d(side: usize, dim: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let quarter = dim / 4;
    let mut code = Vec::with_capacity(side * side * dim);
    for row in 0..side {
        for col in 0..side {
            for pos in [row, col] {
                let angles = (0..quarter).map(|i| pos as f32 * 10000f32.powf(-(i as f32) / quarter as f32));
                let angles: Vec<f32> = angles.collect();
                code.extend(angles.iter().map(|a| a.sin() * std::f32::consts::SQRT_2));
                code.extend(angles.iter().map(|a| a.cos() * std::f32::consts::SQRT_2));
            }
        }
    }
    Tensor::from_vec(code, (1, side * side, 4 * quarter), device)?.to_dtype(dtype)
}

enum Body {
    Dit(Dit),
    Unet(Unet),
}

/// The denoiser: time and pooled-text conditioning shared by its body (DiT or U-Net), whose
/// transformer blocks also cross-attend to the text tokens; outputs a flow velocity.
pub struct Net {
    pub config: Config,
    pub text: TextEncoder,
    time1: Linear,
    time2: Linear,
    pooled: Linear,
    body: Body,
}

impl Net {
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let c = config;
        Ok(Self {
            config: c.clone(),
            text: TextEncoder::new(c, vb.pp("text"))?,
            time1: linear(c.dim, c.dim, vb.pp("time1"))?,
            time2: linear(c.dim, c.dim, vb.pp("time2"))?,
            pooled: linear(c.text_dim, c.dim, vb.pp("pooled"))?,
            body: match c.arch {
                Arch::Dit => Body::Dit(Dit::new(c, vb)?),
                Arch::Unet => Body::Unet(Unet::new(c, vb)?),
            },
        })
    }

    /// Flow velocity for images `x` `[B, C, H, W]` at flow times `t` `[B]` given text
    /// features `[B, L, text_dim]` and their mask `[B, L]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor, text: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let maskf = mask.to_dtype(text.dtype())?;
        let pooled =
            text.broadcast_mul(&maskf.unsqueeze(2)?)?.sum(1)?.broadcast_div(&maskf.sum_keepdim(1)?)?;
        let temb = self.time2.forward(&self.time1.forward(&timestep_embedding(t, c.dim)?)?.silu()?)?;
        // silu(cond) feeds every modulation; computed once.
        let cond = (temb + self.pooled.forward(&pooled)?)?.silu()?;
        let bias = key_bias(mask, text.dtype())?;
        match &self.body {
            Body::Dit(dit) => dit.forward(c, x, &cond, text, &bias),
            Body::Unet(unet) => unet.forward(c, x, &cond, text, &bias),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query code: unit mean square; tokens of one row share the row half and differ in
    /// the column half (and the reverse); every token's code is its own.
    #[test]
    fn sincos_code_separates_rows_and_columns() -> Result<()> {
        let (side, dim) = (8, 128);
        let code =
            sincos_2d(side, dim, DType::F32, &candle_core::Device::Cpu)?.squeeze(0)?.to_vec2::<f32>()?;
        let mean_square = code.iter().flatten().map(|v| v * v).sum::<f32>() / (side * side * dim) as f32;
        assert!((mean_square - 1.0).abs() < 1e-5, "mean square {mean_square}");
        let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>();
        let (row, col) = (|t: usize| t / side, |t: usize| t % side);
        for a in 0..side * side {
            for b in 0..a {
                let rows = dist(&code[a][..dim / 2], &code[b][..dim / 2]);
                let cols = dist(&code[a][dim / 2..], &code[b][dim / 2..]);
                assert_eq!(rows == 0.0, row(a) == row(b), "tokens {a}, {b}: row half");
                assert_eq!(cols == 0.0, col(a) == col(b), "tokens {a}, {b}: column half");
                assert!(rows + cols > 1.0, "tokens {a} and {b} are too alike: {}", rows + cols);
            }
        }
        Ok(())
    }
}
