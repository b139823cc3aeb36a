//! Generation parameters and their A1111-style `parameters` text, stored in every PNG so
//! images open with their settings in the tools people use, and `stride info` / `--from` can
//! read them back.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

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
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model: String,
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
        if let Some(sigmas) = &self.sigmas {
            fields.push(("Sigmas", sigmas.clone()));
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

    /// Parses what [`Params::to_text`] writes (and A1111's own text, for the fields we know).
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
        Ok(Self {
            prompt,
            negative_prompt: negative,
            steps: need("Steps")?.parse().context("Steps")?,
            sampler: need("Sampler")?,
            scheduler: get("Schedule type").unwrap_or_else(|| "uniform".into()),
            sigmas: get("Sigmas"),
            eta: get("Eta").map(|e| e.parse()).transpose().context("Eta")?,
            rtol: get("RTol").map(|e| e.parse()).transpose().context("RTol")?,
            atol: get("ATol").map(|e| e.parse()).transpose().context("ATol")?,
            cfg_scale: need("CFG scale")?.parse().context("CFG scale")?,
            seed: need("Seed")?.parse().context("Seed")?,
            width,
            height,
            model: get("Model").unwrap_or_else(|| "tiny-shapes".into()),
            step_policy: get("Step policy"),
        })
    }

    /// Reads the `parameters` text chunk of a PNG.
    pub fn from_png(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let decoder = png::Decoder::new(std::io::BufReader::new(file));
        let reader = decoder.read_info().with_context(|| format!("{} is not a PNG", path.display()))?;
        let text = reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .find(|t| t.keyword == "parameters")
            .map(|t| t.text.clone())
            .with_context(|| format!("{} has no `parameters` text chunk", path.display()))?;
        Self::from_text(&text)
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
            cfg_scale: 3.5,
            seed: 42,
            width: 32,
            height: 32,
            model: "tiny-shapes".into(),
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
            step_policy: None,
            ..params
        };
        assert_eq!(Params::from_text(&plain.to_text()).unwrap(), plain);
    }
}
