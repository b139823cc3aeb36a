//! `stride train-policy`: the per-prompt step policy (AdaDiff) for the bundled model.
//!
//! Two stages. The reward table: for every training prompt and seed, an image at every
//! step-count option (the chosen solver; with `--scheduler distilled`, the model's distilled
//! schedule wherever one exists for that count), scored by ShapesEval and by PSNR against the
//! largest option's image from the same seed. It is a resumable, shardable job like
//! `stride distill` (see [`crate::work`]): blocks of (prompt, seed) items in
//! `OUT/work/records-I-of-N.jsonl`, settings pinned in `OUT/work/job.json`. Then the policy is
//! trained on the cached table (a contextual bandit: no model calls) and saved to `OUT`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use stride_models::TinyShapes;
use stride_policy::{
    train, Baseline, Objective, Policy, PolicyConfig, PolicyNet, Reward, Sidecar, TrainSettings,
};
use stride_shapes::{check, World};
use stride_solvers::{Denoiser, Sampler, Sigmas, TorchNoise};

use crate::work::{RunArgs, Shard, WorkDir};

#[derive(clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  stride train-policy                                   # the model's policy (models/tiny-shapes/policy)
  stride train-policy --prompts train.txt --seeds 4 --out my-policy
  stride train-policy --scheduler distilled --options 5,8,10,15,20 --out models/tiny-shapes/policy-distilled
  stride train-policy merge --lambda 1.0                 # refit on the finished table: cheaper choices
  stride train-policy --shard 2/8 --out runs/p          # one of 8 machines; the last to finish fits
  stride train-policy merge --out runs/p                 # fit it once every shard is done

A killed job resumes where it stopped when run again with the same settings and --out (Ctrl-C
stops it after the block in flight, so nothing is lost); the training settings (--reward,
--lambda, --objective, ...) may change between runs, the table's may not."
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<PolicyCommand>,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(clap::Subcommand)]
enum PolicyCommand {
    /// Train the policy from a finished table (every shard done).
    Merge {
        /// The job's output folder (default: --model's policy/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The model whose default job folder to fit (tiny-shapes or a folder).
        #[arg(long, default_value = "tiny-shapes")]
        model: String,
        #[command(flatten)]
        training: TrainingArgs,
    },
}

#[derive(clap::Args)]
struct JobArgs {
    /// tiny-shapes (bundled) or a tiny-shapes folder.
    #[arg(long, default_value = "tiny-shapes")]
    model: String,
    /// Training prompts, one a line. Default: the first --prompt-count distinct
    /// training-distribution prompts of the shapes world (seed 2; none held out).
    #[arg(long)]
    prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    prompt_count: usize,
    /// Seeds per prompt; item i (prompt i / seeds) starts from seed `seed + i`.
    #[arg(long, default_value_t = 4)]
    seeds: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Step counts the policy chooses among.
    #[arg(long, value_delimiter = ',', default_value = "4,5,6,8,10,12,15,20,25,30,40,50")]
    options: Vec<usize>,
    #[arg(long, default_value = "dpmpp_2m")]
    sampler: String,
    /// uniform (or another hand-designed schedule), or distilled: the model's distilled
    /// schedule for each option that has one, uniform for the others.
    #[arg(long, default_value = "uniform")]
    scheduler: String,
    #[arg(long, default_value_t = 3.0)]
    cfg_scale: f64,
    /// (prompt, seed) items generated together (the unit of checkpointing and sharding).
    #[arg(long, alias = "batch-size", default_value_t = 16)]
    batch: usize,
    /// Output folder: policy.safetensors, policy.json, and work/ with the table (default: the
    /// model folder's policy/, where --steps auto looks).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    training: TrainingArgs,
}

