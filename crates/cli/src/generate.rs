//! `stride generate`: text to image with the bundled model or Stable Diffusion (1.5, 2.1, XL,
//! Turbo), and `stride info`: the parameters stored in an image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use stride_models::{StableDiffusion, TinyShapes, Variant};
use stride_policy::Policy;
use stride_solvers::{AdaptiveSampler, Denoiser, Sampler, Scheduler, Sigmas, TorchNoise};

use crate::device::DeviceArg;
use crate::params::Params;
use crate::schedules;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  stride generate \"a red circle above a blue square\"
  stride generate \"two green crosses on a black background\" --seed 7 --steps 20 --sampler euler
  stride generate \"a large yellow triangle\" --num-samples 4 -o out/{seed}.png
  stride generate \"a small red square\" --sigmas \"99,3,1,0.3,0\"
  stride generate \"a lighthouse at dusk\" --model sd15 --width 768 --height 512
  stride generate \"a lighthouse at dusk\" --model sdxl-turbo   # 1 step, no guidance
  stride generate \"a lighthouse at dusk\" --model sd21 --weights-dir ./stable-diffusion-2-1
  stride generate --from stride-42.png -o again.png   # regenerate an image from its metadata")]
pub struct Args {
    /// What to draw.
    prompt: Option<String>,
    /// Model: tiny-shapes (bundled); Stable Diffusion sd15, sd21, sdxl, sd-turbo, sdxl-turbo
    /// (from the Hugging Face cache or Hub; HF_HOME, HF_HUB_OFFLINE honoured); or a folder:
    /// tiny-shapes files (config.json, tokenizer.json, model.safetensors) or a diffusers
    /// Stable Diffusion folder (unet/, vae/, text_encoder/, ...). Default: tiny-shapes; with
    /// --from, the image's (A1111's checkpoint names mean nothing here: name the model).
    #[arg(long)]
    model: Option<String>,
    /// Folder with the model's files (overrides where --model looks; for Stable Diffusion a
    /// diffusers folder, read instead of the Hugging Face cache or Hub).
    #[arg(long)]
    weights_dir: Option<PathBuf>,
    /// Image width in pixels (Stable Diffusion: a multiple of 8; default: the model's).
    #[arg(long)]
    width: Option<u32>,
    /// Image height in pixels (Stable Diffusion: a multiple of 8; default: the model's).
    #[arg(long)]
    height: Option<u32>,
    /// Sampler (euler, euler_ancestral, heun, ddim, dpmpp_2m, dpmpp_3m, dpmpp_2s,
    /// dpmpp_2s_ancestral, dpmpp_2m_sde, dpmpp_3m_sde; adaptive: adaptive_sde, dpm_adaptive).
    /// Default: dpmpp_2m; with --steps auto, the one the step policy was trained for.
    #[arg(long)]
    sampler: Option<String>,
    /// Step schedule: uniform, karras, exponential, logsnr, ays, ays_sdxl (any model; on flow
    /// models the sigma-spaced ones start at t = 0.999); linspace, leading, trailing (Stable
    /// Diffusion's discrete timesteps); distilled (the model's distilled schedule, see
    /// --schedule). Default: uniform for tiny-shapes (with --steps auto, the step policy's);
    /// leading for Stable Diffusion, trailing for the Turbo models.
    #[arg(long)]
    scheduler: Option<String>,
    /// A custom schedule: comma-separated k-diffusion sigmas, noisiest first, ending at 0 (as
    /// stable-diffusion.cpp's --sigmas). Flow models (tiny-shapes) read s = t / (1 - t), inf
    /// for pure noise; ComfyUI's and diffusers' flow sigmas are t itself: convert them.
    #[arg(long)]
    sigmas: Option<String>,
    /// A distilled schedule file (`stride distill`); --scheduler distilled picks the one
    /// shipped with the model for --sampler and --steps.
    #[arg(long)]
    schedule: Option<PathBuf>,
    /// Use a schedule distilled, or a step policy trained, for another model or solver anyway.
    #[arg(long)]
    force: bool,
    /// A number, or auto: the model's step policy (`stride train-policy`) picks the count per
    /// prompt. Default: 20 for tiny-shapes; 30 for Stable Diffusion, 1 for the Turbo models.
    #[arg(long)]
    steps: Option<Steps>,
    /// The step policy for --steps auto (default: the model folder's policy/).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Stochasticity of ancestral / SDE samplers and DDIM.
    #[arg(long)]
    eta: Option<f64>,
    /// Relative tolerance of the adaptive samplers (default 0.05).
    #[arg(long)]
    rtol: Option<f64>,
    /// Absolute tolerance of the adaptive samplers (default 0.0078).
    #[arg(long)]
    atol: Option<f64>,
    /// Model-evaluation cap of the adaptive samplers.
    #[arg(long, default_value_t = DEFAULT_MAX_NFE)]
    max_nfe: usize,
    /// Classifier-free guidance (at most 1: none, as diffusers). Default: 3 for tiny-shapes (with --steps auto, the
    /// step policy's), 7.5 for SD 1.5 / 2.1, 5 for SDXL, 1 for the Turbo models.
    #[arg(long)]
    cfg_scale: Option<f64>,
    /// What to steer away from (replaces the empty prompt of classifier-free guidance).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Seed of the first image (random, and printed, when absent or -1); image i uses seed + i.
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Images per prompt (seeds seed, seed + 1, ...).
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Images sampled together in one model batch (a speed setting: each image depends only
    /// on its own seed).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// One prompt a line (blank lines and lines starting with # are skipped), or JSON lines
    /// with per-line settings: {"prompt": "a red circle", "seed": 7, "steps": 10, "cfg_scale": 4}.
    /// Keys: prompt, negative_prompt, seed, num_samples, steps, sampler, scheduler, sigmas, eta,
    /// cfg_scale, width, height.
    #[arg(long, alias = "prompts")]
    prompts_file: Option<PathBuf>,
    /// Output path; {seed} and {index} are replaced.
    #[arg(short, long, default_value = "stride-{seed}.png")]
    output: String,
    /// Regenerate the image whose PNG metadata is in this file (its settings, all of them;
    /// name the new file with -o). --model and --weights-dir say where the model is, when the
    /// image was made elsewhere.
    #[arg(long, conflicts_with_all = [
        "prompt", "prompts_file", "negative_prompt", "seed", "steps", "sampler", "scheduler", "sigmas",
        "schedule", "cfg_scale", "eta", "rtol", "atol", "max_nfe", "width", "height", "num_samples", "policy",
    ])]
    from: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Compute dtype: f32 (default), or f16 / bf16 for Stable Diffusion (tiny-shapes runs in
    /// f32).
    #[arg(long)]
    dtype: Option<String>,
    /// Every N steps, also write the model's current x0 prediction (out-stepK.png).
    #[arg(long, default_value_t = 0)]
    preview_every: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// `--max-nfe`'s default.
const DEFAULT_MAX_NFE: usize = 1000;

impl Args {
    fn model(&self) -> &str {
        self.model.as_deref().unwrap_or("tiny-shapes")
    }
}

/// One image to make.
struct Job {
    params: Params,
    index: usize,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.batch_size > 0 && args.num_samples > 0,
        "--batch-size and --num-samples must be at least 1"
    );
    let jobs = jobs(&args)?;
    let first = &jobs[0].params;
    let dtype_name = first.dtype.as_deref().unwrap_or("f32");
    let dtype = parse_dtype(dtype_name)?;
    let paths = output_paths(&args.output, &jobs);
    if let Some(from) = &args.from {
        let same = |p: &PathBuf| std::fs::canonicalize(p).ok() == std::fs::canonicalize(from).ok();
        anyhow::ensure!(
            !paths.iter().any(same),
            "the new image would overwrite {}, the one it regenerates: name it with -o",
            from.display()
        );
    }
    let device = args.device.open()?;
    let model = match choose_model(&first.model, first.weights.as_deref().map(Path::new))? {
        Choice::Tiny(dir) => {
            anyhow::ensure!(dtype == DType::F32, "--dtype {dtype_name}: tiny-shapes runs in f32");
            let tiny = TinyShapes::load(&dir, &device)
                .with_context(|| format!("loading the model from {}", dir.display()))?;
            Model::Tiny(Box::new(tiny))
        }
        Choice::Sd { variant, dir } => {
            let sd =
                StableDiffusion::load(variant, dir.as_deref(), &device, dtype).with_context(
                    || match &dir {
                        Some(d) => format!("loading {variant} from {}", d.display()),
                        None => format!("loading {variant} ({})", variant.repo()),
                    },
                )?;
            Model::Sd(Box::new(sd))
        }
    };
    match &model {
        Model::Sd(sd) => warn_long_prompts(sd, &jobs)?,
        Model::Tiny(tiny) => warn_unknown_words(tiny, &jobs)?,
    }
    let bars = MultiProgress::new();
    if args.quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let total = bars.add(ProgressBar::new(jobs.len() as u64));
    total.set_style(ProgressStyle::with_template(
        "images {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
    )?);
    // Images that share everything but the seed are sampled as one batch.
    let mut start = 0;
    while start < jobs.len() {
        let first = &jobs[start].params;
        let mut end = start + 1;
        while end < jobs.len() && end - start < args.batch_size && same_but_seed(first, &jobs[end].params) {
            end += 1;
        }
        let batch = &jobs[start..end];
        let mut preview = |step: usize, images: Vec<Tensor>| -> Result<()> {
            for (job, image) in batch.iter().zip(images) {
                let path = preview_path(&paths[job.index], step);
                write_png(&path, &image, &job.params)?;
            }
            Ok(())
        };
        let preview = (args.preview_every > 0).then_some((args.preview_every, &mut preview as &mut Preview));
        let images = sample(&model, batch, &device, &bars, preview)?;
        for (job, image) in batch.iter().zip(images) {
            let path = &paths[job.index];
            write_png(path, &image, &job.params)?;
            total.suspend(|| println!("{} (seed {})", path.display(), job.params.seed));
        }
        total.inc(batch.len() as u64);
        start = end;
    }
    total.finish_and_clear();
    Ok(())
}

