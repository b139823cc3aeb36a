//! `stride distill`: optimal step schedules for a model and solver, as a resumable, shardable
//! job, and `stride distill merge` to combine the shards.
//!
//! The unit of work is a block of `--batch` calibration samples: each block's per-sample
//! schedules for every (solver, NFE) are appended to `OUT/work/records-I-of-N.jsonl` when the
//! block is done, so a killed job loses at most the block in flight, and a block's result
//! never depends on which shard or run computed it (the same rows share the same model calls).
//! `OUT/work/job.json` pins the settings that determine the results; resuming or merging with
//! other settings is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use stride_distill::file::parameterization_name;
use stride_distill::{
    distill_counts, teacher, Aggregate, Compute, Config, Distance, Method, Progress, Provenance, RowDenoiser,
    SampleSchedule, ScheduleFile, Student,
};
use stride_models::{StableDiffusion, TinyShapes, Variant};
use stride_shapes::World;
use stride_solvers::{
    Denoiser, NoiseSchedule, NoiseSource, Parameterization, Sampler, SamplerKind, Sigmas, TorchNoise,
};

use crate::schedules::model_hash;
use crate::work::{RunArgs, Shard, WorkDir};

#[derive(clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  stride distill --samples 16                           # the shipped tiny-shapes schedules
  stride distill --solver dpmpp_2m --nfe 5,10 --samples 16 --teacher-steps 100 --out my-schedules
  stride distill --samples 16 --solver euler --method exact   # the cheap mode (shipped in schedules/exact)
  stride distill --shard 3/8 --out runs/oss   # one of 8 machines; the last to finish merges
  stride distill --model sd15 --prompts prompts.txt --solver dpmpp_2m --nfe 10 --device cuda --out sd15-oss

A killed job resumes where it stopped when run again with the same settings and --out; Ctrl-C
stops it after the block in flight, so nothing is lost."
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<DistillCommand>,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(clap::Subcommand)]
enum DistillCommand {
    /// Combine the records of every shard of a job and write its schedule files.
    Merge {
        /// The job's output folder, holding work/job.json and work/records-*.jsonl (default:
        /// --model's schedules/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The tiny-shapes model whose default job folder to merge (tiny-shapes or a folder).
        #[arg(long, default_value = "tiny-shapes")]
        model: String,
    },
}

#[derive(clap::Args)]
struct JobArgs {
    /// tiny-shapes (bundled), a tiny-shapes folder, sd15, sd21, sdxl, sd-turbo, sdxl-turbo
    /// (Hugging Face cache or Hub) or a diffusers Stable Diffusion folder.
    #[arg(long, default_value = "tiny-shapes")]
    model: String,
    /// Folder with a Stable Diffusion model's files (instead of the Hugging Face cache or Hub).
    #[arg(long)]
    weights_dir: Option<PathBuf>,
    /// Stable Diffusion image width (default: the model's).
    #[arg(long)]
    width: Option<usize>,
    /// Stable Diffusion image height (default: the model's).
    #[arg(long)]
    height: Option<usize>,
    /// Calibration prompts, one a line (sample i uses line i mod count). Default for
    /// tiny-shapes: training-distribution prompts of the shapes world (seed 1, never held-out).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Calibration samples; sample i starts from seed `seed + i`.
    #[arg(long, default_value_t = 64)]
    samples: usize,
    /// Seed of calibration sample 0.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Solvers to distill for (euler, ddim, dpmpp_2m, dpmpp_3m).
    #[arg(long, alias = "sampler", value_delimiter = ',', default_value = "euler,dpmpp_2m")]
    solver: Vec<String>,
    /// Step counts (= model evaluations) to distill.
    #[arg(long, value_delimiter = ',', default_value = "5,8,10,15,20")]
    nfe: Vec<usize>,
    /// The teacher's grid: N euler steps, uniform in the model's time (log-spaced in sigma for
    /// VE models).
    #[arg(long, default_value_t = 200)]
    teacher_steps: usize,
    /// oss (the student runs; N + K N evaluations per sample) or exact (shortest path over
    /// the teacher's states; N evaluations, about N^2 / 2 with --distance x0; euler and ddim
    /// only).
    #[arg(long, default_value = "oss")]
    method: String,
    /// Where the student is compared with the teacher: xt (state) or x0 (its prediction).
    #[arg(long, default_value = "xt")]
    distance: String,
    /// How per-sample schedules become one: median or mean, per step, in sigma.
    #[arg(long, default_value = "median")]
    aggregate: String,
    /// Classifier-free guidance of teacher and student (a schedule is distilled for one).
    #[arg(long, default_value_t = 3.0)]
    cfg_scale: f64,
    /// Calibration samples searched together (the unit of checkpointing and sharding).
    #[arg(long, alias = "batch-size", default_value_t = 8)]
    batch: usize,
    /// Output folder: the schedule files, and work/ with the job's checkpoint (default for
    /// tiny-shapes models: the model folder's schedules/, where --scheduler distilled looks;
    /// schedules/exact/ for --method exact, where `eval schedules` looks).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

/// Everything that determines a job's results, pinned in `work/job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    model_id: String,
    model_hash: String,
    parameterization: String,
    /// Calibration prompts; sample i uses `prompts[i % len]`.
    prompts: Vec<String>,
    samples: usize,
    seed: u64,
    cfg_scale: f64,
    solvers: Vec<String>,
    nfe: Vec<usize>,
    teacher_steps: usize,
    /// The teacher's grid (a leading infinity, pure noise, as null) and how it is spaced.
    grid: Vec<Option<f64>>,
    grid_name: String,
    /// One sample's latent shape.
    latent: Vec<usize>,
    method: String,
    distance: String,
    aggregate: String,
    batch: usize,
    /// Results are bit-identical only on one kind of device.
    device: String,
}