/// How the table becomes rewards, and how the policy is fitted to them.
#[derive(clap::Args, Clone)]
struct TrainingArgs {
    /// Weight of the fidelity term in an option's quality: pass rate + fidelity * PSNR / 40 dB
    /// (PSNR against the largest option's image, capped at 40 dB).
    #[arg(long, default_value_t = 0.5)]
    fidelity: f64,
    /// linear (quality - lambda * steps / max steps) or adadiff (the top-k options by quality get
    /// 1 - steps / max steps + lambda * quality, the others -gamma).
    #[arg(long, default_value = "linear")]
    reward: String,
    /// linear: the price of steps (higher picks fewer steps); adadiff: the weight of quality
    /// (higher picks better, so costlier, options).
    #[arg(long, default_value_t = 0.5)]
    lambda: f64,
    /// adadiff: the penalty of an option outside the top k.
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,
    /// adadiff: how many options, best quality first, earn a positive reward (fewer than the
    /// options).
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// max-entropy (fit softmax(reward / entropy), the default), reinforce (AdaDiff) or expected.
    #[arg(long, default_value = "max-entropy")]
    objective: String,
    /// REINFORCE's baseline: value (the prompt's expected reward) or running-mean (AdaDiff).
    #[arg(long, default_value = "value")]
    baseline: String,
    /// Policy updates.
    #[arg(long, default_value_t = 800)]
    updates: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Entropy bonus (the temperature of max-entropy).
    #[arg(long, default_value_t = 0.01)]
    entropy: f64,
}

impl TrainingArgs {
    fn reward(&self, options: usize) -> Result<Reward> {
        anyhow::ensure!(self.lambda.is_finite() && self.lambda >= 0.0, "--lambda must be a number >= 0");
        anyhow::ensure!(
            self.fidelity.is_finite() && self.fidelity >= 0.0,
            "--fidelity must be a number >= 0"
        );
        match self.reward.as_str() {
            "linear" => Ok(Reward::Linear { lambda: self.lambda }),
            "adadiff" => {
                anyhow::ensure!(
                    self.top_k > 0 && self.top_k < options,
                    "--top-k must be at least 1 and fewer than the {options} options"
                );
                Ok(Reward::AdaDiff { lambda: self.lambda, gamma: self.gamma, top_k: self.top_k })
            }
            other => anyhow::bail!("--reward {other}: expected linear or adadiff"),
        }
    }

    fn settings(&self) -> Result<TrainSettings> {
        let objective = match self.objective.as_str() {
            "max-entropy" => Objective::MaxEntropy,
            "reinforce" => Objective::Reinforce,
            "expected" => Objective::Expected,
            other => anyhow::bail!("--objective {other}: expected max-entropy, reinforce or expected"),
        };
        let baseline = match self.baseline.as_str() {
            "value" => Baseline::Value,
            "running-mean" => Baseline::RunningMean { momentum: 0.9 },
            other => anyhow::bail!("--baseline {other}: expected value or running-mean"),
        };
        anyhow::ensure!(self.updates > 0, "--updates must be at least 1");
        anyhow::ensure!(self.lr.is_finite() && self.lr > 0.0, "--lr must be a positive number");
        anyhow::ensure!(
            self.entropy.is_finite() && self.entropy > 0.0,
            "--entropy must be a positive number"
        );
        Ok(TrainSettings {
            steps: self.updates,
            lr: self.lr,
            entropy: self.entropy,
            baseline,
            objective,
            ..TrainSettings::default()
        })
    }
}

/// Everything that determines the table, pinned in `work/job.json`. The model is named by
/// its weights' hash, not its folder, so a table follows its weights when they move (tables
/// written before this kept a `model_dir`, which is ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    model_hash: String,
    prompts: Vec<String>,
    seeds: usize,
    seed: u64,
    options: Vec<usize>,
    sampler: String,
    scheduler: String,
    /// The schedule of each option (a leading infinity, pure noise, as null).
    schedules: Vec<Vec<Option<f64>>>,
    cfg_scale: f64,
    batch: usize,
    device: String,
}

impl Manifest {
    fn items(&self) -> usize {
        self.prompts.len() * self.seeds
    }

    fn blocks(&self) -> usize {
        self.items().div_ceil(self.batch)
    }

    fn block_len(&self, block: usize) -> usize {
        self.batch.min(self.items() - block * self.batch)
    }

    /// Whether a record can belong to this job: its item in its block, its prompt and seed
    /// those of its item, a result for every option.
    fn fits(&self, r: &Record) -> bool {
        let first = r.block * self.batch;
        (first..first + self.block_len(r.block)).contains(&r.item)
            && r.prompt == r.item / self.seeds
            && r.seed == self.seed.wrapping_add(r.item as u64)
            && r.passed.len() == self.options.len()
            && r.psnr.len() == self.options.len()
    }
}

/// One (prompt, seed) item: whether each option's image passed ShapesEval, and its PSNR
/// against the largest option's image (infinite for that one, written as null).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    block: usize,
    item: usize,
    prompt: usize,
    seed: u64,
    passed: Vec<bool>,
    psnr: Vec<Option<f64>>,
}

