//! Distilled schedule files in `generate` (`--schedule FILE`, `--scheduler distilled`), and the
//! hashes that tie a schedule to its model and calibration set.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use stride_distill::{Intended, ScheduleFile};
use stride_solvers::{NoiseSchedule, Sampler, Scheduler, Sigmas};

/// Folder, inside a model folder, of the schedules shipped with it (`SOLVER-NFE.json`).
pub const SHIPPED_DIR: &str = "schedules";

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `sha256:` and the first 16 hex digits of the SHA-256 of `dir/model.safetensors`.
pub fn model_hash(dir: &Path) -> Result<String> {
    let path = dir.join("model.safetensors");
    let mut hasher = Sha256::new();
    std::fs::File::open(&path)
        .and_then(|mut file| std::io::copy(&mut file, &mut hasher))
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(format!("sha256:{}", &format!("{:x}", hasher.finalize())[..16]))
}

/// The model a schedule is about to be used with.
pub struct Target<'a> {
    pub model_id: &'a str,
    /// Empty when unknown (the id decides then).
    pub model_hash: &'a str,
    pub solver: &'a str,
}

/// The schedule in `path` for `target`, at `steps` (log-linearly interpolated when it differs
/// from the file's NFE; `None` keeps the file's). A file made for another model or solver is
/// refused unless `force`, which turns the refusal into warnings.
pub fn load(path: &Path, target: &Target, steps: Option<usize>, force: bool) -> Result<Sigmas> {
    let file = ScheduleFile::read(path)?;
    let intended =
        Intended { model_id: target.model_id, model_hash: target.model_hash, solver: target.solver };
    for warning in file.check(&path.display().to_string(), &intended, force)? {
        eprintln!("warning: {warning} (used anyway: --force)");
    }
    match steps {
        Some(steps) if steps != file.nfe => {
            eprintln!(
                "note: {} was distilled for {} steps; interpolated log-linearly to {steps}",
                path.display(),
                file.nfe
            );
            Ok(file.sigmas_for(steps)?)
        }
        _ => Ok(file.sigmas()?),
    }
}

/// The model's shipped distilled schedule for exactly `steps` steps of `solver`, if it has
/// one; a file distilled for other weights or another solver is an error.
pub fn shipped_exact(model_dir: &Path, solver: &str, steps: usize) -> Result<Option<Sigmas>> {
    let path = model_dir.join(SHIPPED_DIR).join(format!("{solver}-{steps}.json"));
    if !path.exists() {
        return Ok(None);
    }
    let file = ScheduleFile::read(&path)?;
    let hash = model_hash(model_dir)?;
    let intended = Intended { model_id: "tiny-shapes", model_hash: &hash, solver };
    file.check(&path.display().to_string(), &intended, false)?;
    Ok(Some(file.sigmas()?))
}

/// The sigmas of a step policy's option of `steps` steps, as `train-policy` made its reward
/// table: the named hand-designed scheduler, or `distilled`: the model's distilled schedule
/// for exactly that count and solver where it has one, uniform where not.
pub fn option_sigmas(
    model_dir: &Path,
    schedule: &NoiseSchedule,
    solver: &str,
    scheduler: &str,
    steps: usize,
) -> Result<Sigmas> {
    if scheduler == "distilled" {
        if let Some(sigmas) = shipped_exact(model_dir, solver, steps)? {
            return Ok(sigmas);
        }
        return Ok(Scheduler::Uniform.sigmas(schedule, steps)?);
    }
    Ok(scheduler.parse::<Scheduler>()?.sigmas(schedule, steps)?)
}

/// The schedule file for `solver` in `dir` (`SOLVER-NFE.json`) whose NFE is closest to `steps`
/// (the exact one if there).
pub fn nearest(dir: &Path, solver: &str, steps: usize) -> Option<PathBuf> {
    let mut candidates: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?;
            let (name, nfe) = stem.rsplit_once('-')?;
            (name == solver && p.extension()? == "json").then_some((nfe.parse().ok()?, p.clone()))
        })
        .collect();
    candidates.sort_by_key(|(nfe, _)| (nfe.abs_diff(steps), *nfe));
    candidates.into_iter().next().map(|(_, path)| path)
}

/// The schedule shipped with a model (`model_dir/schedules/`) for `solver` nearest `steps`.
pub fn shipped(model_dir: &Path, solver: &str, steps: usize) -> Result<PathBuf> {
    let dir = model_dir.join(SHIPPED_DIR);
    if let Some(path) = nearest(&dir, solver, steps) {
        return Ok(path);
    }
    // Say why none exists when none can: the solver has no distilled schedule to offer.
    let sampler: Sampler = solver.parse()?;
    if let Err(e) = stride_distill::student::Student::new(sampler) {
        bail!("--scheduler distilled: {e}");
    }
    bail!(
        "--scheduler distilled: no schedule for {solver} in {} (distill one with `stride distill --model {} \
         --solver {solver}`, or pass --schedule FILE)",
        dir.display(),
        model_dir.display()
    )
}

/// Writes sigmas as a `--sigmas` list that parses back to the same values (`inf` included).
pub fn to_list(sigmas: &Sigmas) -> String {
    sigmas.as_slice().iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
}