impl Manifest {
    fn blocks(&self) -> usize {
        self.samples.div_ceil(self.batch)
    }

    fn block_len(&self, block: usize) -> usize {
        self.batch.min(self.samples - block * self.batch)
    }

    /// Hash of what the schedule was calibrated on: prompts, seeds and guidance.
    fn calibration_hash(&self) -> String {
        let text = format!("{:?}|{}|{}|{}", self.prompts, self.samples, self.seed, self.cfg_scale);
        crate::schedules::sha256_hex(text.as_bytes())
    }

    fn configs(&self) -> Result<Vec<Config>> {
        let method: Method = self.method.parse()?;
        let distance: Distance = self.distance.parse()?;
        let grid = Sigmas::new(self.grid.iter().map(|s| s.unwrap_or(f64::INFINITY)).collect())?;
        let mut configs = Vec::new();
        for solver in &self.solvers {
            let sampler: Sampler = solver.parse()?;
            Student::new(sampler).with_context(|| format!("--solver {solver}"))?;
            if method == Method::Exact && sampler.kind.order() > 1 {
                bail!("--method exact searches single steps; distill {solver} with --method oss");
            }
            for &nfe in &self.nfe {
                anyhow::ensure!(
                    (1..=self.teacher_steps).contains(&nfe),
                    "--nfe {nfe}: must be between 1 and --teacher-steps ({})",
                    self.teacher_steps
                );
                configs.push(Config {
                    student: sampler,
                    steps: nfe,
                    teacher: Sampler::new(SamplerKind::Euler),
                    grid: grid.clone(),
                    grid_name: self.grid_name.clone(),
                    method,
                    distance,
                    batch: self.batch,
                    max_rows: 256,
                });
            }
        }
        Ok(configs)
    }
}

/// One calibration sample's schedules, a line of a records file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    block: usize,
    sample: usize,
    seed: u64,
    prompt: String,
    schedules: Vec<RecordSchedule>,
}

impl crate::work::Record for Record {
    fn block(&self) -> usize {
        self.block
    }
    fn item(&self) -> usize {
        self.sample
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordSchedule {
    solver: String,
    nfe: usize,
    indices: Vec<usize>,
    /// As k-diffusion sigmas; a leading infinity (flow models) is written as null.
    sigmas: Vec<Option<f64>>,
    cost: f64,
    /// This sample's share of its block's denoiser evaluations and seconds for the solver (one
    /// search serves all of a solver's step counts).
    evaluations: f64,
    seconds: f64,
}

/// A denoiser conditioned on every calibration prompt that can serve any batch of them.
trait PromptDenoiser: Denoiser {
    /// The denoiser for a batch whose row `r` is prompt `prompts[r]`.
    fn for_rows(&self, prompts: &[usize]) -> candle_core::Result<Box<dyn Denoiser + '_>>;
}

impl PromptDenoiser for stride_models::tiny_shapes::Guided<'_> {
    fn for_rows(&self, prompts: &[usize]) -> candle_core::Result<Box<dyn Denoiser + '_>> {
        Ok(Box::new(self.rows(prompts)?))
    }
}

impl PromptDenoiser for stride_models::sd::Guided<'_> {
    fn for_rows(&self, prompts: &[usize]) -> candle_core::Result<Box<dyn Denoiser + '_>> {
        Ok(Box::new(self.rows(prompts)?))
    }
}