impl crate::work::Record for Record {
    fn block(&self) -> usize {
        self.block
    }
    fn item(&self) -> usize {
        self.item
    }
}

fn work(out: &Path) -> WorkDir<'_> {
    WorkDir { out, command: "stride train-policy" }
}

/// Every complete block of the table; a record that cannot belong to the job is an error.
fn read_table(out: &Path, manifest: &Manifest) -> Result<BTreeMap<usize, Vec<Record>>> {
    let table = work(out).read_blocks(manifest.blocks(), |b| manifest.block_len(b))?;
    if let Some(r) = table.values().flatten().find(|r| !manifest.fits(r)) {
        anyhow::bail!(
            "{}: the record of item {} (block {}) does not fit the job in job.json (edited by \
             hand?); delete its line and run again to regenerate that block",
            out.join("work").display(),
            r.item,
            r.block
        );
    }
    Ok(table)
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(PolicyCommand::Merge { out, model, training }) => {
            let dir = TinyShapes::dir_of(&model);
            let out = out.unwrap_or_else(|| dir.join(stride_policy::MODEL_POLICY_DIR));
            let manifest: Manifest = work(&out).read_manifest()?;
            let done = read_table(&out, &manifest)?;
            fit_and_save(&dir, &out, &manifest, done, &training, &Device::Cpu, false)
        }
        None => run_job(args.job),
    }
}

fn run_job(args: JobArgs) -> Result<()> {
    anyhow::ensure!(args.seeds > 0 && args.batch > 0, "--seeds and --batch must be at least 1");
    anyhow::ensure!(args.cfg_scale.is_finite(), "--cfg-scale must be a finite number");
    let mut options = args.options.clone();
    options.sort_unstable();
    options.dedup();
    anyhow::ensure!(
        options.len() >= 2 && options[0] > 0,
        "--options: give at least two positive step counts, e.g. 4,8,16"
    );
    args.training.reward(options.len())?;
    args.training.settings()?;
    let sampler: Sampler = args.sampler.parse()?;
    let device = args.run.device.open()?;
    let dir = TinyShapes::dir_of(&args.model);
    let out = args.out.clone().unwrap_or_else(|| dir.join(stride_policy::MODEL_POLICY_DIR));
    let model = TinyShapes::load(&dir, &device)
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    let prompts = training_prompts(&args)?;
    let schedule = model.denoiser(&["a"], 1.0)?.schedule().clone();
    let sigmas: Vec<Sigmas> = options
        .iter()
        .map(|&n| crate::schedules::option_sigmas(&dir, &schedule, &args.sampler, &args.scheduler, n))
        .collect::<Result<_>>()?;
    let manifest = Manifest {
        model_hash: crate::schedules::model_hash(&dir)?,
        prompts,
        seeds: args.seeds,
        seed: args.seed,
        options,
        sampler: args.sampler.clone(),
        scheduler: args.scheduler.clone(),
        schedules: sigmas
            .iter()
            .map(|s| s.as_slice().iter().map(|v| v.is_finite().then_some(*v)).collect())
            .collect(),
        cfg_scale: args.cfg_scale,
        batch: args.batch,
        device: args.run.device.name().into(),
    };
    let work = work(&out);
    work.pin_manifest(&manifest)?;

    let shard = args.run.shard.unwrap_or(Shard::ALL);
    let done = read_table(&out, &manifest)?;
    let plan = work.plan(shard, manifest.blocks(), manifest.batch, &done);
    let items: usize = plan.todo.iter().map(|&b| manifest.block_len(b)).sum();
    crate::interrupt::install("the block in flight");
    eprintln!(
        "reward table: {} prompts x {} seeds at {} step counts ({plan}) in {}",
        manifest.prompts.len(),
        manifest.seeds,
        manifest.options.len(),
        out.display()
    );
    let bar = if args.run.quiet { ProgressBar::hidden() } else { ProgressBar::new(items as u64) };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} (prompt, seed) items [{elapsed_precise}<{eta_precise}]",
    )?);
    let requests: Vec<stride_shapes::Request> = manifest
        .prompts
        .iter()
        .map(|p| stride_shapes::Request::parse(p).map_err(|e| anyhow::anyhow!("prompt `{p}`: {e}")))
        .collect::<Result<_>>()?;
    for &block in &plan.todo {
        let records = score_block(&model, &manifest, &sampler, &sigmas, &requests, block, &device)?;
        work.append(shard, &records)?;
        bar.inc(records.len() as u64);
        work.stop_if_interrupted()?;
    }
    bar.finish_and_clear();
    let done = read_table(&out, &manifest)?;
    if !work.finished(shard, manifest.blocks(), &done) {
        return Ok(());
    }
    fit_and_save(&dir, &out, &manifest, done, &args.training, &device, args.run.quiet)
}

