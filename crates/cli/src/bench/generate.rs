//! `stride bench generate`: speed of the bundled model, and the solver's share of each step.

use std::cell::Cell;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use stride_models::TinyShapes;
use stride_solvers::{Denoiser, NoiseSchedule, Parameterization, Sampler, Scheduler, TorchNoise};

#[derive(clap::Args)]
pub struct Args {
    /// tiny-shapes (the bundled model) or a folder holding one.
    #[arg(long, alias = "model-dir", default_value = "tiny-shapes")]
    model: String,
    #[arg(long, default_value = "dpmpp_2m")]
    sampler: String,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 3.0)]
    cfg_scale: f64,
    /// Timed runs per batch size (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Wraps a denoiser and adds up the time spent inside it.
struct Timed<'a, D> {
    inner: &'a D,
    seconds: Cell<f64>,
}

impl<D: Denoiser> Denoiser for Timed<'_, D> {
    fn schedule(&self) -> &NoiseSchedule {
        self.inner.schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.inner.parameterization()
    }
    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> candle_core::Result<Tensor> {
        let start = Instant::now();
        let out = self.inner.predict(x, sigmas);
        self.seconds.set(self.seconds.get() + start.elapsed().as_secs_f64());
        out
    }
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.runs > 0 && args.steps > 0, "--runs and --steps must be at least 1");
    let dir = TinyShapes::dir_of(&args.model);
    let model = TinyShapes::load(&dir, &Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
    let sampler: Sampler = args.sampler.parse()?;
    println!(
        "tiny-shapes on CPU ({} threads), {} x {} steps, cfg {} (2 network passes per step)",
        candle_core::utils::get_num_threads(),
        args.sampler,
        args.steps,
        args.cfg_scale
    );
    println!(
        "{:>6} {:>10} {:>12} {:>14} {:>14}",
        "batch", "images/s", "s / step", "model share", "solver share"
    );
    for &batch in &args.batch {
        anyhow::ensure!(batch > 0, "--batch sizes must be at least 1");
        let prompts = vec!["a large red circle in the top left and a small blue square at the bottom"; batch];
        let denoiser = model.denoiser(&prompts, args.cfg_scale)?;
        let timed = Timed { inner: &denoiser, seconds: Cell::new(0.0) };
        let sigmas = Scheduler::Uniform.sigmas(timed.schedule(), args.steps)?;
        let mut total = 0.0;
        for run in 0..=args.runs {
            let mut noise = TorchNoise::consecutive(run as u64, batch);
            let x = sampler.initial_latent(&timed, &sigmas, &[batch, 3, 32, 32], &mut noise, &Device::Cpu)?;
            if run == 1 {
                timed.seconds.set(0.0); // the warm-up run does not count
            }
            let start = Instant::now();
            sampler.sample(&timed, x, &sigmas, &mut noise, |_| {})?;
            if run > 0 {
                total += start.elapsed().as_secs_f64();
            }
        }
        let per_step = total / (args.runs * args.steps) as f64;
        let model_share = timed.seconds.get() / total;
        println!(
            "{batch:>6} {:>10.2} {per_step:>12.4} {:>13.1}% {:>13.1}%",
            (args.runs * batch) as f64 / total,
            100.0 * model_share,
            100.0 * (1.0 - model_share)
        );
    }
    Ok(())
}
