//! `stride generate`: text to image with the bundled model (Stable Diffusion to come), and
//! `stride info`: the parameters stored in an image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use stride_models::TinyShapes;
use stride_solvers::{AdaptiveSampler, Denoiser, Sampler, Scheduler, Sigmas, TorchNoise};

use crate::device::DeviceArg;
use crate::params::Params;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  stride generate \"a red circle above a blue square\"
  stride generate \"two green crosses on a black background\" --seed 7 --steps 20 --sampler euler
  stride generate \"a large yellow triangle\" --num-samples 4 -o out/{seed}.png
  stride generate \"a small red square\" --sigmas \"99,3,1,0.3,0\"
  stride generate --from stride-42.png            # regenerate an image from its metadata")]
pub struct Args {
    /// What to draw.
    prompt: Option<String>,
    /// Model: tiny-shapes (bundled) or a folder holding one (config.json, tokenizer.json,
    /// model.safetensors).
    #[arg(long, default_value = "tiny-shapes")]
    model: String,
    /// Folder with the model's files (overrides where --model looks).
    #[arg(long)]
    weights_dir: Option<PathBuf>,
    /// Sampler (euler, euler_ancestral, heun, ddim, dpmpp_2m, dpmpp_3m, dpmpp_2s,
    /// dpmpp_2s_ancestral, dpmpp_2m_sde, dpmpp_3m_sde; adaptive: adaptive_sde, dpm_adaptive).
    #[arg(long, default_value = "dpmpp_2m")]
    sampler: String,
    /// Step schedule (uniform, karras, exponential, ...; flow models start from pure noise, so
    /// uniform is the one that needs no sigma_max).
    #[arg(long, default_value = "uniform")]
    scheduler: String,
    /// A custom schedule, comma-separated k-diffusion sigmas (as stable-diffusion.cpp).
    #[arg(long)]
    sigmas: Option<String>,
    #[arg(long, default_value_t = 20)]
    steps: usize,
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
    #[arg(long, default_value_t = 1000)]
    max_nfe: usize,
    #[arg(long, default_value_t = 3.0)]
    cfg_scale: f64,
    /// What to steer away from (replaces the empty prompt of classifier-free guidance).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Seed of the first image (random, and printed, when absent); image i uses seed + i.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// One prompt a line (blank lines and lines starting with # are skipped).
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// Output path; {seed} and {index} are replaced.
    #[arg(short, long, default_value = "stride-{seed}.png")]
    output: String,
    /// Regenerate the image whose PNG metadata is in this file.
    #[arg(long)]
    from: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Compute dtype (tiny-shapes runs in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// One image to make.
struct Job {
    params: Params,
    index: usize,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.dtype == "f32", "--dtype {}: tiny-shapes runs in f32", args.dtype);
    anyhow::ensure!(
        args.batch_size > 0 && args.num_samples > 0,
        "--batch-size and --num-samples must be at least 1"
    );
    let jobs = jobs(&args)?;
    let device = args.device.open()?;
    let model_dir = model_dir(&args, &jobs[0].params.model)?;
    let model = TinyShapes::load(&model_dir, &device)
        .with_context(|| format!("loading the model from {}", model_dir.display()))?;
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
        let images = sample(&model, batch, args.max_nfe, &device, &bars)?;
        for (job, image) in batch.iter().zip(images) {
            let path = output_path(&args.output, &job.params, job.index, jobs.len());
            write_png(&path, &image, &job.params)?;
            total.suspend(|| println!("{} (seed {})", path.display(), job.params.seed));
        }
        total.inc(batch.len() as u64);
        start = end;
    }
    total.finish_and_clear();
    Ok(())
}

/// The images to make, from --from, --prompts-file or the prompt argument.
fn jobs(args: &Args) -> Result<Vec<Job>> {
    if let Some(path) = &args.from {
        let params = Params::from_png(path)?;
        return Ok(vec![Job { params, index: 0 }]);
    }
    let prompts: Vec<String> = match (&args.prompt, &args.prompts_file) {
        (Some(_), Some(_)) => bail!("give a prompt or --prompts-file, not both"),
        (Some(p), None) => vec![p.clone()],
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        (None, None) => bail!("what should the image show? e.g. stride generate \"a red circle\""),
    };
    anyhow::ensure!(!prompts.is_empty(), "the prompts file has no prompts");
    if let Some(i) = prompts.iter().position(|p| p.trim().is_empty()) {
        bail!("prompt {} is empty: describe the image, e.g. \"a red circle\"", i + 1);
    }
    // Validate names and numbers before loading anything.
    if args.sampler.parse::<AdaptiveSampler>().is_err() {
        let _: Sampler = args.sampler.parse()?;
    }
    for (name, tol) in [("--rtol", args.rtol), ("--atol", args.atol)] {
        anyhow::ensure!(tol.is_none_or(|t| t.is_finite() && t > 0.0), "{name} must be a positive number");
    }
    anyhow::ensure!(args.max_nfe > 0, "--max-nfe must be at least 1");
    let _: Scheduler = args.scheduler.parse()?;
    if let Some(s) = &args.sigmas {
        Sigmas::parse(s).context("--sigmas")?;
    }
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(args.cfg_scale.is_finite(), "--cfg-scale must be a finite number");
    if let Some(eta) = args.eta {
        anyhow::ensure!(eta.is_finite() && eta >= 0.0, "--eta must be a finite number >= 0");
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut jobs = Vec::new();
    for prompt in &prompts {
        for i in 0..args.num_samples {
            let index = jobs.len();
            let params = Params {
                prompt: prompt.clone(),
                negative_prompt: args.negative_prompt.clone(),
                steps: args.steps,
                sampler: args.sampler.clone(),
                scheduler: args.scheduler.clone(),
                sigmas: args.sigmas.clone(),
                eta: args.eta,
                rtol: args.rtol,
                atol: args.atol,
                cfg_scale: args.cfg_scale,
                seed: seed.wrapping_add(i as u64),
                width: stride_shapes::SIDE,
                height: stride_shapes::SIDE,
                model: args.model.clone(),
            };
            jobs.push(Job { params, index });
        }
    }
    Ok(jobs)
}

fn random_seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos % u32::MAX as u128) as u64
}