/// CLIP reads 77 tokens: says which prompts lose their last words (once per prompt).
fn warn_long_prompts(sd: &StableDiffusion, jobs: &[Job]) -> Result<()> {
    let Some(tokenizer) = sd.text.first().and_then(|e| e.tokenizer.as_ref()) else { return Ok(()) };
    for text in distinct_prompts(jobs) {
        let dropped = tokenizer.dropped_tokens(text)?;
        if dropped > 0 {
            eprintln!(
                "warning: CLIP reads {} tokens; the last {dropped} of \"{text}\" are ignored",
                tokenizer.max_len - 2
            );
        }
    }
    Ok(())
}

/// The jobs' prompts and negative prompts, each once, in order.
fn distinct_prompts(jobs: &[Job]) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    jobs.iter()
        .flat_map(|j| [j.params.prompt.as_str(), j.params.negative_prompt.as_str()])
        .filter(|text| seen.insert(*text))
        .collect()
}

/// A word the bundled model's tokenizer does not know is read as `[UNK]`, which the model
/// never learned to draw: say which, once per prompt.
fn warn_unknown_words(tiny: &TinyShapes, jobs: &[Job]) -> Result<()> {
    for text in distinct_prompts(jobs) {
        let unknown = stride_models::tiny_shapes::tokenizer::unknown_words(&tiny.tokenizer, text)?;
        if !unknown.is_empty() {
            eprintln!(
                "warning: tiny-shapes does not know {} in \"{text}\" (it knows: {})",
                unknown.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(", "),
                stride_shapes::VOCABULARY.join(" ")
            );
        }
    }
    Ok(())
}

