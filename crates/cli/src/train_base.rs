//! `stride train-base`: trains the bundled tiny-shapes model.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use stride_models::tiny_shapes::train::{TrainConfig, Trainer};

use crate::device::DeviceArg;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  stride train-base --out runs/tiny-shapes                 # the default recipe (README: the bundled model)
  stride train-base --out runs/tiny-shapes --resume        # continue a killed run exactly
  stride train-base --out runs/smoke --steps 20 --batch-size 8
  stride train-base --out runs/ft --config ft.json --init models/tiny-shapes   # fine-tune the bundled weights
  stride train-base --out runs/tiny-shapes --stop-at 13384 --export runs/init   # the bundled weights' CPU part

Ctrl-C writes the checkpoint after the step in flight and stops; --resume continues.")]
pub struct Args {
    /// Run folder: the checkpoint (checkpoint.safetensors, and checkpoint.json with the run's
    /// settings and step).
    #[arg(long, default_value = "runs/tiny-shapes")]
    out: PathBuf,
    /// Continue from the checkpoint in --out with its settings (bit-identical to an
    /// uninterrupted run).
    #[arg(long, conflicts_with_all = ["config", "batch_size", "lr", "seed", "init"])]
    resume: bool,
    /// Training config JSON (fields of TrainConfig); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Total optimisation steps. With --resume it extends or shortens the run; the cosine
    /// learning rate follows the new total, so only an unchanged total resumes bit for bit.
    #[arg(long)]
    steps: Option<u64>,
    /// Stop after this step and write the checkpoint, leaving the rest of the run's schedule
    /// (--steps) to a later --resume: a chunk of the run, the same as killing it there.
    #[arg(long)]
    stop_at: Option<u64>,
    /// Scenes per step (default 32).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak AdamW learning rate, reached after the warm-up, then cosine to 0 (default 7e-4).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initialisation and of every step's scenes, noise and times (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Start from these weights (a model folder, e.g. models/tiny-shapes) instead of the
    /// seeded initialisation: a fine-tune. The run's model config (--config, or the default)
    /// must have the same parameters.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Minutes between checkpoints.
    #[arg(long, default_value_t = 5.0)]
    checkpoint_minutes: f64,
    /// Also export the EMA weights as a model folder here when done (e.g. models/tiny-shapes).
    #[arg(long)]
    export: Option<PathBuf>,
    /// Export the raw weights instead of the EMA ones.
    #[arg(long)]
    export_raw: bool,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    // Negative, NaN, infinite and too-large values are all refused here.
    let every = Duration::try_from_secs_f64(args.checkpoint_minutes * 60.0).map_err(|_| {
        anyhow::anyhow!(
            "--checkpoint-minutes must be a number of minutes >= 0 (0: after every step), got {}",
            args.checkpoint_minutes
        )
    })?;
    anyhow::ensure!(
        args.resume || !args.out.join("checkpoint.json").exists(),
        "{} already holds a training run: continue it with --resume, or choose another --out",
        args.out.display()
    );
    anyhow::ensure!(args.stop_at != Some(0), "--stop-at must be a step of at least 1");
    let device = args.device.open()?;
    crate::interrupt::install("the step in flight, writing the checkpoint");
    let mut trainer = if args.resume {
        Trainer::resume(&args.out, args.steps, &device)
            .with_context(|| format!("resuming from {}", args.out.display()))?
    } else {
        let mut config = match &args.config {
            Some(path) => serde_json::from_str(
                &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("parsing {}", path.display()))?,
            None => TrainConfig::default(),
        };
        config.steps = args.steps.unwrap_or(config.steps);
        config.batch_size = args.batch_size.unwrap_or(config.batch_size);
        config.lr = args.lr.unwrap_or(config.lr);
        config.seed = args.seed.unwrap_or(config.seed);
        config.init = args.init.or(config.init);
        anyhow::ensure!(
            config.steps > 0 && config.batch_size > 0,
            "--steps and --batch-size must be at least 1"
        );
        Trainer::new(config, &device)?
    };
    let total = trainer.config.steps;
    let stop = args.stop_at.map_or(total, |s| s.min(total));
    anyhow::ensure!(
        stop >= trainer.step,
        "--stop-at {stop}: the run in {} is already at step {}",
        args.out.display(),
        trainer.step
    );
    eprintln!(
        "training tiny-shapes: {:.2}M parameters, step {} of {total}, batch {}, run folder {}",
        trainer.parameter_count() as f64 / 1e6,
        trainer.step,
        trainer.config.batch_size,
        args.out.display()
    );
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(trainer.step);
    let mut last_save = Instant::now();
    let mut smoothed = None;
    while trainer.step < stop {
        let loss = trainer.train_step()?;
        // Stop before a diverged run's weights overwrite the last good checkpoint.
        anyhow::ensure!(
            loss.is_finite(),
            "the loss is {loss} at step {}: training diverged; the last checkpoint in {} is intact",
            trainer.step,
            args.out.display()
        );
        let s = smoothed.map_or(loss, |m: f32| 0.98 * m + 0.02 * loss);
        smoothed = Some(s);
        bar.set_position(trainer.step);
        bar.set_message(format!("loss {s:.4}"));
        // An interrupt during the last step changes nothing: the run ends (and exports) as asked.
        let interrupted = crate::interrupt::requested() && trainer.step < stop;
        if last_save.elapsed() >= every || trainer.step == stop || interrupted {
            trainer.save_checkpoint(&args.out)?;
            last_save = Instant::now();
            if bar.is_hidden() && !args.quiet {
                // Not a terminal (a batch job's log): a line per checkpoint instead of the bar.
                eprintln!(
                    "step {}/{total}, loss {s:.4}, {:.2} steps/s, checkpoint written",
                    trainer.step,
                    bar.per_sec()
                );
            }
        }
        if interrupted {
            bar.abandon();
            return Err(crate::interrupt::Stopped(format!(
                "stopped at step {} of {total}; the checkpoint is written. Continue with: \
                 stride train-base --out {} --resume",
                trainer.step,
                args.out.display()
            ))
            .into());
        }
    }
    bar.finish();
    if let Some(dir) = &args.export {
        trainer.export_weights(dir, !args.export_raw)?;
        let which = if args.export_raw { "raw" } else { "EMA" };
        eprintln!("exported the {which} weights to {}", dir.display());
    }
    Ok(())
}