fn model_dir(args: &Args, model: &str) -> Result<PathBuf> {
    if let Some(dir) = &args.weights_dir {
        return Ok(dir.clone());
    }
    match model {
        "tiny-shapes" => Ok(TinyShapes::default_dir()),
        "sd15" | "sd21" | "sdxl" | "sd-turbo" | "sdxl-turbo" => {
            bail!("--model {model}: Stable Diffusion is not in this version of stride yet; use --model tiny-shapes")
        }
        path if Path::new(path).is_dir() => Ok(PathBuf::from(path)),
        other => bail!("--model {other}: not a known model (tiny-shapes) nor a folder"),
    }
}

fn same_but_seed(a: &Params, b: &Params) -> bool {
    Params { seed: 0, ..a.clone() } == Params { seed: 0, ..b.clone() }
}

/// Samples a batch of jobs that differ only in their seeds.
fn sample(
    model: &TinyShapes,
    batch: &[Job],
    max_nfe: usize,
    device: &Device,
    bars: &MultiProgress,
) -> Result<Vec<Tensor>> {
    let p = &batch[0].params;
    let prompts: Vec<&str> = batch.iter().map(|j| j.params.prompt.as_str()).collect();
    let denoiser = model.denoiser_with_negative(&prompts, &p.negative_prompt, p.cfg_scale)?;
    let seeds: Vec<u64> = batch.iter().map(|j| j.params.seed).collect();
    let mut noise = TorchNoise::new(&seeds);
    let dims = [batch.len(), 3, p.height, p.width];
    if let Ok(mut adaptive) = p.sampler.parse::<AdaptiveSampler>() {
        adaptive.set_tolerances(p.rtol, p.atol);
        adaptive.set_max_nfe(max_nfe);
        let (hi, lo) = AdaptiveSampler::sigma_range(denoiser.schedule());
        let x = adaptive.initial_latent(&denoiser, hi, &dims, &mut noise, device)?;
        let bar = bars.add(ProgressBar::new_spinner());
        let (out, stats) = adaptive.sample(&denoiser, x, hi, lo, &mut noise, |step| {
            bar.set_message(format!("iteration {}", step.iteration + 1));
        })?;
        bar.finish_and_clear();
        bars.suspend(|| {
            eprintln!("{stats}");
            for warning in stats.warnings() {
                eprintln!("warning: {warning}");
            }
        });
        let out = out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        return (0..batch.len()).map(|i| Ok(out.get(i)?)).collect();
    }
    let mut sampler: Sampler = p.sampler.parse()?;
    if let Some(eta) = p.eta {
        sampler.eta = eta;
    }
    let sigmas = match &p.sigmas {
        Some(list) => Sigmas::parse(list)?,
        None => p.scheduler.parse::<Scheduler>()?.sigmas(denoiser.schedule(), p.steps)?,
    };
    let x = sampler.initial_latent(&denoiser, &sigmas, &dims, &mut noise, device)?;
    let bar = bars.add(ProgressBar::new(sigmas.steps() as u64));
    bar.set_style(ProgressStyle::with_template("steps  {bar:30} {pos}/{len} {per_sec} [{eta_precise}]")?);
    let out =
        sampler.sample(&denoiser, x, &sigmas, &mut noise, |step| bar.set_position(step.index as u64 + 1))?;
    bar.finish_and_clear();
    let out = out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    (0..batch.len()).map(|i| Ok(out.get(i)?)).collect()
}

fn output_path(template: &str, params: &Params, index: usize, count: usize) -> PathBuf {
    let mut path =
        template.replace("{seed}", &params.seed.to_string()).replace("{index}", &index.to_string());
    if count > 1 && !template.contains("{seed}") && !template.contains("{index}") {
        // Several images, one name: number them rather than overwrite.
        let p = Path::new(&path);
        let stem = p.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
        let ext = p.extension().map_or("png".into(), |e| e.to_string_lossy().into_owned());
        path = p.with_file_name(format!("{stem}-{index}.{ext}")).to_string_lossy().into_owned();
    }
    PathBuf::from(path)
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
        encoder.add_text_chunk("parameters".into(), params.to_text())?;
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