/// `--steps`: a count, or `auto` (the model's step policy decides per prompt).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Steps {
    Count(usize),
    Auto,
}

impl std::str::FromStr for Steps {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Steps::Auto),
            _ => s.parse().map(Steps::Count).map_err(|_| format!("`{s}`: a step count or auto")),
        }
    }
}

/// One line of a prompts file: a plain prompt, or a JSON object with the prompt and any
/// settings that differ from the command line's for that line.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: String,
    negative_prompt: Option<String>,
    seed: Option<u64>,
    num_samples: Option<usize>,
    steps: Option<usize>,
    sampler: Option<String>,
    scheduler: Option<String>,
    sigmas: Option<String>,
    eta: Option<f64>,
    cfg_scale: Option<f64>,
    width: Option<u32>,
    height: Option<u32>,
}

/// The prompt argument, or the lines of --prompts-file (blank and `#` lines skipped).
fn lines(args: &Args) -> Result<Vec<Line>> {
    let path = match (&args.prompt, &args.prompts_file) {
        (Some(_), Some(_)) => bail!("give a prompt or --prompts-file, not both"),
        (Some(p), None) => return Ok(vec![Line { prompt: p.clone(), ..Line::default() }]),
        (None, Some(path)) => path,
        (None, None) => bail!("what should the image show? e.g. stride generate \"a red circle\""),
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = Vec::new();
    for (number, line) in crate::work::numbered_lines(&text) {
        if line.starts_with('{') {
            let parsed: Line = serde_json::from_str(line)
                .with_context(|| format!("{} line {number}: not a valid JSON prompt line", path.display()))?;
            lines.push(parsed);
        } else {
            lines.push(Line { prompt: line.to_string(), ..Line::default() });
        }
    }
    anyhow::ensure!(!lines.is_empty(), "{} has no prompts", path.display());
    Ok(lines)
}

/// The images to make, from --from, --prompts-file or the prompt argument.
fn jobs(args: &Args) -> Result<Vec<Job>> {
    if let Some(path) = &args.from {
        let mut params = Params::from_png(path)?;
        if let Some(dtype) = &args.dtype {
            params.dtype = (dtype != "f32").then(|| dtype.clone());
        }
        // Where the model is now, when the image was made elsewhere.
        if let Some(model) = &args.model {
            (params.model, params.weights) = (model.clone(), None);
        }
        if let Some(dir) = &args.weights_dir {
            params.weights = Some(absolute(dir).display().to_string());
        }
        check_size(
            &choose_model(&params.model, params.weights.as_deref().map(Path::new))?,
            params.width,
            params.height,
        )
        .with_context(|| format!("{} was made with another model", path.display()))?;
        // Older versions recorded an eta that adaptive_sde, euler and heun ignore.
        if params.eta.is_some() && !sampler_takes_eta(&params.sampler)? {
            eprintln!("note: {} records an eta, which {} ignores", path.display(), params.sampler);
            params.eta = None;
        }
        return Ok(vec![Job { params, index: 0 }]);
    }
    for (name, tol) in [("--rtol", args.rtol), ("--atol", args.atol)] {
        anyhow::ensure!(tol.is_none_or(|t| t.is_finite() && t > 0.0), "{name} must be a positive number");
    }
    anyhow::ensure!(args.max_nfe > 0, "--max-nfe must be at least 1");
    if let Some(dtype) = &args.dtype {
        parse_dtype(dtype)?;
    }
    let mut lines = lines(args)?;
    let choice = choose_model(args.model(), args.weights_dir.as_deref())?;
    let policy =
        if args.steps == Some(Steps::Auto) { policy_steps(args, &choice, &mut lines)? } else { None };
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut jobs = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        let params =
            line_params(args, &choice, line, seed).map(|p| Params { step_policy: policy.clone(), ..p });
        let params =
            params.map_err(
                |e| {
                    if lines.len() > 1 {
                        e.context(format!("prompt {}", number + 1))
                    } else {
                        e
                    }
                },
            )?;
        for i in 0..line.num_samples.unwrap_or(args.num_samples) {
            let index = jobs.len();
            let params = Params { seed: params.seed.wrapping_add(i as u64), ..params.clone() };
            jobs.push(Job { params, index });
        }
    }
    anyhow::ensure!(!jobs.is_empty(), "nothing to generate: every line asks for 0 samples");
    Ok(jobs)
}

