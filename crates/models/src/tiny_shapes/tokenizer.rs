//! The word-level tokenizer of tiny-shapes, built with the `tokenizers` crate from the shapes
//! world's vocabulary and saved as `tokenizer.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::{Lowercase, Replace, Sequence};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

use super::ModelError;

pub const PAD: u32 = 0;
pub const UNK: u32 = 1;
pub const BOS: u32 = 2;

/// Builds the tokenizer: `[PAD]`, `[UNK]`, `[BOS]`, then the vocabulary; lower-cases, drops
/// commas and full stops, splits on whitespace, prepends `[BOS]` (so the empty prompt, used
/// for classifier-free guidance, is the one token `[BOS]`).
pub fn build(vocabulary: &[&str]) -> Result<Tokenizer, ModelError> {
    let mut vocab: HashMap<String, u32> =
        [("[PAD]", PAD), ("[UNK]", UNK), ("[BOS]", BOS)].iter().map(|(w, i)| (w.to_string(), *i)).collect();
    for (i, word) in vocabulary.iter().enumerate() {
        vocab.insert(word.to_string(), i as u32 + 3);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .map_err(ModelError::tokenizer)?;
    let mut tokenizer = Tokenizer::new(model);
    let normalizer = Sequence::new(vec![
        Lowercase.into(),
        Replace::new(",", " ").map_err(ModelError::tokenizer)?.into(),
        Replace::new(".", " ").map_err(ModelError::tokenizer)?.into(),
    ]);
    tokenizer.with_normalizer(Some(normalizer));
    tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
    let template = TemplateProcessing::builder()
        .try_single("[BOS] $A")
        .map_err(ModelError::tokenizer)?
        .special_tokens(vec![("[BOS]", BOS)])
        .build()
        .map_err(ModelError::tokenizer)?;
    tokenizer.with_post_processor(Some(template));
    Ok(tokenizer)
}

/// Loads `tokenizer.json`.
pub fn load(path: &Path) -> Result<Tokenizer, ModelError> {
    Tokenizer::from_file(path)
        .map_err(|e| ModelError::File { path: path.to_path_buf(), reason: e.to_string() })
}

/// Token ids of a prompt, `[BOS]` first; the empty string gives `[BOS]` alone.
pub fn encode(tokenizer: &Tokenizer, text: &str, max_tokens: usize) -> Result<Vec<u32>, ModelError> {
    let ids = tokenizer.encode(text, true).map_err(ModelError::tokenizer)?.get_ids().to_vec();
    if ids.len() > max_tokens {
        return Err(ModelError::Prompt(format!(
            "the prompt has {} words; this model reads at most {}",
            ids.len() - 1,
            max_tokens.saturating_sub(1)
        )));
    }
    Ok(ids)
}

/// The words of `text` the tokenizer does not know (each read as `[UNK]`), as written.
pub fn unknown_words(tokenizer: &Tokenizer, text: &str) -> Result<Vec<String>, ModelError> {
    let encoding = tokenizer.encode(text, false).map_err(ModelError::tokenizer)?;
    // Offsets point into the text as given (the normalizer only lower-cases and blanks
    // punctuation, so they line up with it).
    Ok(encoding
        .get_ids()
        .iter()
        .zip(encoding.get_offsets())
        .filter(|(&id, _)| id == UNK)
        .filter_map(|(_, &(start, end))| text.get(start..end).map(str::to_string))
        .collect())
}

/// Token ids `[B, L]` (padded with `[PAD]` to the longest prompt) and mask `[B, L]`
/// (1 = token) of a batch of prompts.
pub fn encode_batch<S: AsRef<str>>(
    tokenizer: &Tokenizer,
    prompts: &[S],
    max_tokens: usize,
    device: &Device,
) -> Result<(Tensor, Tensor), ModelError> {
    let encoded =
        prompts.iter().map(|p| encode(tokenizer, p.as_ref(), max_tokens)).collect::<Result<Vec<_>, _>>()?;
    let len = encoded.iter().map(Vec::len).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(prompts.len() * len);
    let mut mask = Vec::with_capacity(prompts.len() * len);
    for e in &encoded {
        ids.extend(e.iter().copied().chain(std::iter::repeat(PAD)).take(len));
        mask.extend((0..len).map(|i| u8::from(i < e.len())));
    }
    let shape = (prompts.len(), len);
    Ok((Tensor::from_vec(ids, shape, device)?, Tensor::from_vec(mask, shape, device)?))
}