/// The training prompts: the file's lines, or distinct training-distribution prompts.
fn training_prompts(args: &JobArgs) -> Result<Vec<String>> {
    let prompts: Vec<String> = match &args.prompts {
        Some(path) => crate::work::prompt_lines(path)?,
        None => {
            let mut seen = std::collections::HashSet::new();
            World::new(2)
                .samples(0)
                .map(|s| s.prompt.text)
                .filter(|p| seen.insert(p.clone()))
                .take(args.prompt_count)
                .collect()
        }
    };
    anyhow::ensure!(!prompts.is_empty(), "no prompts to train on");
    Ok(prompts)
}

/// Generates block `block`'s items at every option and scores them.
fn score_block(
    model: &TinyShapes,
    manifest: &Manifest,
    sampler: &Sampler,
    sigmas: &[Sigmas],
    requests: &[stride_shapes::Request],
    block: usize,
    device: &Device,
) -> Result<Vec<Record>> {
    let first = block * manifest.batch;
    let items: Vec<usize> = (first..first + manifest.block_len(block)).collect();
    let prompt_of = |item: usize| item / manifest.seeds;
    let texts: Vec<&str> = items.iter().map(|&i| manifest.prompts[prompt_of(i)].as_str()).collect();
    let seeds: Vec<u64> = items.iter().map(|&i| manifest.seed.wrapping_add(i as u64)).collect();
    let denoiser = model.denoiser(&texts, manifest.cfg_scale)?;
    let side = stride_shapes::SIDE;
    let mut outputs = Vec::with_capacity(sigmas.len());
    for sigmas in sigmas {
        let mut noise = TorchNoise::new(&seeds);
        let x =
            sampler.initial_latent(&denoiser, sigmas, &[items.len(), 3, side, side], &mut noise, device)?;
        outputs.push(sampler.sample(&denoiser, x, sigmas, &mut noise, |_| {})?.clamp(-1.0, 1.0)?);
    }
    let reference = outputs.last().expect("at least two options").clone();
    let mut records: Vec<Record> = items
        .iter()
        .zip(&seeds)
        .map(|(&item, &seed)| Record {
            block,
            item,
            prompt: prompt_of(item),
            seed,
            passed: vec![],
            psnr: vec![],
        })
        .collect();
    for output in &outputs {
        let images = crate::eval::to_images(output)?;
        let psnr = psnr(output, &reference)?;
        for ((record, image), psnr) in records.iter_mut().zip(&images).zip(psnr) {
            record.passed.push(check(&requests[record.prompt], image).passed());
            record.psnr.push(psnr.is_finite().then_some(psnr));
        }
    }
    Ok(records)
}

/// Per image, the PSNR of `a` against `b` (images in [-1, 1], peak-to-peak 2).
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let mse = (a - b)?.sqr()?.flatten_from(1)?.mean(1)?.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    Ok(mse.to_vec1::<f64>()?.into_iter().map(|m| 10.0 * (4.0 / m).log10()).collect())
}

/// Each prompt's quality per option, from the table: the pass rate over its seeds plus
/// `fidelity` times the mean PSNR against the largest option (capped at 40 dB) over 40 dB.
fn quality(manifest: &Manifest, records: &[Record], fidelity: f64) -> Vec<Vec<f64>> {
    let mut sums = vec![vec![0.0; manifest.options.len()]; manifest.prompts.len()];
    let mut counts = vec![0usize; manifest.prompts.len()];
    for r in records {
        counts[r.prompt] += 1;
        for ((sum, &passed), psnr) in sums[r.prompt].iter_mut().zip(&r.passed).zip(&r.psnr) {
            let psnr = psnr.unwrap_or(f64::INFINITY).min(40.0);
            *sum += f64::from(u8::from(passed)) + fidelity * psnr / 40.0;
        }
    }
    sums.into_iter().zip(counts).map(|(s, n)| s.into_iter().map(|v| v / n.max(1) as f64).collect()).collect()
}