/// One line's parameters: its own settings, else the command line's, else the model's
/// defaults; validated before anything is loaded.
fn line_params(args: &Args, choice: &Choice, line: &Line, seed: u64) -> Result<Params> {
    anyhow::ensure!(
        !line.prompt.trim().is_empty(),
        "the prompt is empty: describe the image, e.g. \"a red circle\""
    );
    let sampler = line.sampler.clone().or_else(|| args.sampler.clone()).unwrap_or_else(|| "dpmpp_2m".into());
    let adaptive = sampler.parse::<AdaptiveSampler>().is_ok();
    let takes_eta = sampler_takes_eta(&sampler)?;
    // A setting the line's sampler would ignore is an error where it was given beside that
    // sampler (both on the command line, or both on the line); where a prompts-file line
    // chose another sampler, the command line's setting does not apply to that line. Either
    // way the PNG records only what ran.
    let beside_sampler =
        |on_line: bool, on_command_line: bool| on_line || (on_command_line && line.sampler.is_none());
    let (steps, scheduler, cfg_scale, width, height) = match choice {
        Choice::Tiny(_) => (20, "uniform", 3.0, stride_shapes::SIDE, stride_shapes::SIDE),
        Choice::Sd { variant, dir } => {
            let d = variant.defaults_in(dir.as_deref());
            (d.steps, d.scheduler, d.cfg_scale, d.width, d.height)
        }
    };
    let (mut steps, mut scheduler, mut sigmas) = (steps, scheduler.to_string(), None);
    if adaptive {
        let step_settings = beside_sampler(line.steps.is_some(), matches!(args.steps, Some(Steps::Count(_))))
            || beside_sampler(line.sigmas.is_some(), args.sigmas.is_some())
            || beside_sampler(line.scheduler.is_some(), args.scheduler.is_some() || args.schedule.is_some());
        anyhow::ensure!(
            !step_settings,
            "{sampler} chooses its own steps: drop --steps, --sigmas, --scheduler and --schedule (--rtol and \
             --atol set its accuracy)"
        );
    } else {
        let explicit_steps = line.steps.or(match args.steps {
            Some(Steps::Count(n)) => Some(n),
            _ => None,
        });
        steps = explicit_steps.unwrap_or(steps);
        scheduler = line.scheduler.clone().or_else(|| args.scheduler.clone()).unwrap_or(scheduler);
        sigmas = line.sigmas.clone().or_else(|| args.sigmas.clone());
        if args.schedule.is_some() || scheduler == "distilled" {
            anyhow::ensure!(sigmas.is_none(), "--sigmas and a distilled schedule: give one of them");
            let distilled = distilled_sigmas(args, choice, &sampler, explicit_steps, steps)?;
            (steps, scheduler, sigmas) =
                (distilled.steps(), "distilled".into(), Some(schedules::to_list(&distilled)));
        }
        match &sigmas {
            Some(list) if scheduler != "distilled" => {
                // The metadata records what ran: the list's step count, and no named schedule.
                let n = Sigmas::parse(list).context("--sigmas")?.steps();
                if let Some(explicit) = explicit_steps.filter(|&e| e != n) {
                    bail!("--steps {explicit} and --sigmas with {n} steps: give one of them");
                }
                (steps, scheduler) = (n, "custom".into());
            }
            Some(_) => {}
            None => drop(scheduler.parse::<Scheduler>()?),
        }
        anyhow::ensure!(steps > 0, "--steps must be at least 1");
    }
    let cfg_scale = line.cfg_scale.or(args.cfg_scale).unwrap_or(cfg_scale);
    let size = |arg: Option<u32>, default: usize| arg.map_or(default, |v| v as usize);
    let (width, height) = (size(line.width.or(args.width), width), size(line.height.or(args.height), height));
    check_size(choice, width, height)?;
    anyhow::ensure!(cfg_scale.is_finite(), "--cfg-scale must be a finite number");
    let eta = match line.eta.or(args.eta) {
        Some(eta) if takes_eta => {
            anyhow::ensure!(eta.is_finite() && eta >= 0.0, "--eta must be a finite number >= 0");
            Some(eta)
        }
        Some(_) if beside_sampler(line.eta.is_some(), args.eta.is_some()) => bail!(
            "{sampler} has no eta (it solves the ODE, or for adaptive_sde always the SDE); these take one: \
             euler_ancestral, ddim, dpmpp_2m, dpmpp_3m, dpmpp_2s, dpmpp_2s_ancestral, dpmpp_2m_sde, \
             dpmpp_3m_sde, dpm_adaptive"
        ),
        _ => None,
    };
    let (rtol, atol, max_nfe) = if adaptive {
        (args.rtol, args.atol, Some(args.max_nfe))
    } else {
        anyhow::ensure!(
            !beside_sampler(false, args.rtol.is_some() || args.atol.is_some()),
            "--rtol and --atol are for the adaptive samplers (adaptive_sde, dpm_adaptive); {sampler} takes --steps"
        );
        (None, None, None)
    };
    Ok(Params {
        prompt: line.prompt.clone(),
        negative_prompt: line.negative_prompt.clone().unwrap_or_else(|| args.negative_prompt.clone()),
        steps,
        sampler,
        scheduler,
        sigmas,
        eta,
        rtol,
        atol,
        max_nfe,
        cfg_scale,
        seed: line.seed.unwrap_or(seed),
        width,
        height,
        model: args.model().to_string(),
        weights: args.weights_dir.as_ref().map(|d| absolute(d).display().to_string()),
        dtype: args.dtype.clone().filter(|d| d != "f32"),
        step_policy: None,
    })
}

