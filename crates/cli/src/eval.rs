//! `stride eval`: ShapesEval pass rates of the bundled model on held-out prompts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use stride_models::TinyShapes;
use stride_shapes::{
    check, is_heldout_in_every_order, perceive, Attribute, Image32, Number, Prompt, Shape, Size, World,
};
use stride_solvers::{Denoiser, Sampler, Scheduler, TorchNoise};

use crate::device::DeviceArg;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  stride eval                                   # 500 held-out prompts at 50, 20, 10 and 5 steps
  stride eval --grid assets/tiny_shapes_grid.png   # and the README's sample grid
  stride eval --steps 50 --limit 100            # a quicker look
  stride eval --steps 50 --confusion            # and which shape it drew for which, how many for `two`
  stride eval --write-heldout models/tiny-shapes/heldout_prompts.txt
  stride eval schedules                         # hand-designed vs distilled step schedules
  stride eval policy                            # the step policy against fixed step counts")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<EvalCommand>,
    #[command(flatten)]
    heldout: Heldout,
    /// Write the 500 held-out prompts of the shapes world (seed 0) to this file and exit (a
    /// model folder's heldout_prompts.txt is this list).
    #[arg(long)]
    write_heldout: Option<PathBuf>,
    /// Use only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Step counts to evaluate.
    #[arg(long, value_delimiter = ',', default_value = "50,20,10,5")]
    steps: Vec<usize>,
    #[arg(long, default_value = "dpmpp_2m")]
    sampler: String,
    #[arg(long, default_value = "uniform")]
    scheduler: String,
    #[arg(long, default_value_t = 3.0)]
    cfg_scale: f64,
    /// Prompt i is sampled with seed `seed + i`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Also write a grid of the first 64 samples at the first step count (the README's is
    /// assets/tiny_shapes_grid.png).
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Also print, for the single-object prompts that name a shape, the shape the checker read,
    /// by the size drawn (which shapes the model confuses, and at which size), and for the
    /// counted phrases ("two red circles") how many such objects it read.
    #[arg(long)]
    confusion: bool,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

/// A model folder's held-out prompts (`stride eval --write-heldout`).
const HELDOUT_FILE: &str = "heldout_prompts.txt";
/// How many held-out prompts the shapes world's evaluation set has (from seed 0).
const HELDOUT_COUNT: usize = 500;

/// `--model` and `--prompts` of the jobs that run the bundled model on held-out prompts.
#[derive(clap::Args)]
pub struct Heldout {
    /// tiny-shapes (the bundled model) or a folder holding one (config.json, tokenizer.json,
    /// model.safetensors).
    #[arg(long, alias = "model-dir", default_value = "tiny-shapes")]
    pub model: String,
    /// Held-out prompts, one a line, never seen in training (default: the model folder's
    /// heldout_prompts.txt).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
}

/// A model and the first prompts of its held-out set.
pub struct Loaded {
    pub dir: PathBuf,
    pub model: TinyShapes,
    pub prompts: Vec<Prompt>,
    /// Where the prompts came from, for messages.
    pub source: String,
}

impl Heldout {
    /// The model and its first `limit` held-out prompts (at least one).
    pub fn load(&self, limit: usize, device: &Device) -> Result<Loaded> {
        let dir = TinyShapes::dir_of(&self.model);
        let model = TinyShapes::load(&dir, device)
            .with_context(|| format!("loading the model from {}", dir.display()))?;
        let path = self.prompts.clone().unwrap_or_else(|| dir.join(HELDOUT_FILE));
        let (mut prompts, source) = if self.prompts.is_none() && !path.exists() {
            // A run folder's export has no prompts file: the bundled one is this same list.
            eprintln!(
                "note: {} has no {HELDOUT_FILE}: using the shapes world's {HELDOUT_COUNT} held-out prompts",
                dir.display()
            );
            (World::new(0).heldout_prompts(HELDOUT_COUNT), "the shapes world's held-out list".to_string())
        } else {
            // The error names the file and line.
            let prompts = stride_shapes::read_prompts(&path)?;
            (prompts, path.display().to_string())
        };
        prompts.truncate(limit);
        anyhow::ensure!(!prompts.is_empty(), "no prompts in {source}");
        // A prompt the model cannot read (too many words) fails here, not after hours of work.
        for (i, prompt) in prompts.iter().enumerate() {
            model
                .tokenize(&[prompt.text.as_str()])
                .with_context(|| format!("{source}: prompt {} (\"{}\")", i + 1, prompt.text))?;
        }
        Ok(Loaded { dir, model, prompts, source })
    }
}

