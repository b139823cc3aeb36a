//! Prompt encoding: the CLIP tokenizer and candle-transformers' CLIP text transformer.
//!
//! SD 1.x / 2.x read the last hidden state (after the final layer norm). SDXL reads the
//! penultimate hidden state of both encoders (diffusers' `hidden_states[-2]`), concatenated,
//! plus the pooled embedding of the second: the final-norm state at the end-of-text token
//! through `text_projection`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn as nn;
use candle_transformers::models::stable_diffusion::clip;
use tokenizers::Tokenizer;

use super::SdError;

/// Which hidden state the UNet reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// After the final layer norm (SD 1.x / 2.x).
    Last,
    /// The output of the second-to-last layer, no final norm (SDXL).
    Penultimate,
}

/// CLIP's tokenizer from the `vocab.json` and `merges.txt` a diffusers folder ships in
/// `tokenizer/` (Stable Diffusion repositories have no `tokenizer.json`), built as
/// transformers' `CLIPTokenizer` builds it: NFC, whitespace runs to one space, lower case;
/// split into special tokens, contractions, letter runs, single digits and punctuation runs;
/// byte-level BPE with `</w>` closing each word; `<|startoftext|> ... <|endoftext|>` around.
pub fn clip_tokenizer_from_bpe(
    vocab: &std::path::Path,
    merges: &std::path::Path,
) -> std::result::Result<Tokenizer, SdError> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::processors::roberta::RobertaProcessing;
    use tokenizers::{AddedToken, Model, SplitDelimiterBehavior};

    const WORDS: &str =
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
    let err = |e: tokenizers::Error| SdError::Tokenizer(e.to_string());
    let (bos, eos) = ("<|startoftext|>", "<|endoftext|>");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let model = BPE::from_file(&path(vocab), &path(merges))
        .unk_token(eos.into())
        .end_of_word_suffix("</w>".into())
        .build()
        .map_err(|e| SdError::File {
            path: vocab.to_path_buf(),
            reason: format!("with {}: {e}", merges.display()),
        })?;
    let id = |t: &str| {
        model.token_to_id(t).ok_or_else(|| SdError::File {
            path: vocab.to_path_buf(),
            reason: format!("no {t} token: not a CLIP vocabulary"),
        })
    };
    let (bos_id, eos_id) = (id(bos)?, id(eos)?);
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(Normalizers::new(vec![
        NFC.into(),
        Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(err)?
            .into(),
        Lowercase.into(),
    ])));
    tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
        Split::new(SplitPattern::Regex(WORDS.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(err)?
            .into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((eos.into(), eos_id), (bos.into(), bos_id))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    tokenizer.add_special_tokens(&[AddedToken::from(bos, true), AddedToken::from(eos, true)]);
    Ok(tokenizer)
}

/// The CLIP token ids a prompt becomes: `<|startoftext|> ... <|endoftext|>`, truncated to
/// the context length (the end token kept) and padded.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    pub tokenizer: Tokenizer,
    pub max_len: usize,
    pub eos: u32,
    pub pad: u32,
}

impl ClipTokenizer {
    /// `pad_with`: the padding token (`None`: the end-of-text token, as SD 1.x's tokenizer).
    pub fn new(tokenizer: Tokenizer, max_len: usize, pad_with: Option<&str>) -> Result<Self> {
        if max_len < 2 {
            candle_core::bail!(
                "a CLIP tokenizer needs max_len of at least 2 (start and end tokens), got {max_len}"
            );
        }
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| candle_core::Error::Msg(format!("the tokenizer has no {t:?} token")))
        };
        let eos = id("<|endoftext|>")?;
        let pad = match pad_with {
            Some(p) => id(p)?,
            None => eos,
        };
        Ok(Self { tokenizer, max_len, eos, pad })
    }

    /// How many of `prompt`'s tokens do not fit the context and are dropped (diffusers warns
    /// the same way; A1111 and ComfyUI encode long prompts in chunks, stride does not).
    pub fn dropped_tokens(&self, prompt: &str) -> std::result::Result<usize, SdError> {
        let len = self.tokenizer.encode(prompt, true).map_err(|e| SdError::Tokenizer(e.to_string()))?.len();
        Ok(len.saturating_sub(self.max_len))
    }

    /// Token ids `[B, max_len]` (u32) of `prompts`.
    pub fn encode(&self, prompts: &[&str], device: &Device) -> std::result::Result<Tensor, SdError> {
        let mut all = Vec::with_capacity(prompts.len() * self.max_len);
        for prompt in prompts {
            let mut ids = self
                .tokenizer
                .encode(*prompt, true)
                .map_err(|e| SdError::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec();
            if ids.len() > self.max_len {
                // As the reference tokenizer with truncation: keep the end token.
                ids.truncate(self.max_len - 1);
                ids.push(self.eos);
            }
            ids.resize(self.max_len, self.pad);
            all.extend(ids);
        }
        Ok(Tensor::from_vec(all, (prompts.len(), self.max_len), device)?)
    }
}