/// Whether `--eta` changes what `sampler` (a fixed-step or adaptive sampler's name) does.
fn sampler_takes_eta(sampler: &str) -> Result<bool> {
    match sampler.parse::<AdaptiveSampler>() {
        Ok(adaptive) => Ok(adaptive.takes_eta()),
        Err(_) => match sampler.parse::<Sampler>() {
            Ok(fixed) => Ok(fixed.kind.takes_eta()),
            Err(e) => bail!("{e}; adaptive: {}", stride_solvers::adaptive::ADAPTIVE_SAMPLERS.join(", ")),
        },
    }
}

/// The image sizes a model draws.
fn check_size(choice: &Choice, width: usize, height: usize) -> Result<()> {
    if let Choice::Tiny(_) = choice {
        anyhow::ensure!(
            (width, height) == (stride_shapes::SIDE, stride_shapes::SIDE),
            "--width/--height: tiny-shapes draws {0}x{0} images",
            stride_shapes::SIDE
        );
    } else {
        anyhow::ensure!(
            width > 0 && height > 0 && width.is_multiple_of(8) && height.is_multiple_of(8),
            "--width {width} --height {height}: Stable Diffusion needs positive multiples of 8"
        );
    }
    Ok(())
}

fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("--dtype {other}: use f32, f16 or bf16"),
    })
}