/// The text features a policy reads: the model's text-encoder outputs and mask.
pub fn text_features(model: &TinyShapes, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
    let tokens = model.tokenize(prompts)?;
    let features = model.net.text.forward(&tokens.ids, &tokens.mask)?;
    Ok((features, tokens.mask))
}

pub const FEATURES: &str = "tiny-shapes text encoder: per-token outputs and mask";

/// Trains the policy on the finished table and saves it under `out`; `model_dir` must hold the
/// weights the table was made with (their text features are the policy's input).
fn fit_and_save(
    model_dir: &Path,
    out: &Path,
    manifest: &Manifest,
    done: BTreeMap<usize, Vec<Record>>,
    training: &TrainingArgs,
    device: &Device,
    quiet: bool,
) -> Result<()> {
    work(out).require_all(manifest.blocks(), &done)?;
    let records: Vec<Record> = done.into_values().flatten().collect();
    let reward = training.reward(manifest.options.len())?;
    let settings = training.settings()?;
    let quality = quality(manifest, &records, training.fidelity);
    let rewards: Vec<Vec<f64>> =
        quality.iter().map(|q| reward.rewards(q, &manifest.options)).collect::<candle_core::Result<_>>()?;
    let model = TinyShapes::load(model_dir, device)
        .with_context(|| format!("loading the model from {}", model_dir.display()))?;
    let hash = crate::schedules::model_hash(model_dir)?;
    anyhow::ensure!(
        hash == manifest.model_hash,
        "{} holds other weights ({hash}) than the table was made with ({}): pass the --model it was \
         made for, or start a new table",
        model_dir.display(),
        manifest.model_hash
    );
    let texts: Vec<&str> = manifest.prompts.iter().map(String::as_str).collect();
    let (features, mask) = text_features(&model, &texts)?;
    let config = PolicyConfig {
        feature_dim: model.net.config.text_dim,
        max_tokens: model.net.config.max_tokens,
        options: manifest.options.clone(),
        ..PolicyConfig::default()
    };
    let varmap = VarMap::new();
    let net = PolicyNet::new(&config, stride_models::init::seeded(&varmap, settings.seed, device))?;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(settings.steps as u64) };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} policy updates {msg}")?);
    train(&net, &varmap, &features, &mask, &rewards, &settings, |r| {
        bar.inc(1);
        bar.set_message(format!("reward {:.3}, entropy {:.2}", r.reward, r.entropy));
    })?;
    bar.finish_and_clear();
    let sidecar = Sidecar {
        config,
        features: FEATURES.into(),
        model_hash: manifest.model_hash.clone(),
        sampler: manifest.sampler.clone(),
        scheduler: manifest.scheduler.clone(),
        cfg_scale: manifest.cfg_scale,
        reward,
        fidelity: training.fidelity,
        training: settings,
        prompts: manifest.prompts.len(),
        seeds: manifest.seeds,
        heldout: None,
        weights_sha256: String::new(),
    };
    Policy::save(out, &varmap, &sidecar)?;
    summarize(manifest, &quality, &rewards, &net.choose(&features, &mask)?);
    println!("policy: {}", out.display());
    Ok(())
}

/// The table's mean quality per option, and the policy's choices on the training prompts.
fn summarize(manifest: &Manifest, quality: &[Vec<f64>], rewards: &[Vec<f64>], chosen: &[usize]) {
    let n = quality.len() as f64;
    println!("{:>6} {:>12} {:>12} {:>8}", "steps", "mean quality", "mean reward", "chosen");
    for (o, steps) in manifest.options.iter().enumerate() {
        let q = quality.iter().map(|q| q[o]).sum::<f64>() / n;
        let r = rewards.iter().map(|r| r[o]).sum::<f64>() / n;
        let picked = chosen.iter().filter(|&&c| c == o).count();
        println!("{steps:>6} {q:>12.3} {r:>12.3} {picked:>8}");
    }
    let mean_steps = chosen.iter().map(|&c| manifest.options[c] as f64).sum::<f64>() / n;
    let best: f64 = rewards.iter().map(|r| r.iter().copied().fold(f64::MIN, f64::max)).sum::<f64>() / n;
    let got: f64 = rewards.iter().zip(chosen).map(|(r, &c)| r[c]).sum::<f64>() / n;
    println!(
        "training prompts: mean {mean_steps:.1} steps; mean reward {got:.3} (best per prompt {best:.3})"
    );
}