#[derive(clap::Subcommand)]
enum EvalCommand {
    /// Hand-designed (uniform, karras, exponential, log-SNR, AYS) against distilled (exact DP,
    /// OSS) step schedules: PSNR against the teacher and ShapesEval pass rate, per NFE.
    Schedules(crate::eval_schedules::Args),
    /// The step policy against fixed step counts, a word-count rule and a random one: mean
    /// steps, pass rate and PSNR against the 50-step image (`stride train-policy`).
    Policy(crate::eval_policy::Args),
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(EvalCommand::Schedules(args)) => return crate::eval_schedules::run(args),
        Some(EvalCommand::Policy(args)) => return crate::eval_policy::run(args),
        None => {}
    }
    if let Some(path) = &args.write_heldout {
        let prompts = World::new(0).heldout_prompts(HELDOUT_COUNT);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        stride_shapes::write_prompts(path, &prompts)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} held-out prompts to {}", prompts.len(), path.display());
        return Ok(());
    }
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(args.steps.iter().all(|s| *s > 0), "--steps must be at least 1");
    let device = args.device.open()?;
    let Loaded { model, prompts, source, .. } =
        args.heldout.load(args.limit.unwrap_or(usize::MAX), &device)?;
    let sampler: Sampler = args.sampler.parse()?;
    let scheduler: Scheduler = args.scheduler.parse()?;
    println!(
        "ShapesEval on {} held-out prompts ({}), {} + {}, cfg {}, one seed each",
        prompts.len(),
        source,
        args.sampler,
        args.scheduler,
        args.cfg_scale
    );
    for (k, &steps) in args.steps.iter().enumerate() {
        let images = generate(&model, &prompts, &sampler, &scheduler, steps, &args, &device)?;
        if let (0, Some(grid)) = (k, &args.grid) {
            write_grid(grid, &images[..images.len().min(64)])?;
            println!("grid: {}", grid.display());
        }
        report(steps, &prompts, &images);
        if args.confusion {
            print!("{}", ShapeConfusion::count(&prompts, &images));
            print!("{}", CountConfusion::count(&prompts, &images));
        }
    }
    Ok(())
}