/// `path` from the filesystem root, so the metadata names it from anywhere.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `--steps auto`: the model's step policy picks each line's step count (lines that set their
/// own keep it), printed, and the solver, schedule and guidance it was trained for wherever
/// neither the line nor the command line sets them; returns the policy folder, recorded in
/// the PNGs.
fn policy_steps(args: &Args, choice: &Choice, lines: &mut [Line]) -> Result<Option<String>> {
    let Choice::Tiny(dir) = choice else {
        bail!("--steps auto needs a step policy, trained for tiny-shapes models (stride train-policy)");
    };
    let policy_dir = args.policy.clone().unwrap_or_else(|| dir.join(stride_policy::MODEL_POLICY_DIR));
    let device = candle_core::Device::Cpu;
    let policy = Policy::load(&policy_dir, &device)?;
    let hash = schedules::model_hash(dir)?;
    match policy.check_model(&policy_dir, &hash) {
        Err(e) if args.force => eprintln!("warning: {e} (used anyway: --force)"),
        other => other?,
    }
    let model = TinyShapes::load(dir, &device)?;
    let texts: Vec<&str> = lines.iter().map(|l| l.prompt.as_str()).collect();
    anyhow::ensure!(texts.iter().all(|t| !t.trim().is_empty()), "the prompt is empty: describe the image");
    let (features, mask) = crate::train_policy::text_features(&model, &texts)?;
    let chosen = policy.net.choose(&features, &mask)?;
    let options = &policy.sidecar.config.options;
    let side = &policy.sidecar;
    for (line, choice) in lines.iter_mut().zip(chosen) {
        if line.steps.is_none() {
            line.steps = Some(options[choice]);
            eprintln!("step policy: {} steps for \"{}\"", options[choice], line.prompt);
        }
        let sampler =
            line.sampler.get_or_insert_with(|| args.sampler.clone().unwrap_or(side.sampler.clone()));
        let scheduler =
            line.scheduler.get_or_insert_with(|| args.scheduler.clone().unwrap_or(side.scheduler.clone()));
        let cfg_scale = *line.cfg_scale.get_or_insert(args.cfg_scale.unwrap_or(side.cfg_scale));
        if (sampler.as_str(), scheduler.as_str(), cfg_scale)
            != (&side.sampler, &side.scheduler, side.cfg_scale)
        {
            eprintln!(
                "note: the step policy chose for {} + {} at cfg {}; \"{}\" runs {sampler} + {scheduler} at cfg \
                 {cfg_scale}",
                side.sampler, side.scheduler, side.cfg_scale, line.prompt
            );
        }
    }
    Ok(Some(policy_dir.display().to_string()))
}

/// The distilled schedule of --schedule FILE, or the model's shipped one for --scheduler
/// distilled, checked against the model and sampler.
fn distilled_sigmas(
    args: &Args,
    choice: &Choice,
    sampler: &str,
    explicit_steps: Option<usize>,
    steps: usize,
) -> Result<Sigmas> {
    anyhow::ensure!(
        sampler.parse::<AdaptiveSampler>().is_err(),
        "{sampler} chooses its own steps; a distilled schedule is for a fixed-step sampler"
    );
    let (model_id, model_hash) = match choice {
        Choice::Tiny(dir) => ("tiny-shapes", schedules::model_hash(dir)?),
        Choice::Sd { variant, .. } => (variant.name(), String::new()),
    };
    let (path, steps) = match (&args.schedule, choice) {
        (Some(path), _) => (path.clone(), explicit_steps),
        (None, Choice::Tiny(dir)) => (schedules::shipped(dir, sampler, steps)?, Some(steps)),
        (None, Choice::Sd { .. }) => {
            bail!("--scheduler distilled: no schedules ship with Stable Diffusion; distill one and pass --schedule FILE")
        }
    };
    let target = schedules::Target { model_id, model_hash: &model_hash, solver: sampler };
    schedules::load(&path, &target, steps, args.force)
}

