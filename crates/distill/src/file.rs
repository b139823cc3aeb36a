//! The schedule file (JSON): a distilled schedule with everything needed to trust it, and
//! the checks that keep it from being used with a model or solver it was not made for.
//!
//! JSON has no infinity, so a leading `+inf` sigma (pure noise, flow models) is written as the
//! string `"inf"`; every other sigma is a plain number.

use std::path::Path;

use serde::{Deserialize, Serialize};
use stride_solvers::{Parameterization, SamplerKind, Sigmas};

use crate::aggregate::{interpolate, Aggregate};
use crate::error::DistillError;
use crate::search::{Config, SampleSchedule};

/// The `format` every file carries.
pub const FORMAT: &str = "stride-schedule/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleFile {
    pub format: String,
    pub stride_version: String,
    pub model: ModelInfo,
    /// The solver the schedule was distilled for (community name, e.g. `dpmpp_2m`).
    pub solver: String,
    pub nfe: usize,
    #[serde(with = "sigma_list")]
    pub sigmas: Vec<f64>,
    pub teacher: TeacherInfo,
    pub search: SearchInfo,
    pub calibration: CalibrationInfo,
    pub costs: Costs,
    /// What the distillation spent, when the job measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<Compute>,
    pub per_sample: Vec<SampleRecord>,
}

/// The distillation's own cost, per calibration sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    /// Denoiser evaluations (one sample at one noise level; guidance's two passes count once).
    pub model_evaluations: f64,
    pub seconds: f64,
    /// Where it ran (e.g. `cpu`).
    pub device: String,
    /// The NFEs whose schedules one search produced together (the cost above is theirs, once).
    #[serde(default)]
    pub shared_by: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub hash: String,
    /// `epsilon`, `x0`, `v` or `flow_velocity`.
    pub parameterization: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherInfo {
    pub solver: String,
    pub steps: usize,
    /// How the teacher grid was spaced (`uniform`, `exponential`, ...).
    pub grid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchInfo {
    /// `oss` or `exact`.
    pub method: String,
    /// `x0` or `xt`.
    pub distance: String,
    /// `median` or `mean`.
    pub aggregate: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationInfo {
    /// Hash of the calibration prompts (and seeds), as the caller computes it.
    pub hash: String,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// Mean of the per-sample search costs.
    pub per_sample_mean: f64,
    /// Mean squared distance to the teacher of the aggregate schedule's result over the
    /// calibration samples, when measured.
    pub aggregate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    #[serde(with = "sigma_list")]
    pub sigmas: Vec<f64>,
    pub cost: f64,
}

/// What the caller knows about the model and calibration set.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub model_id: String,
    pub model_hash: String,
    pub parameterization: Parameterization,
    pub calibration_hash: String,
}

/// What a schedule is about to be used with.
#[derive(Debug, Clone, Copy)]
pub struct Intended<'a> {
    pub model_id: &'a str,
    /// Empty when unknown: the id decides then.
    pub model_hash: &'a str,
    pub solver: &'a str,
}

/// The file's name for a parameterization.
pub fn parameterization_name(p: Parameterization) -> &'static str {
    match p {
        Parameterization::Epsilon => "epsilon",
        Parameterization::X0 => "x0",
        Parameterization::V => "v",
        Parameterization::FlowVelocity => "flow_velocity",
    }
}

impl ScheduleFile {
    /// The file for the per-sample schedules `samples` (searched with `config`), aggregated
    /// `how`; `aggregate_cost` is the aggregate schedule's measured fidelity
    /// ([`crate::fidelity`]), if any.
    pub fn new(
        samples: &[SampleSchedule],
        config: &Config,
        provenance: &Provenance,
        how: Aggregate,
        aggregate_cost: Option<f64>,
    ) -> Result<Self, DistillError> {
        let per_sample: Vec<Vec<f64>> = samples.iter().map(|s| s.sigmas.clone()).collect();
        let sigmas = crate::aggregate::aggregate(&per_sample, how)?;
        let count = samples.len();
        let file = Self {
            format: FORMAT.into(),
            stride_version: env!("CARGO_PKG_VERSION").into(),
            model: ModelInfo {
                id: provenance.model_id.clone(),
                hash: provenance.model_hash.clone(),
                parameterization: parameterization_name(provenance.parameterization).into(),
            },
            solver: config.student.kind.name().into(),
            nfe: sigmas.steps(),
            sigmas: sigmas.as_slice().to_vec(),
            teacher: TeacherInfo {
                solver: config.teacher.kind.name().into(),
                steps: config.grid.steps(),
                grid: config.grid_name.clone(),
            },
            search: SearchInfo {
                method: config.method.name().into(),
                distance: config.distance.name().into(),
                aggregate: how.name().into(),
            },
            calibration: CalibrationInfo { hash: provenance.calibration_hash.clone(), count },
            costs: Costs {
                per_sample_mean: samples.iter().map(|s| s.cost).sum::<f64>() / count as f64,
                aggregate: aggregate_cost,
            },
            compute: None,
            per_sample: samples
                .iter()
                .map(|s| SampleRecord { sigmas: s.sigmas.clone(), cost: s.cost })
                .collect(),
        };
        file.validate("(new)")?;
        Ok(file)
    }