/// The distiller's view: rows of a batch pick their calibration sample's prompt.
struct PromptRows<'a> {
    guided: &'a dyn PromptDenoiser,
    prompt_count: usize,
    /// The first calibration sample of the batch the distiller is working on.
    first: usize,
    /// Rows evaluated so far.
    evaluations: std::cell::Cell<usize>,
}

impl RowDenoiser for PromptRows<'_> {
    fn schedule(&self) -> &NoiseSchedule {
        self.guided.schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.guided.parameterization()
    }
    fn predict(&self, x: &Tensor, sigmas: &[f64], samples: &[usize]) -> candle_core::Result<Tensor> {
        self.evaluations.set(self.evaluations.get() + samples.len());
        let prompts: Vec<usize> = samples.iter().map(|s| (self.first + s) % self.prompt_count).collect();
        self.guided.for_rows(&prompts)?.predict(x, sigmas)
    }
}

/// A loaded model and what the schedule file says about it.
enum Loaded {
    Tiny {
        model: Box<TinyShapes>,
        hash: String,
        dir: PathBuf,
    },
    /// The model and the diffusers folder it came from, if any.
    Sd(Box<StableDiffusion>, Option<PathBuf>),
}

fn load_model(args: &JobArgs, device: &candle_core::Device) -> Result<Loaded> {
    let sd = |variant: Variant, dir: Option<PathBuf>| -> Result<Loaded> {
        anyhow::ensure!(args.out.is_some(), "--out DIR: where to write {variant}'s schedules");
        let sd = StableDiffusion::load(variant, dir.as_deref(), device, DType::F32)
            .with_context(|| format!("loading {variant}"))?;
        Ok(Loaded::Sd(Box::new(sd), dir))
    };
    if let Some(variant) = Variant::from_name(&args.model) {
        return sd(variant, args.weights_dir.clone());
    }
    let dir = TinyShapes::dir_of(&args.model);
    if dir.join("unet/config.json").is_file() {
        let variant = Variant::infer(&dir).with_context(|| format!("reading {}", dir.display()))?;
        return sd(variant, Some(dir));
    }
    anyhow::ensure!(
        dir.join("model.safetensors").is_file(),
        "--model {}: not a known model (tiny-shapes, {}) nor a model folder",
        args.model,
        Variant::ALL.map(|v| v.name()).join(", ")
    );
    let model = TinyShapes::load(&dir, device).with_context(|| format!("loading {}", dir.display()))?;
    Ok(Loaded::Tiny { model: Box::new(model), hash: model_hash(&dir)?, dir })
}

/// `parameterization_name` backwards.
fn parameterization_named(name: &str) -> Result<Parameterization> {
    [Parameterization::Epsilon, Parameterization::X0, Parameterization::V, Parameterization::FlowVelocity]
        .into_iter()
        .find(|p| parameterization_name(*p) == name)
        .with_context(|| format!("unknown parameterization `{name}` in the job file"))
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(DistillCommand::Merge { out, model }) => {
            let out = out.unwrap_or_else(|| TinyShapes::dir_of(&model).join(crate::schedules::SHIPPED_DIR));
            let manifest = work(&out).read_manifest::<Manifest>()?;
            write_schedules(&out, &manifest)
        }
        None => run_job(args.job),
    }
}