fn generate(
    model: &TinyShapes,
    prompts: &[Prompt],
    sampler: &Sampler,
    scheduler: &Scheduler,
    steps: usize,
    args: &Args,
    device: &Device,
) -> Result<Vec<Image32>> {
    let bar = ProgressBar::new(prompts.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}]",
    )?);
    let mut images = Vec::with_capacity(prompts.len());
    for (chunk_index, chunk) in prompts.chunks(args.batch_size).enumerate() {
        let texts: Vec<&str> = chunk.iter().map(|p| p.text.as_str()).collect();
        let denoiser = model.denoiser(&texts, args.cfg_scale)?;
        let sigmas = scheduler.sigmas(denoiser.schedule(), steps)?;
        let first = args.seed + (chunk_index * args.batch_size) as u64;
        let mut noise = TorchNoise::consecutive(first, chunk.len());
        let side = stride_shapes::SIDE;
        let x =
            sampler.initial_latent(&denoiser, &sigmas, &[chunk.len(), 3, side, side], &mut noise, device)?;
        let out = sampler.sample(&denoiser, x, &sigmas, &mut noise, |_| {})?;
        images.extend(to_images(&out)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(images)
}

/// A batch in [-1, 1] (clamped) as ShapesEval images.
pub fn to_images(batch: &Tensor) -> Result<Vec<Image32>> {
    let batch = batch.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.clamp(-1.0, 1.0)?;
    (0..batch.dim(0)?)
        .map(|i| Ok(Image32::from_chw(batch.get(i)?.flatten_all()?.to_vec1::<f32>()?)?))
        .collect()
}

/// The fraction of images that pass their prompt's ShapesEval check.
pub fn pass_rate(prompts: &[Prompt], images: &[Image32]) -> f64 {
    let passed = prompts.iter().zip(images).filter(|(p, image)| check(&p.request, image).passed()).count();
    passed as f64 / prompts.len().max(1) as f64
}

/// Prints the whole-prompt pass rate (overall and on single-object prompts) and the
/// per-attribute satisfaction.
fn report(steps: usize, prompts: &[Prompt], images: &[Image32]) {
    let mut passed = 0;
    let (mut single, mut single_passed) = (0, 0);
    let (mut unseen, mut unseen_passed) = (0, 0);
    let mut per_attribute: Vec<(Attribute, usize, usize)> = Vec::new();
    for (prompt, image) in prompts.iter().zip(images) {
        let report = check(&prompt.request, image);
        let ok = report.passed();
        passed += usize::from(ok);
        let one_object = prompt.request.phrases.len() == 1 && prompt.request.phrases[0].number == Number::A;
        if one_object {
            single += 1;
            single_passed += usize::from(ok);
        }
        if is_heldout_in_every_order(&prompt.request) {
            unseen += 1;
            unseen_passed += usize::from(ok);
        }
        for (attribute, satisfied) in report.attributes() {
            match per_attribute.iter_mut().find(|(a, _, _)| *a == attribute) {
                Some(entry) => {
                    entry.1 += usize::from(satisfied);
                    entry.2 += 1;
                }
                None => per_attribute.push((attribute, usize::from(satisfied), 1)),
            }
        }
    }
    let rate = |a: usize, b: usize| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    println!(
        "\n{steps} steps: whole-prompt pass rate {:.3} ({passed}/{}), single-object {:.3} ({single_passed}/{single})",
        rate(passed, prompts.len()),
        prompts.len(),
        rate(single_passed, single)
    );
    println!(
        "  requests held out in every phrase order (never trained in any order): {:.3} ({unseen_passed}/{unseen})",
        rate(unseen_passed, unseen)
    );
    per_attribute.sort_by_key(|(a, _, _)| *a as usize);
    println!("  {:<12} {:>8} {:>10}", "attribute", "rate", "requested");
    for (attribute, ok, total) in per_attribute {
        println!("  {:<12} {:>8.3} {:>10}", attribute.name(), rate(ok, total), total);
    }
}

/// On the single-object prompts that name a shape, which shape the checker read, by shape
/// asked and size drawn.
#[derive(Debug, Default, PartialEq)]
struct ShapeConfusion {
    /// `counts[asked][size drawn][read]`, `read` a shape's index or `NONE`: no object of the
    /// asked colour, counted under the size asked (small when the prompt leaves it free).
    counts: [[[usize; Shape::ALL.len() + 1]; 2]; Shape::ALL.len()],
}

impl ShapeConfusion {
    const NONE: usize = Shape::ALL.len();

    fn count(prompts: &[Prompt], images: &[Image32]) -> Self {
        let mut confusion = Self::default();
        for (prompt, image) in prompts.iter().zip(images) {
            let [phrase] = prompt.request.phrases.as_slice() else { continue };
            let (Number::A, Some(asked)) = (phrase.number, phrase.shape) else { continue };
            let seen = perceive(image);
            // The largest object of the asked colour stands for the phrase.
            let read = seen
                .objects
                .iter()
                .filter(|s| phrase.color.is_none_or(|c| s.object.color == c))
                .max_by_key(|s| s.area);
            let (size, column) = match read {
                Some(s) => (s.object.size, s.object.shape as usize),
                None => (phrase.size.unwrap_or(Size::Small), Self::NONE),
            };
            confusion.counts[asked as usize][size as usize][column] += 1;
        }
        confusion
    }
}

impl std::fmt::Display for ShapeConfusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  shape read on single-object prompts naming one, by size drawn (none: no object of the colour)"
        )?;
        write!(f, "  {:<9} {:<6} {:>4}", "asked", "size", "n")?;
        for name in Shape::ALL.iter().map(|s| s.name()).chain(["none"]) {
            write!(f, "{name:>9}")?;
        }
        writeln!(f)?;
        for asked in Shape::ALL {
            for size in [Size::Small, Size::Large] {
                let row = &self.counts[asked as usize][size as usize];
                let n: usize = row.iter().sum();
                if n > 0 {
                    write!(f, "  {:<9} {:<6} {n:>4}", asked.name(), size.name())?;
                    for c in row {
                        write!(f, "{c:>9}")?;
                    }
                    writeln!(f)?;
                }
            }
        }
        Ok(())
    }
}

/// On the counted phrases ("two red circles"), how many objects of the phrase's kind the
/// checker read, by the count asked.
#[derive(Debug, Default, PartialEq)]
struct CountConfusion {
    /// `counts[asked - 2][read]`, `read` capped at `MANY` ("5+").
    counts: [[usize; Self::MANY + 1]; 2],
}

impl CountConfusion {
    const MANY: usize = 5;

    fn count(prompts: &[Prompt], images: &[Image32]) -> Self {
        let mut confusion = Self::default();
        for (prompt, image) in prompts.iter().zip(images) {
            for phrase in check(&prompt.request, image).phrases {
                if let Some(asked) = phrase.phrase.number.count() {
                    confusion.counts[asked - 2][phrase.found.min(Self::MANY)] += 1;
                }
            }
        }
        confusion
    }
}