    /// Parses and validates a file's text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, DistillError> {
        let file: Self = serde_json::from_str(text).map_err(|e| {
            let hint = if text.contains("NaN") || text.contains("Infinity") {
                "; NaN and Infinity are not JSON numbers (a leading infinite sigma is written \"inf\")"
            } else {
                ""
            };
            DistillError::File { origin: origin.into(), message: format!("not a valid schedule: {e}{hint}") }
        })?;
        file.validate(origin)?;
        Ok(file)
    }

    /// Reads and validates a schedule file.
    pub fn read(path: &Path) -> Result<Self, DistillError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| DistillError::File {
            origin: origin.clone(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::from_json(&text, &origin)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a schedule file always serializes")
    }

    /// Writes the file atomically (a temporary file beside it, then a rename).
    pub fn write(&self, path: &Path) -> Result<(), DistillError> {
        let origin = path.display().to_string();
        let failed = |e: std::io::Error| DistillError::File {
            origin: origin.clone(),
            message: format!("cannot write it: {e}"),
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, self.to_json() + "\n").map_err(failed)?;
        std::fs::rename(&tmp, path).map_err(failed)
    }

    /// Checks what can be checked without a model: the format, the schedule's and each
    /// sample's sigmas, `nfe` against the schedule and the teacher's steps, the solver's name.
    pub fn validate(&self, origin: &str) -> Result<(), DistillError> {
        let fail = |message: String| Err(DistillError::File { origin: origin.into(), message });
        if self.format != FORMAT {
            return fail(format!("format is `{}`, expected `{FORMAT}`", self.format));
        }
        let sigmas = match Sigmas::new(self.sigmas.clone()) {
            Ok(s) => s,
            Err(e) => return fail(format!("sigmas: {e}")),
        };
        if self.nfe != sigmas.steps() {
            return fail(format!("nfe is {}, but its sigmas make {} steps", self.nfe, sigmas.steps()));
        }
        if let Err(e) = self.solver.parse::<SamplerKind>() {
            return fail(format!("solver: {e}"));
        }
        if self.teacher.steps < sigmas.steps() {
            return fail(format!(
                "teacher has {} steps, fewer than the schedule's {}",
                self.teacher.steps,
                sigmas.steps()
            ));
        }
        for (i, sample) in self.per_sample.iter().enumerate() {
            if let Err(e) = Sigmas::new(sample.sigmas.clone()) {
                return fail(format!("per-sample schedule {i}: {e}"));
            }
        }
        Ok(())
    }

    /// The schedule, validated.
    pub fn sigmas(&self) -> Result<Sigmas, DistillError> {
        Ok(Sigmas::new(self.sigmas.clone())?)
    }

    /// The schedule at another step count, log-linearly interpolated.
    pub fn sigmas_for(&self, steps: usize) -> Result<Sigmas, DistillError> {
        interpolate(&self.sigmas()?, steps)
    }

    /// Refuses a file distilled for another model or solver, unless `force`: then the
    /// mismatches come back for the caller to warn about.
    pub fn check(&self, origin: &str, intended: &Intended, force: bool) -> Result<Vec<String>, DistillError> {
        let mut mismatches = Vec::new();
        let by_hash = !self.model.hash.is_empty() && !intended.model_hash.is_empty();
        let same_model =
            if by_hash { self.model.hash == intended.model_hash } else { self.model.id == intended.model_id };
        if !same_model {
            mismatches.push(format!(
                "was distilled for model `{}` (hash {}), not for `{}` (hash {})",
                self.model.id,
                or_unknown(&self.model.hash),
                intended.model_id,
                or_unknown(intended.model_hash)
            ));
        }
        if self.solver != intended.solver {
            mismatches
                .push(format!("was distilled for solver `{}`, not for `{}`", self.solver, intended.solver));
        }
        if mismatches.is_empty() || force {
            Ok(mismatches)
        } else {
            Err(DistillError::Mismatch { origin: origin.into(), mismatches })
        }
    }
}

fn or_unknown(hash: &str) -> &str {
    if hash.is_empty() {
        "unknown"
    } else {
        hash
    }
}

/// Sigma lists with a leading `+inf` written as `"inf"`; anything else that is not a number
/// is refused with its position.
mod sigma_list {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(sigmas: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let values: Vec<Value> = sigmas
            .iter()
            .map(|&v| if v == f64::INFINITY { Value::from("inf") } else { Value::from(v) })
            .collect();
        values.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let values = Vec::<Value>::deserialize(d)?;
        values
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Number(n) => {
                    n.as_f64().ok_or_else(|| D::Error::custom(format!("sigma #{i} ({n}) is out of range")))
                }
                Value::String(s) if s == "inf" => Ok(f64::INFINITY),
                other => Err(D::Error::custom(format!(
                    "sigma #{i} is {other}: sigmas must be numbers (only the first may be \"inf\")"
                ))),
            })
            .collect()
    }
}
