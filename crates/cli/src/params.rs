//! Generation parameters and their A1111-style `parameters` text, stored in every PNG so
//! images open with their settings in the tools people use, and `stride info` / `--from` can
//! read them back.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The PNG text keyword A1111, ComfyUI's readers and stable-diffusion.cpp use.
const KEYWORD: &str = "parameters";

/// Everything needed to regenerate one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub sampler: String,
    pub scheduler: String,
    /// A custom schedule (`--sigmas`), which then overrides `scheduler` and `steps`.
    pub sigmas: Option<String>,
    pub eta: Option<f64>,
    /// Tolerances of the adaptive samplers.
    pub rtol: Option<f64>,
    pub atol: Option<f64>,
    /// Model-evaluation cap of the adaptive samplers.
    pub max_nfe: Option<usize>,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model: String,
    /// The folder the weights were read from (`--weights-dir`), when not the model's default.
    pub weights: Option<String>,
    /// The compute dtype, when not f32.
    pub dtype: Option<String>,
    /// The step policy that chose `steps` (`--steps auto`).
    pub step_policy: Option<String>,
}

impl Params {
    /// `<prompt>\nNegative prompt: ...\nSteps: 20, Sampler: ..., ...` (A1111's layout; values
    /// containing commas are quoted).
    pub fn to_text(&self) -> String {
        let mut fields: Vec<(&str, String)> = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", self.sampler.clone()),
            ("Schedule type", self.scheduler.clone()),
            ("CFG scale", self.cfg_scale.to_string()),
            ("Seed", self.seed.to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
            ("Model", self.model.clone()),
        ];
        if let Some(eta) = self.eta {
            fields.push(("Eta", eta.to_string()));
        }
        if let Some(rtol) = self.rtol {
            fields.push(("RTol", rtol.to_string()));
        }
        if let Some(atol) = self.atol {
            fields.push(("ATol", atol.to_string()));
        }
        if let Some(max_nfe) = self.max_nfe {
            fields.push(("Max NFE", max_nfe.to_string()));
        }
        if let Some(sigmas) = &self.sigmas {
            fields.push(("Sigmas", sigmas.clone()));
        }
        if let Some(weights) = &self.weights {
            fields.push(("Weights", weights.clone()));
        }
        if let Some(dtype) = &self.dtype {
            fields.push(("Dtype", dtype.clone()));
        }
        if let Some(policy) = &self.step_policy {
            fields.push(("Step policy", policy.clone()));
        }
        fields.push(("RNG", "CPU".into()));
        fields.push(("Version", format!("stride {}", env!("CARGO_PKG_VERSION"))));
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            write!(text, "\nNegative prompt: {}", self.negative_prompt).expect("write to string");
        }
        let line: Vec<String> = fields
            .iter()
            .map(|(k, v)| if v.contains(',') { format!("{k}: \"{v}\"") } else { format!("{k}: {v}") })
            .collect();
        text.push('\n');
        text.push_str(&line.join(", "));
        text
    }

    /// Parses what [`Params::to_text`] writes, and A1111's own text for the fields we know
    /// (its sampler and schedule names are mapped to ours: "DPM++ 2M Karras" is dpmpp_2m with
    /// the karras schedule; its checkpoint names mean nothing here, so `generate --from` takes --model).
    pub fn from_text(text: &str) -> Result<Self> {
        let (head, fields_line) = text.rsplit_once('\n').context("no parameter line after the prompt")?;
        let (prompt, negative) = match head.split_once("\nNegative prompt: ") {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (head.to_string(), String::new()),
        };
        let fields = split_fields(fields_line)?;
        let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let need = |key: &str| get(key).with_context(|| format!("the parameters have no `{key}`"));
        let (width, height) = need("Size")?
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .context("Size must be WxH")?;
        let (sampler, implied_schedule) = sampler_name(&need("Sampler")?);
        let scheduler =
            get("Schedule type").map(|s| schedule_name(&s)).or(implied_schedule.map(String::from));
        Ok(Self {
            prompt,
            negative_prompt: negative,
            steps: need("Steps")?.parse().context("Steps")?,
            sampler,
            scheduler: scheduler.unwrap_or_else(|| "uniform".into()),
            sigmas: get("Sigmas"),
            eta: get("Eta").map(|e| e.parse()).transpose().context("Eta")?,
            rtol: get("RTol").map(|e| e.parse()).transpose().context("RTol")?,
            atol: get("ATol").map(|e| e.parse()).transpose().context("ATol")?,
            max_nfe: get("Max NFE").map(|e| e.parse()).transpose().context("Max NFE")?,
            cfg_scale: need("CFG scale")?.parse().context("CFG scale")?,
            seed: need("Seed")?.parse().context("Seed")?,
            width,
            height,
            model: get("Model").unwrap_or_else(|| "tiny-shapes".into()),
            weights: get("Weights"),
            dtype: get("Dtype"),
            step_policy: get("Step policy"),
        })
    }

    /// Reads the `parameters` text chunk of a PNG (tEXt, or iTXt / zTXt as A1111 and PIL write
    /// for text that Latin-1 cannot hold or that is compressed).
    pub fn from_png(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let decoder = png::Decoder::new(std::io::BufReader::new(file));
        let reader = decoder.read_info().with_context(|| format!("{} is not a PNG", path.display()))?;
        let info = reader.info();
        let plain =
            info.uncompressed_latin1_text.iter().find(|t| t.keyword == KEYWORD).map(|t| Ok(t.text.clone()));
        let unicode = || info.utf8_text.iter().find(|t| t.keyword == KEYWORD).map(|t| t.get_text());
        let compressed =
            || info.compressed_latin1_text.iter().find(|t| t.keyword == KEYWORD).map(|t| t.get_text());
        let text = plain
            .or_else(unicode)
            .or_else(compressed)
            .with_context(|| format!("{} has no `parameters` text chunk", path.display()))?
            .with_context(|| format!("{}: unreadable `parameters` text", path.display()))?;
        Self::from_text(&text)
    }

    /// Adds the `parameters` chunk to a PNG being written: tEXt when Latin-1 holds the text,
    /// else iTXt (UTF-8), so prompts with curly quotes, dashes or any script are kept.
    pub fn add_to_png<W: std::io::Write>(&self, encoder: &mut png::Encoder<W>) -> Result<()> {
        let text = self.to_text();
        if text.chars().all(|c| u32::from(c) <= 0xff) {
            encoder.add_text_chunk(KEYWORD.into(), text)?;
        } else {
            encoder.add_itxt_chunk(KEYWORD.into(), text)?;
        }
        Ok(())
    }
}