/// `--seed`: a number, or -1 for a random one (A1111's and stable-diffusion.cpp's convention).
fn parse_seed(s: &str) -> Result<u64, String> {
    match s {
        "-1" => Ok(random_seed()),
        _ => s.parse().map_err(|_| format!("`{s}`: a seed from 0 to {}, or -1 for a random one", u64::MAX)),
    }
}

fn random_seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos % u32::MAX as u128) as u64
}

/// Which model to load, and from where.
enum Choice {
    Tiny(PathBuf),
    /// A Stable Diffusion variant; `dir` is a diffusers folder, else the Hugging Face cache/Hub.
    Sd {
        variant: Variant,
        dir: Option<PathBuf>,
    },
}

/// A loaded model.
enum Model {
    Tiny(Box<TinyShapes>),
    Sd(Box<StableDiffusion>),
}

fn is_diffusers_dir(dir: &Path) -> bool {
    dir.join("unet/config.json").is_file()
}

/// The model `--model` names, read from `weights_dir` when given.
fn choose_model(model: &str, weights_dir: Option<&Path>) -> Result<Choice> {
    let sd_in = |dir: &Path| -> Result<Choice> {
        let variant = Variant::infer(dir).with_context(|| format!("reading {}", dir.display()))?;
        Ok(Choice::Sd { variant, dir: Some(dir.to_path_buf()) })
    };
    if let Some(variant) = Variant::from_name(model) {
        return Ok(Choice::Sd { variant, dir: weights_dir.map(Path::to_path_buf) });
    }
    if let Some(dir) = weights_dir {
        return if is_diffusers_dir(dir) { sd_in(dir) } else { Ok(Choice::Tiny(dir.to_path_buf())) };
    }
    match model {
        "tiny-shapes" => Ok(Choice::Tiny(TinyShapes::default_dir())),
        path if is_diffusers_dir(Path::new(path)) => sd_in(Path::new(path)),
        path if Path::new(path).is_dir() => Ok(Choice::Tiny(PathBuf::from(path))),
        other => bail!(
            "--model {other}: not a known model (tiny-shapes, {}) nor a folder",
            Variant::ALL.map(|v| v.name()).join(", ")
        ),
    }
}

fn same_but_seed(a: &Params, b: &Params) -> bool {
    Params { seed: 0, ..a.clone() } == Params { seed: 0, ..b.clone() }
}

/// Receives the x0 predictions after a step (1-based), as images.
type Preview<'a> = dyn FnMut(usize, Vec<Tensor>) -> Result<()> + 'a;

/// `out.png` -> `out-step5.png`.
fn preview_path(path: &Path, step: usize) -> PathBuf {
    let stem = path.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}-step{step}.png"))
}