fn run_job(args: JobArgs) -> Result<()> {
    anyhow::ensure!(args.samples > 0 && args.batch > 0, "--samples and --batch must be at least 1");
    anyhow::ensure!(args.teacher_steps >= 2, "--teacher-steps must be at least 2");
    anyhow::ensure!(args.cfg_scale.is_finite(), "--cfg-scale must be a finite number");
    anyhow::ensure!(!args.solver.is_empty() && !args.nfe.is_empty(), "give at least one --solver and --nfe");
    args.aggregate.parse::<Aggregate>()?;
    let prompts = calibration_prompts(&args)?;
    let device = args.run.device.open()?;
    let loaded = load_model(&args, &device)?;
    let out = match (&args.out, &loaded) {
        (Some(out), _) => out.clone(),
        (None, Loaded::Tiny { dir, .. }) => {
            let shipped = dir.join(crate::schedules::SHIPPED_DIR);
            if args.method == "exact" {
                shipped.join("exact")
            } else {
                shipped
            }
        }
        (None, Loaded::Sd(..)) => bail!("--out DIR: where to write the schedules"),
    };
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (guided, latent, model_id, model_hash): (Box<dyn PromptDenoiser + '_>, Vec<usize>, String, String) =
        match &loaded {
            Loaded::Tiny { model, hash, .. } => {
                let side = stride_shapes::SIDE;
                (
                    Box::new(model.denoiser(&texts, args.cfg_scale)?),
                    vec![3, side, side],
                    "tiny-shapes".into(),
                    hash.clone(),
                )
            }
            Loaded::Sd(sd, dir) => {
                anyhow::ensure!(
                    args.prompts.is_some(),
                    "--prompts FILE: Stable Diffusion needs calibration prompts (the default ones are tiny-shapes')"
                );
                let d = sd.variant.defaults_in(dir.as_deref());
                let (w, h) = (args.width.unwrap_or(d.width), args.height.unwrap_or(d.height));
                let dims = sd.latent_dims(1, w, h)?;
                // The weights are gigabytes in the hub cache; the variant's name identifies them.
                (
                    Box::new(sd.denoiser(&texts, "", args.cfg_scale, w, h)?),
                    dims[1..].to_vec(),
                    sd.variant.name().into(),
                    String::new(),
                )
            }
        };
    let schedule = guided.schedule().clone();
    let manifest = Manifest {
        model_id,
        model_hash,
        parameterization: parameterization_name(guided.parameterization()).into(),
        prompts: prompts.clone(),
        samples: args.samples,
        seed: args.seed,
        cfg_scale: args.cfg_scale,
        solvers: sorted_unique(&args.solver),
        nfe: sorted_unique(&args.nfe),
        teacher_steps: args.teacher_steps,
        grid: teacher::default_grid(&schedule, args.teacher_steps)?
            .as_slice()
            .iter()
            .map(|s| s.is_finite().then_some(*s))
            .collect(),
        grid_name: teacher::default_grid_name(&schedule).into(),
        latent,
        method: args.method.clone(),
        distance: args.distance.clone(),
        aggregate: args.aggregate.clone(),
        batch: args.batch,
        device: args.run.device.name().into(),
    };
    let configs = manifest.configs()?;
    work(&out).pin_manifest(&manifest)?;

    let shard = args.run.shard.unwrap_or(Shard::ALL);
    let done = read_records(&out, &manifest)?;
    let plan = work(&out).plan(shard, manifest.blocks(), manifest.batch, &done);
    let block_len = |b: usize| manifest.block_len(b);
    let units: usize = plan.todo.iter().map(|&b| block_len(b) * configs.len()).sum();
    crate::interrupt::install("the block in flight");
    eprintln!(
        "distilling {} solver x NFE schedules from {} samples ({plan}) into {}",
        configs.len(),
        manifest.samples,
        out.display()
    );
    let bar = if args.run.quiet { ProgressBar::hidden() } else { ProgressBar::new(units as u64) };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} sample schedules [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    for &block in &plan.todo {
        let first = block * manifest.batch;
        let seeds: Vec<u64> = (first..first + block_len(block)).map(|i| manifest.seed + i as u64).collect();
        let dims: Vec<usize> = std::iter::once(seeds.len()).chain(manifest.latent.iter().copied()).collect();
        let noise = TorchNoise::new(&seeds).sample(&dims.into(), DType::F32, &device)?;
        let rows = PromptRows { guided: &*guided, prompt_count: texts.len(), first, evaluations: 0.into() };
        let mut records: Vec<Record> = seeds
            .iter()
            .enumerate()
            .map(|(k, &seed)| Record {
                block,
                sample: first + k,
                seed,
                prompt: manifest.prompts[(first + k) % texts.len()].clone(),
                schedules: Vec::new(),
            })
            .collect();
        // One search per solver serves all its step counts (see `distill_counts`).
        for solver in &manifest.solvers {
            let group: Vec<&Config> =
                configs.iter().filter(|c| c.student.kind.name() == solver.as_str()).collect();
            let counts: Vec<usize> = group.iter().map(|c| c.steps).collect();
            bar.set_message(format!("{solver}, {counts:?} steps"));
            let start = std::time::Instant::now();
            rows.evaluations.set(0);
            let distilled = distill_counts(&rows, &noise, group[0], &counts, |p| {
                if let Progress::Sample { .. } = p {
                    bar.inc(1);
                }
            })
            .with_context(|| {
                format!("{solver}, block {block} (its sample 0 is calibration sample {first})")
            })?;
            let share = 1.0 / seeds.len() as f64;
            let (evaluations, seconds) =
                (rows.evaluations.get() as f64 * share, start.elapsed().as_secs_f64() * share);
            for (distilled, &nfe) in distilled.into_iter().zip(&counts) {
                for (record, schedule) in records.iter_mut().zip(distilled.samples) {
                    record.schedules.push(RecordSchedule {
                        solver: solver.clone(),
                        nfe,
                        indices: schedule.indices,
                        sigmas: schedule.sigmas.iter().map(|s| s.is_finite().then_some(*s)).collect(),
                        cost: schedule.cost,
                        evaluations,
                        seconds,
                    });
                }
            }
        }
        work(&out).append(shard, &records)?;
        work(&out).stop_if_interrupted()?;
    }
    bar.finish_and_clear();
    let done = read_records(&out, &manifest)?;
    if work(&out).finished(shard, manifest.blocks(), &done) {
        write_schedules(&out, &manifest)
    } else {
        Ok(())
    }
}

/// The calibration prompts: the file's lines, or for tiny-shapes the first `samples` distinct
/// training-distribution prompts of the shapes world with seed 1.
fn calibration_prompts(args: &JobArgs) -> Result<Vec<String>> {
    let prompts: Vec<String> = match &args.prompts {
        Some(path) => crate::work::prompt_lines(path)?,
        None => World::new(1).samples(0).map(|s| s.prompt.text).take(args.samples).collect(),
    };
    anyhow::ensure!(!prompts.is_empty(), "no prompts in the prompts file");
    Ok(prompts)
}

fn work(out: &Path) -> WorkDir<'_> {
    WorkDir { out, command: "stride distill" }
}