impl std::fmt::Display for CountConfusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  objects read for counted phrases (of the phrase's size, colour and shape)")?;
        write!(f, "  {:<9} {:>4}", "asked", "n")?;
        for read in 0..Self::MANY {
            write!(f, "{read:>6}")?;
        }
        writeln!(f, "{:>6}", format!("{}+", Self::MANY))?;
        for (row, asked) in self.counts.iter().zip([Number::Two, Number::Three]) {
            let n: usize = row.iter().sum();
            if n > 0 {
                write!(f, "  {:<9} {n:>4}", asked.name())?;
                for c in row {
                    write!(f, "{c:>6}")?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// Writes images as an 8-wide grid, each scaled 4x (nearest), as PNG.
pub fn write_grid(path: &Path, images: &[Image32]) -> Result<()> {
    let (cols, scale, side) = (8usize, 4usize, stride_shapes::SIDE);
    let rows = images.len().div_ceil(cols).max(1);
    let (w, h) = (cols * side * scale, rows * side * scale);
    let mut rgb = vec![255u8; w * h * 3];
    for (i, image) in images.iter().enumerate() {
        let pixels = image.to_rgb8();
        let (ox, oy) = ((i % cols) * side * scale, (i / cols) * side * scale);
        for y in 0..side * scale {
            for x in 0..side * scale {
                let src = ((y / scale) * side + x / scale) * 3;
                let dst = ((oy + y) * w + ox + x) * 3;
                rgb[dst..dst + 3].copy_from_slice(&pixels[src..src + 3]);
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&rgb)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clean renders of single-object scenes are read as drawn: every count lands on the
    /// diagonal, under the size rendered; a blank image lands under "none".
    #[test]
    fn shape_confusion_of_clean_scenes_is_diagonal() {
        let world = World::new(3);
        let samples: Vec<_> = world
            .samples(0)
            .filter(|s| {
                let p = &s.prompt.request.phrases;
                p.len() == 1 && p[0].number == Number::A && p[0].shape.is_some() && s.scene.objects.len() == 1
            })
            .take(200)
            .collect();
        let prompts: Vec<Prompt> = samples.iter().map(|s| s.prompt.clone()).collect();
        let images: Vec<Image32> = samples.iter().map(|s| stride_shapes::render(&s.scene)).collect();
        let confusion = ShapeConfusion::count(&prompts, &images);
        let mut expected = ShapeConfusion::default();
        for s in &samples {
            let o = s.scene.objects[0];
            expected.counts[o.shape as usize][o.size as usize][o.shape as usize] += 1;
        }
        assert_eq!(confusion, expected);
        // Every shape and size is in the sample, so the test covers the whole table.
        assert!(expected.counts.iter().flatten().all(|row| row.iter().sum::<usize>() > 0));

        let blank = vec![Image32::filled(stride_shapes::Color::ALL[0]); prompts.len()];
        let none = ShapeConfusion::count(&prompts, &blank);
        let found: usize =
            none.counts.iter().flatten().map(|row| row[..ShapeConfusion::NONE].iter().sum::<usize>()).sum();
        assert_eq!(found, 0);
        assert_eq!(
            none.counts.iter().flatten().map(|row| row[ShapeConfusion::NONE]).sum::<usize>(),
            prompts.len()
        );
    }

    /// On clean renders a counted phrase reads exactly its count (the generator's prompts are
    /// true of their scenes); on a blank image it reads none.
    #[test]
    fn count_confusion_of_clean_scenes_is_exact() {
        let samples: Vec<_> = World::new(4)
            .samples(0)
            .filter(|s| s.prompt.request.phrases.iter().any(|p| p.number != Number::A))
            .take(200)
            .collect();
        let prompts: Vec<Prompt> = samples.iter().map(|s| s.prompt.clone()).collect();
        let images: Vec<Image32> = samples.iter().map(|s| stride_shapes::render(&s.scene)).collect();
        let mut expected = CountConfusion::default();
        let mut blank_expected = CountConfusion::default();
        for phrase in prompts.iter().flat_map(|p| &p.request.phrases) {
            if let Some(asked) = phrase.number.count() {
                expected.counts[asked - 2][asked] += 1;
                blank_expected.counts[asked - 2][0] += 1;
            }
        }
        assert_eq!(CountConfusion::count(&prompts, &images), expected);
        // Both "two" and "three" are in the sample.
        assert!(expected.counts.iter().all(|row| row.iter().sum::<usize>() > 0));

        let blank = vec![Image32::filled(stride_shapes::Color::ALL[0]); prompts.len()];
        assert_eq!(CountConfusion::count(&prompts, &blank), blank_expected);
    }
}