/// Samples a batch of jobs that differ only in their seeds.
fn sample(
    model: &Model,
    batch: &[Job],
    device: &Device,
    bars: &MultiProgress,
    mut preview: Option<(usize, &mut Preview)>,
) -> Result<Vec<Tensor>> {
    let p = &batch[0].params;
    let prompts: Vec<&str> = batch.iter().map(|j| j.params.prompt.as_str()).collect();
    let (denoiser, dims): (Box<dyn Denoiser + '_>, [usize; 4]) = match model {
        Model::Tiny(tiny) => (
            Box::new(tiny.denoiser_with_negative(&prompts, &p.negative_prompt, p.cfg_scale)?),
            [batch.len(), 3, p.height, p.width],
        ),
        Model::Sd(sd) => (
            Box::new(sd.denoiser(&prompts, &p.negative_prompt, p.cfg_scale, p.width, p.height)?),
            sd.latent_dims(batch.len(), p.width, p.height)?,
        ),
    };
    let denoiser = &*denoiser;
    // Latents to images (Stable Diffusion's VAE), one [3, H, W] per sample.
    let images = |out: Tensor| -> Result<Vec<Tensor>> {
        let out = match model {
            Model::Tiny(_) => out,
            Model::Sd(sd) => sd.decode(&out)?,
        };
        let out = out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        (0..batch.len()).map(|i| Ok(out.get(i)?)).collect()
    };
    let seeds: Vec<u64> = batch.iter().map(|j| j.params.seed).collect();
    let mut noise = TorchNoise::new(&seeds);
    if let Ok(mut adaptive) = p.sampler.parse::<AdaptiveSampler>() {
        adaptive.set_tolerances(p.rtol, p.atol);
        // Images from before --max-nfe was recorded ran at its default.
        adaptive.set_max_nfe(p.max_nfe.unwrap_or(DEFAULT_MAX_NFE));
        if let Some(eta) = p.eta {
            adaptive.set_eta(eta)?;
        }
        let (hi, lo) = denoiser.schedule().sampling_range();
        let x = adaptive.initial_latent(denoiser, hi, &dims, &mut noise, device)?;
        let bar = bars.add(ProgressBar::new_spinner());
        let (out, stats) = adaptive.sample(denoiser, x, hi, lo, &mut noise, |step| {
            bar.set_message(format!("iteration {}", step.iteration + 1));
        })?;
        bar.finish_and_clear();
        bars.suspend(|| {
            eprintln!("{stats}");
            for warning in stats.warnings() {
                eprintln!("warning: {warning}");
            }
        });
        return images(out);
    }
    let mut sampler: Sampler = p.sampler.parse()?;
    if let Some(eta) = p.eta {
        sampler.eta = eta;
    }
    let sigmas = match &p.sigmas {
        Some(list) => Sigmas::parse(list)?,
        None => p.scheduler.parse::<Scheduler>()?.sigmas(denoiser.schedule(), p.steps)?,
    };
    let x = sampler.initial_latent(denoiser, &sigmas, &dims, &mut noise, device)?;
    let bar = bars.add(ProgressBar::new(sigmas.steps() as u64));
    bar.set_style(ProgressStyle::with_template("steps  {bar:30} {pos}/{len} {per_sec} [{eta_precise}]")?);
    let mut preview_error = None;
    let out = sampler.sample(denoiser, x, &sigmas, &mut noise, |step| {
        bar.set_position(step.index as u64 + 1);
        let done = step.index + 1;
        if let Some((_, write)) =
            preview.as_mut().filter(|(every, _)| done % *every == 0 && done < step.steps)
        {
            if let Err(e) = images(step.denoised.clone()).and_then(|x0| write(done, x0)) {
                preview_error.get_or_insert(e);
            }
        }
    })?;
    bar.finish_and_clear();
    if let Some(e) = preview_error {
        return Err(e.context("writing a preview"));
    }
    images(out)
}

/// Each job's file (by job index): the template with `{seed}` and `{index}` filled in, and
/// numbered `-{index}` where two jobs would get one name (one name for several images, or
/// prompts-file lines that share a seed), so no image of a run overwrites another.
fn output_paths(template: &str, jobs: &[Job]) -> Vec<PathBuf> {
    let named: Vec<String> = jobs
        .iter()
        .map(|j| {
            template.replace("{seed}", &j.params.seed.to_string()).replace("{index}", &j.index.to_string())
        })
        .collect();
    let mut uses = std::collections::HashMap::<&str, usize>::new();
    for name in &named {
        *uses.entry(name).or_default() += 1;
    }
    named
        .iter()
        .zip(jobs)
        .map(|(name, job)| {
            let p = Path::new(name);
            if uses[name.as_str()] == 1 {
                return p.to_path_buf();
            }
            let stem = p.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let ext = p.extension().map_or("png".into(), |e| e.to_string_lossy().into_owned());
            p.with_file_name(format!("{stem}-{}.{ext}", job.index))
        })
        .collect()
}

/// Writes `[3, H, W]` in [-1, 1] as an RGB PNG with the `parameters` chunk, through a
/// temporary file, so a failure never leaves a partial image.
fn write_png(path: &Path, image: &Tensor, params: &Params) -> Result<()> {
    let (c, h, w) = image.dims3()?;
    anyhow::ensure!(c == 3, "expected an RGB image, got {c} channels");
    let chw = image.clamp(-1.0, 1.0)?.flatten_all()?.to_vec1::<f32>()?;
    let mut rgb = vec![0u8; h * w * 3];
    for ch in 0..3 {
        for i in 0..h * w {
            rgb[i * 3 + ch] = ((chw[ch * h * w + i] + 1.0) * 127.5).round() as u8;
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("writing {}", path.display()))?;
    }
    let tmp = path.with_extension("png.tmp");
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        params.add_to_png(&mut encoder)?;
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  stride info stride-42.png")]
pub struct InfoArgs {
    /// A PNG written by stride (or A1111).
    image: PathBuf,
}

pub fn info(args: InfoArgs) -> Result<()> {
    println!("{}", Params::from_png(&args.image)?.to_text());
    Ok(())
}