/// A sampler name in our spelling, and the schedule an A1111 name implies: A1111 writes
/// "DPM++ 2M" (and, before its schedule field, "DPM++ 2M Karras").
fn sampler_name(name: &str) -> (String, Option<&'static str>) {
    const A1111: [(&str, &str); 11] = [
        ("Euler a", "euler_ancestral"),
        ("Euler", "euler"),
        ("Heun", "heun"),
        ("DDIM", "ddim"),
        ("DPM++ 2M SDE", "dpmpp_2m_sde"),
        ("DPM++ 3M SDE", "dpmpp_3m_sde"),
        ("DPM++ 2M", "dpmpp_2m"),
        ("DPM++ 3M", "dpmpp_3m"),
        ("DPM++ 2S a", "dpmpp_2s_ancestral"),
        ("DPM++ 2S", "dpmpp_2s"),
        ("DPM adaptive", "dpm_adaptive"),
    ];
    let (base, schedule) = match name.strip_suffix(" Karras") {
        Some(base) => (base, Some("karras")),
        None => match name.strip_suffix(" Exponential") {
            Some(base) => (base, Some("exponential")),
            None => (name, None),
        },
    };
    match A1111.iter().find(|(a, _)| *a == base) {
        Some((_, ours)) => (ours.to_string(), schedule),
        None => (name.to_string(), None),
    }
}

/// A schedule name in our spelling (A1111 capitalises: "Karras", "Exponential", "Uniform").
fn schedule_name(name: &str) -> String {
    match name {
        "Karras" | "Exponential" | "Uniform" => name.to_lowercase(),
        other => other.to_string(),
    }
}

/// `k: v, k: "v, with commas", ...`
fn split_fields(line: &str) -> Result<Vec<(String, String)>> {
    let mut fields = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (key, after) =
            rest.split_once(": ").with_context(|| format!("malformed parameters near `{rest}`"))?;
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').context("unterminated quote in parameters")?;
            (&quoted[..end], quoted[end + 1..].trim_start_matches(',').trim_start())
        } else {
            match after.split_once(", ") {
                Some((v, n)) => (v, n),
                None => (after, ""),
            }
        };
        if key.is_empty() {
            bail!("empty key in parameters");
        }
        fields.push((key.to_string(), value.to_string()));
        rest = next;
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_round_trip() {
        let params = Params {
            prompt: "a red circle above a blue square".into(),
            negative_prompt: "a green cross".into(),
            steps: 3,
            sampler: "dpmpp_2m".into(),
            scheduler: "uniform".into(),
            sigmas: Some("14.6,7.8,3.5,0".into()),
            eta: Some(0.5),
            rtol: Some(0.01),
            atol: None,
            max_nfe: Some(200),
            cfg_scale: 3.5,
            seed: 42,
            width: 32,
            height: 32,
            model: "sd15".into(),
            weights: Some("/models/my-finetune".into()),
            dtype: Some("f16".into()),
            step_policy: Some("models/tiny-shapes/policy".into()),
        };
        let text = params.to_text();
        assert!(text.contains("Sigmas: \"14.6,7.8,3.5,0\""), "{text}");
        assert_eq!(Params::from_text(&text).unwrap(), params);
        let plain = Params {
            negative_prompt: String::new(),
            sigmas: None,
            eta: None,
            rtol: None,
            max_nfe: None,
            step_policy: None,
            weights: None,
            dtype: None,
            ..params
        };
        assert_eq!(Params::from_text(&plain.to_text()).unwrap(), plain);
    }

    /// A1111's own parameters text (the layout of its PNG infotext, values as it writes them).
    #[test]
    fn a1111_names_are_read_as_ours() {
        let text = "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, \
                    Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly";
        let p = Params::from_text(text).unwrap();
        assert_eq!((p.sampler.as_str(), p.scheduler.as_str()), ("dpmpp_2m", "karras"));
        let text = "a cat\nSteps: 20, Sampler: Euler a, Schedule type: Exponential, CFG scale: 7, \
                    Seed: 1, Size: 512x512";
        let p = Params::from_text(text).unwrap();
        assert_eq!((p.sampler.as_str(), p.scheduler.as_str()), ("euler_ancestral", "exponential"));
    }
}
