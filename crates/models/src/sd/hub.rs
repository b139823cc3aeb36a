//! Where Stable Diffusion files come from: a local diffusers folder, the Hugging Face cache,
//! or the Hub itself (hf-hub's blocking client).
//!
//! The cache is read first (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`: the layout the Python `huggingface_hub` writes), so a model
//! downloaded once, by stride or by Python, never touches the network again.
//! `HF_HUB_OFFLINE=1` stops before any request; `HF_ENDPOINT` and `HF_TOKEN` are honoured.

use std::path::{Path, PathBuf};

use super::SdError;

/// How files are fetched from the Hugging Face Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// The hub cache (`.../huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Never make a request: only the cache answers (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// `HF_ENDPOINT`, when set.
    pub endpoint: Option<String>,
}

impl Hub {
    /// The settings the environment gives (`HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE`,
    /// `HF_ENDPOINT`).
    pub fn from_env() -> Self {
        let cache_dir = std::env::var_os("HF_HUB_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_hub::Cache::from_env().path().clone());
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| truthy(&v));
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|v| !v.is_empty());
        Self { cache_dir, offline, endpoint }
    }

    /// An offline hub over `cache_dir` (tests, air-gapped machines).
    pub fn offline(cache_dir: impl Into<PathBuf>) -> Self {
        Self { cache_dir: cache_dir.into(), offline: true, endpoint: None }
    }

    /// The local path of `file` in model repository `repo`: from the cache, else downloaded
    /// into it (unless offline).
    pub fn get(&self, repo: &str, file: &str) -> Result<PathBuf, SdError> {
        let cache = hf_hub::Cache::new(self.cache_dir.clone());
        if let Some(path) = cache.model(repo.to_string()).get(file) {
            return Ok(path);
        }
        if self.offline {
            return Err(SdError::Offline {
                repo: repo.to_string(),
                file: file.to_string(),
                cache: self.cache_dir.clone(),
            });
        }
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| cache.token());
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(cache).with_token(token).with_progress(true);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let download_err =
            |reason: String| SdError::Download { repo: repo.to_string(), file: file.to_string(), reason };
        let api = builder.build().map_err(|e| download_err(e.to_string()))?;
        api.model(repo.to_string()).get(file).map_err(|e| download_err(e.to_string()))
    }
}

/// Python's reading of boolean environment variables (`1`, `true`, `yes`, `on`).
fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on" | "y" | "t")
}

/// The files of one model: a local diffusers folder when given, else its Hub repository.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The Hub repository the files belong to (also named by errors about a local folder).
    pub repo: &'a str,
    pub dir: Option<&'a Path>,
    pub hub: &'a Hub,
}

impl Source<'_> {
    /// `file` (a path inside the repository, such as `unet/config.json`).
    pub fn get(&self, file: &str) -> Result<PathBuf, SdError> {
        match self.dir {
            Some(dir) => {
                let path = dir.join(file);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(SdError::MissingFile { path, repo: self.repo.to_string(), file: file.to_string() })
                }
            }
            None => self.hub.get(self.repo, file),
        }
    }

    /// The first of `files` that exists locally or in the cache, else the first one fetched
    /// from the Hub (so an error names the preferred file).
    pub fn first_of(&self, files: &[String]) -> Result<PathBuf, SdError> {
        let local_or_cached = |file: &str| match self.dir {
            Some(dir) => Some(dir.join(file)).filter(|p| p.is_file()),
            None => hf_hub::Cache::new(self.hub.cache_dir.clone()).model(self.repo.to_string()).get(file),
        };
        if let Some(path) = files.iter().find_map(|f| local_or_cached(f)) {
            return Ok(path);
        }
        match files.first() {
            Some(file) => self.get(file),
            None => Err(SdError::Config("no file to look for".into())),
        }
    }
}