/// Every complete block of the job's records.
fn read_records(out: &Path, manifest: &Manifest) -> Result<BTreeMap<usize, Vec<Record>>> {
    work(out).read_blocks(manifest.blocks(), |b| manifest.block_len(b))
}

/// Aggregates every (solver, NFE) over all samples and writes `OUT/SOLVER-NFE.json`.
fn write_schedules(out: &Path, manifest: &Manifest) -> Result<()> {
    let records = read_records(out, manifest)?;
    work(out).require_all(manifest.blocks(), &records)?;
    let how: Aggregate = manifest.aggregate.parse()?;
    let provenance = Provenance {
        model_id: manifest.model_id.clone(),
        model_hash: manifest.model_hash.clone(),
        parameterization: parameterization_named(&manifest.parameterization)?,
        calibration_hash: manifest.calibration_hash(),
    };
    let header = format!("sigmas ({} over samples)", manifest.aggregate);
    println!("{:<10} {:>4}  {:<60} {:>12}", "solver", "NFE", header, "mean cost");
    for config in manifest.configs()? {
        let solver = config.student.kind.name();
        let samples: Vec<SampleSchedule> = records
            .values()
            .flatten()
            .map(|r| {
                let s =
                    r.schedules.iter().find(|s| s.solver == solver && s.nfe == config.steps).with_context(
                        || format!("sample {} has no {solver} {}-step schedule", r.sample, config.steps),
                    )?;
                Ok(SampleSchedule {
                    indices: s.indices.clone(),
                    sigmas: s.sigmas.iter().map(|s| s.unwrap_or(f64::INFINITY)).collect(),
                    cost: s.cost,
                })
            })
            .collect::<Result<_>>()?;
        let mut file = ScheduleFile::new(&samples, &config, &provenance, how, None)?;
        let spent: Vec<(f64, f64)> = records
            .values()
            .flatten()
            .flat_map(|r| r.schedules.iter().filter(|s| s.solver == solver && s.nfe == config.steps))
            .map(|s| (s.evaluations, s.seconds))
            .collect();
        let n = spent.len() as f64;
        file.compute = Some(Compute {
            model_evaluations: spent.iter().map(|s| s.0).sum::<f64>() / n,
            seconds: spent.iter().map(|s| s.1).sum::<f64>() / n,
            device: manifest.device.clone(),
            shared_by: manifest.nfe.clone(),
        });
        let path = out.join(format!("{solver}-{}.json", config.steps));
        file.write(&path)?;
        let shown: Vec<String> = file.sigmas.iter().map(|s| format!("{s:.3}")).collect();
        println!(
            "{solver:<10} {:>4}  {:<60} {:>12.4e}",
            config.steps,
            shown.join(","),
            file.costs.per_sample_mean
        );
    }
    println!("schedules: {}", out.display());
    Ok(())
}

/// A list flag's values sorted, repeats dropped: `--nfe 10,5` is the job `--nfe 5,10` is.
fn sorted_unique<T: Ord + Clone>(values: &[T]) -> Vec<T> {
    let mut values = values.to_vec();
    values.sort();
    values.dedup();
    values
}
