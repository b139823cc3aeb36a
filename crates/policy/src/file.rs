//! A trained policy on disk: `policy.safetensors` (the weights) and `policy.json` (what it
//! reads, the options it chooses among, the model and solver it was trained for, the reward
//! and training settings, and its held-out results).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::net::{PolicyConfig, PolicyNet};
use crate::reward::Reward;
use crate::train::TrainSettings;

pub const WEIGHTS: &str = "policy.safetensors";
pub const SIDECAR: &str = "policy.json";
/// The folder, inside a model folder, of the model's step policy (`--steps auto`).
pub const MODEL_POLICY_DIR: &str = "policy";

/// Why a policy could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "the policy in {dir} was trained for model {trained_for}, not {model}: train one for this \
         model with `stride train-policy`, or pass --force"
    )]
    WrongModel { dir: PathBuf, trained_for: String, model: String },
}

/// `policy.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The network's shape, and the step counts it chooses among (ascending).
    pub config: PolicyConfig,
    /// What the network reads, e.g. "tiny-shapes text encoder: per-token outputs and mask".
    pub features: String,
    /// The model it was trained for (`sha256:` prefix of its weights' hash).
    pub model_hash: String,
    /// The solver and schedule the reward table was generated with.
    pub sampler: String,
    pub scheduler: String,
    pub cfg_scale: f64,
    pub reward: Reward,
    /// Weight of the fidelity term in an option's quality: pass rate + fidelity * PSNR / 40 dB.
    pub fidelity: f64,
    pub training: TrainSettings,
    /// Training prompts and seeds per prompt of the reward table.
    pub prompts: usize,
    pub seeds: usize,
    /// Results on held-out prompts, as measured by `stride eval policy` (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<serde_json::Value>,
    /// SHA-256 of `policy.safetensors` (set by [`Policy::save`]): the two files are renamed
    /// into place one after the other, and a kill between the renames must not pair new
    /// weights with an old sidecar.
    #[serde(default)]
    pub weights_sha256: String,
}

/// A loaded policy.
pub struct Policy {
    pub net: PolicyNet,
    pub sidecar: Sidecar,
}

impl Policy {
    /// Saves `net`'s weights (from `varmap`) and `sidecar` (with the weights' hash) under
    /// `dir`, each written to a temporary file and renamed. A kill between the two renames
    /// leaves files whose hashes disagree, which [`Policy::load`] refuses.
    pub fn save(dir: &Path, varmap: &VarMap, sidecar: &Sidecar) -> Result<(), PolicyError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, &e))?;
        let weights = dir.join(WEIGHTS);
        let tmp = dir.join(format!("{WEIGHTS}.tmp"));
        varmap.save(&tmp).map_err(|e| file_err(&tmp, &e))?;
        let bytes = std::fs::read(&tmp).map_err(|e| file_err(&tmp, &e))?;
        let sidecar = Sidecar { weights_sha256: sha256_hex(&bytes), ..sidecar.clone() };
        let sidecar_tmp = write_sidecar_tmp(dir, &sidecar)?;
        std::fs::rename(&tmp, &weights).map_err(|e| file_err(&weights, &e))?;
        let path = dir.join(SIDECAR);
        std::fs::rename(&sidecar_tmp, &path).map_err(|e| file_err(&path, &e))
    }

    /// Replaces the sidecar of the policy under `dir` (its weights unchanged), atomically.
    pub fn write_sidecar(dir: &Path, sidecar: &Sidecar) -> Result<(), PolicyError> {
        let tmp = write_sidecar_tmp(dir, sidecar)?;
        let path = dir.join(SIDECAR);
        std::fs::rename(&tmp, &path).map_err(|e| file_err(&path, &e))
    }

    /// Loads the policy under `dir`, checking that the sidecar is consistent and the weights
    /// fit it.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, PolicyError> {
        let path = dir.join(SIDECAR);
        let text = std::fs::read_to_string(&path).map_err(|e| PolicyError::File {
            path: path.clone(),
            reason: format!("{e} (train a policy with `stride train-policy`)"),
        })?;
        let invalid = |reason: String| PolicyError::Invalid { path: path.clone(), reason };
        let sidecar: Sidecar = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        sidecar.config.validate().map_err(invalid)?;
        let weights = dir.join(WEIGHTS);
        let bytes = std::fs::read(&weights).map_err(|e| file_err(&weights, &e))?;
        if sha256_hex(&bytes) != sidecar.weights_sha256 {
            return Err(PolicyError::Invalid {
                path: weights,
                reason: format!(
                    "not the weights {SIDECAR} was saved with (its sha256 differs: corrupt, replaced, \
                     or a save was interrupted); train the policy again with `stride train-policy`"
                ),
            });
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
            PolicyError::File { path: weights.clone(), reason: format!("cannot read the weights ({e})") }
        })?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let net = PolicyNet::new(&sidecar.config, vb).map_err(|e| PolicyError::Invalid {
            path: weights.clone(),
            reason: format!("the weights do not fit {SIDECAR} ({e})"),
        })?;
        Ok(Self { net, sidecar })
    }

    /// Refuses a policy trained for another model.
    pub fn check_model(&self, dir: &Path, model_hash: &str) -> Result<(), PolicyError> {
        if self.sidecar.model_hash == model_hash {
            return Ok(());
        }
        Err(PolicyError::WrongModel {
            dir: dir.to_path_buf(),
            trained_for: self.sidecar.model_hash.clone(),
            model: model_hash.to_string(),
        })
    }
}

fn file_err(path: &Path, e: &dyn std::fmt::Display) -> PolicyError {
    PolicyError::File { path: path.to_path_buf(), reason: e.to_string() }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// `dir/policy.json.tmp` holding `sidecar`.
fn write_sidecar_tmp(dir: &Path, sidecar: &Sidecar) -> Result<PathBuf, PolicyError> {
    let json = serde_json::to_string_pretty(sidecar).expect("serialisable") + "\n";
    let tmp = dir.join(format!("{SIDECAR}.tmp"));
    std::fs::write(&tmp, json).map_err(|e| file_err(&tmp, &e))?;
    Ok(tmp)
}