/// One CLIP text encoder with its tokenizer.
pub struct ClipEncoder {
    pub model: clip::ClipTextTransformer,
    pub tokenizer: Option<ClipTokenizer>,
    /// SDXL's second encoder: `text_projection` for the pooled embedding.
    pub projection: Option<nn::Linear>,
    pub layer: Layer,
}

impl ClipEncoder {
    /// Builds the encoder from diffusers weight names (`text_model.*`, `text_projection`).
    pub fn new(
        vb: nn::VarBuilder,
        config: &clip::Config,
        layer: Layer,
        projection_dim: Option<usize>,
    ) -> Result<Self> {
        let model = clip::ClipTextTransformer::new(vb.clone(), config)?;
        let projection = match projection_dim {
            Some(d) => Some(nn::linear_no_bias(d, d, vb.pp("text_projection"))?),
            None => None,
        };
        Ok(Self { model, tokenizer: None, projection, layer })
    }

    /// Hidden states `[B, L, D]` of token ids `[B, L]`, and the pooled projection `[B, P]`
    /// when the encoder has one (the final-norm state at each row's end token, which has the
    /// largest id, as transformers' `argmax`).
    pub fn encode_ids(&self, ids: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        // candle's CLIP attention adds a `[B, L, L]` mask to `[B, heads, L, L]` scores, which
        // only broadcasts for B = 1: encode one prompt at a time.
        let mut hidden = Vec::new();
        let mut pooled = Vec::new();
        for b in 0..ids.dim(0)? {
            let row = ids.narrow(0, b, 1)?;
            let (h, p) = self.encode_row(&row)?;
            hidden.push(h);
            pooled.extend(p);
        }
        let pooled = if pooled.is_empty() { None } else { Some(Tensor::cat(&pooled, 0)?) };
        Ok((Tensor::cat(&hidden, 0)?, pooled))
    }

    /// [`Self::encode_ids`] for one row `[1, L]`.
    fn encode_row(&self, ids: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (last, penultimate) = match self.layer {
            Layer::Last => (self.model.forward(ids)?, None),
            Layer::Penultimate => {
                let (last, mid) = self.model.forward_until_encoder_layer(ids, usize::MAX, -2)?;
                (last, Some(mid))
            }
        };
        let pooled = match &self.projection {
            None => None,
            Some(proj) => {
                let row = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
                // The first end token (the largest id; torch's argmax returns the first maximum).
                let max = row.iter().copied().max().unwrap_or(0);
                let eos = row.iter().position(|&id| id == max).unwrap_or(0);
                Some(proj.forward(&last.narrow(1, eos, 1)?.squeeze(1)?)?)
            }
        };
        Ok((penultimate.unwrap_or(last), pooled))
    }

    /// Tokenizes and encodes `prompts`.
    pub fn encode(
        &self,
        prompts: &[&str],
        device: &Device,
    ) -> std::result::Result<(Tensor, Option<Tensor>), SdError> {
        let tokenizer =
            self.tokenizer.as_ref().ok_or_else(|| SdError::Tokenizer("no tokenizer loaded".into()))?;
        let ids = tokenizer.encode(prompts, device)?;
        Ok(self.encode_ids(&ids)?)
    }
}
