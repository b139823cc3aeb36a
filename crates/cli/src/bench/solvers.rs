//! `stride bench solvers`: accuracy, overhead and memory of every solver.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use stride_models::GaussianMixture;
use stride_solvers::{
    Denoiser, DiscreteSchedule, NoiseSchedule, NoiseSource, Parameterization, Sampler, SamplerKind,
    Scheduler, Sigmas, TorchNoise, SAMPLERS,
};

use crate::alloc;
use crate::plot::{log_log_chart, Series};

#[derive(clap::Args)]
pub struct Args {
    /// Model evaluations to compare at.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,50")]
    nfe: Vec<usize>,
    /// Latent shape of one sample (C,H,W).
    #[arg(long, value_delimiter = ',', default_value = "4,64,64")]
    shape: Vec<usize>,
    /// Samples per run (the error is the RMS over all of them).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Fewer schedules and repetitions, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Where to write the error-vs-NFE plot.
    #[arg(long, default_value = "assets/bench_solvers.svg")]
    plot: PathBuf,
}

/// The deterministic solvers whose error against the exact ODE solution is meaningful (the
/// ancestral and SDE ones solve a different, random problem), with their display names.
fn ode_solvers() -> Vec<(&'static str, Sampler)> {
    let mut heun_2m = Sampler::new(SamplerKind::Dpmpp2m);
    heun_2m.heun_correction = true;
    let mut exact_3m = Sampler::new(SamplerKind::Dpmpp3m);
    exact_3m.taylor_exact_d2 = true;
    vec![
        ("euler (=ddim)", Sampler::new(SamplerKind::Euler)),
        ("heun", Sampler::new(SamplerKind::Heun)),
        ("dpmpp_2s", Sampler::new(SamplerKind::Dpmpp2s)),
        ("dpmpp_2m", Sampler::new(SamplerKind::Dpmpp2m)),
        ("dpmpp_2m heun", heun_2m),
        ("dpmpp_3m", Sampler::new(SamplerKind::Dpmpp3m)),
        ("dpmpp_3m taylor", exact_3m),
    ]
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(
        args.shape.len() == 3 && args.shape.iter().all(|&d| d > 0),
        "--shape must be three dimensions C,H,W of at least 1, e.g. 4,64,64"
    );
    anyhow::ensure!(args.nfe.iter().all(|n| *n > 0), "--nfe values must be at least 1");
    let dims: Vec<usize> = std::iter::once(args.batch).chain(args.shape.iter().copied()).collect();
    let dim: usize = args.shape.iter().product();
    accuracy(&args, &dims, dim)?;
    overhead(&args)?;
    Ok(())
}

/// Error of each ODE solver x schedule at fixed NFE against the exact solution.
fn accuracy(args: &Args, dims: &[usize], dim: usize) -> Result<()> {
    let schedule = NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion());
    let model = GaussianMixture::synthetic(dim, 8, schedule.clone())?;
    let family = schedule.family();
    let schedulers: Vec<&str> = if args.quick {
        vec!["karras", "exponential"]
    } else {
        vec!["karras", "exponential", "logsnr", "uniform", "trailing", "leading", "ays"]
    };
    let z = TorchNoise::consecutive(0, args.batch).sample(&dims.into(), DType::F64, &Device::Cpu)?;
    // The exact solution from (z, s0) down to the schedule's last non-zero sigma, then the same
    // final x0 step every schedule ends with: it isolates the solver's error from the error of
    // stopping the ODE early, which all solvers share.
    let mut exact: Vec<((f64, f64, bool), Tensor)> = Vec::new();
    let mut reference_for = |sigmas: &Sigmas| -> Result<Tensor> {
        let s = sigmas.as_slice();
        let to_zero = sigmas.last() == 0.0;
        let (s0, s_end) = (s[0], if to_zero { s[s.len() - 2] } else { sigmas.last() });
        if let Some((_, x)) = exact.iter().find(|(key, _)| *key == (s0, s_end, to_zero)) {
            return Ok(x.clone());
        }
        let steps = if args.quick { 300 } else { 1000 };
        let mut fine: Vec<f64> = Scheduler::LogSnr
            .sigmas(&NoiseSchedule::Ve { sigma_min: s_end, sigma_max: s0 }, steps)?
            .as_slice()
            .to_vec();
        if to_zero {
            fine.push(0.0);
        }
        let mut solver = Sampler::new(SamplerKind::Dpmpp3m);
        solver.taylor_exact_d2 = true;
        let x = z.affine(family.sigma(s0), 0.0)?;
        let out = solver.sample(&model, x, &Sigmas::new(fine)?, &mut TorchNoise::new(&[0]), |_| {})?;
        exact.push(((s0, s_end, to_zero), out.clone()));
        Ok(out)
    };

    println!(
        "\nRMS error against the exact solution (Gaussian mixture, 8 components, {dims:?}, f64; \
         exact = ODE to the schedule's last sigma, then its final x0 step)"
    );
    print!("{:<16} {:<12}", "solver", "schedule");
    for nfe in &args.nfe {
        print!(" {:>10}", format!("NFE {nfe}"));
    }
    println!();
    let mut plot = Vec::new();
    for (name, sampler) in ode_solvers() {
        for scheduler_name in &schedulers {
            let scheduler: Scheduler = scheduler_name.parse()?;
            print!("{name:<16} {scheduler_name:<12}");
            let mut points = Vec::new();
            for &nfe in &args.nfe {
                let Some(sigmas) = sigmas_for_nfe(&sampler, &scheduler, &schedule, nfe)? else {
                    print!(" {:>10}", "-");
                    continue;
                };
                let reference = reference_for(&sigmas)?;
                let x = z.affine(family.sigma(sigmas.first()), 0.0)?;
                let out = sampler.sample(&model, x, &sigmas, &mut TorchNoise::new(&[0]), |_| {})?;
                let rms = (out - &reference)?.sqr()?.mean_all()?.to_scalar::<f64>()?.sqrt();
                print!(" {rms:>10.2e}");
                points.push((nfe as f64, rms));
            }
            println!();
            if *scheduler_name == "karras" {
                plot.push(Series { name: name.to_string(), points });
            }
        }
    }
    log_log_chart(
        &args.plot,
        "ODE solvers on a Gaussian mixture (Karras schedule)",
        "NFE",
        "RMS error",
        &plot,
    )?;
    println!("plot: {}", args.plot.display());
    Ok(())
}

/// The longest schedule whose NFE for this sampler is at most `nfe` (None if even one step
/// costs more).
fn sigmas_for_nfe(
    sampler: &Sampler,
    scheduler: &Scheduler,
    schedule: &NoiseSchedule,
    nfe: usize,
) -> Result<Option<Sigmas>> {
    for steps in (1..=nfe).rev() {
        let sigmas = scheduler.sigmas(schedule, steps)?;
        if sampler.nfe(schedule.family(), &sigmas) <= nfe {
            return Ok(Some(sigmas));
        }
    }
    Ok(None)
}

/// A denoiser that costs nothing: predicts x0 = x without allocating.
struct Free(NoiseSchedule);

impl Denoiser for Free {
    fn schedule(&self) -> &NoiseSchedule {
        &self.0
    }
    fn parameterization(&self) -> Parameterization {
        Parameterization::X0
    }
    fn predict(&self, x: &Tensor, _sigmas: &[f64]) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }
}

/// Solver time per step and live latent buffers, next to one evaluation of a 1M-parameter
/// convolutional network on the same latent.
fn overhead(args: &Args) -> Result<()> {
    let device = Device::Cpu;
    let dims: Vec<usize> = std::iter::once(1).chain(args.shape.iter().copied()).collect();
    let latent_bytes = dims.iter().product::<usize>() * 4;
    let (network, params) = small_unet(args.shape[0], &device)?;
    let input = Tensor::zeros(dims.as_slice(), DType::F32, &device)?;
    let runs = if args.quick { 3 } else { 10 };
    network.forward(&input)?; // warm-up
    let mut model_times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            network.forward(&input).map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<candle_core::Result<_>>()?;
    model_times.sort_by(f64::total_cmp);
    let model_us = model_times[runs / 2] * 1e6;
    println!(
        "\nOne evaluation of a {:.2}M-parameter conv net on {dims:?} (f32, CPU, {} threads): {:.0} us (median of {runs})",
        params as f64 / 1e6,
        candle_core::utils::get_num_threads(),
        model_us
    );
    println!("\nSolver overhead per model evaluation (denoiser that costs nothing, {dims:?}, f32)");
    println!(
        "{:<20} {:>12} {:>14} {:>18} {:>12}",
        "solver", "us / NFE", "% of model", "peak live latents", "order + 2"
    );
    let model = Free(NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion()));
    let steps = if args.quick { 50 } else { 200 };
    let sigmas = Scheduler::Karras { rho: 7.0 }.sigmas(model.schedule(), steps)?;
    for (name, kind) in SAMPLERS {
        let sampler = Sampler::new(*kind);
        let mut noise = TorchNoise::new(&[0]);
        let x = sampler.initial_latent(&model, &sigmas, &dims, &mut noise, &device)?;
        let mut nfe = 0;
        // Warm-up, then a measured run; the peak counts the input state (held by the caller
        // here) plus every allocation during the run.
        sampler.sample(&model, x.clone(), &sigmas, &mut noise, |s| nfe = s.nfe)?;
        let baseline = alloc::reset_peak();
        let start = Instant::now();
        let out = sampler.sample(&model, x.clone(), &sigmas, &mut noise, |_| {})?;
        let elapsed = start.elapsed().as_secs_f64();
        let peak = 1.0 + alloc::peak().saturating_sub(baseline) as f64 / latent_bytes as f64;
        drop(out);
        let per_nfe_us = elapsed * 1e6 / nfe as f64;
        println!(
            "{name:<20} {per_nfe_us:>12.1} {:>13.2}% {peak:>18.1} {:>12}",
            100.0 * per_nfe_us / model_us,
            kind.order() + 2
        );
    }
    Ok(())
}

/// A small UNet-shaped conv net (two resolutions down and back, SiLU), about 1M parameters:
/// the cost of "one model evaluation" the solver overhead is compared with.
fn small_unet(channels: usize, device: &Device) -> Result<(impl Module, usize)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let conv = |cin, cout, stride, name: &str| {
        let cfg = Conv2dConfig { padding: 1, stride, ..Default::default() };
        candle_nn::conv2d(cin, cout, 3, cfg, vb.pp(name))
    };
    let layers = vec![
        conv(channels, 64, 1, "in")?,
        conv(64, 64, 1, "a1")?,
        conv(64, 128, 2, "down1")?,
        conv(128, 128, 1, "b1")?,
        conv(128, 128, 2, "down2")?,
        conv(128, 128, 1, "c1")?,
        conv(128, 128, 1, "c2")?,
        conv(128, 128, 1, "c3")?,
        conv(128, 128, 1, "up2")?,
        conv(128, 64, 1, "up1")?,
        conv(64, channels, 1, "out")?,
    ];
    let params = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let net = move |x: &Tensor| -> candle_core::Result<Tensor> {
        let silu = |t: Tensor| candle_nn::ops::silu(&t);
        let h0 = silu(layers[1].forward(&silu(layers[0].forward(x)?)?)?)?;
        let h1 = silu(layers[3].forward(&silu(layers[2].forward(&h0)?)?)?)?;
        let mut h2 = silu(layers[4].forward(&h1)?)?;
        for layer in &layers[5..8] {
            h2 = silu(layer.forward(&h2)?)?;
        }
        let (_, _, hh, ww) = h1.dims4()?;
        let u1 = (silu(layers[8].forward(&h2.upsample_nearest2d(hh, ww)?)?)? + h1)?;
        let (_, _, hh, ww) = h0.dims4()?;
        let u0 = (silu(layers[9].forward(&u1.upsample_nearest2d(hh, ww)?)?)? + h0)?;
        layers[10].forward(&u0)
    };
    Ok((FnModule(net), params))
}

struct FnModule<F>(F);

impl<F: Fn(&Tensor) -> candle_core::Result<Tensor>> Module for FnModule<F> {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        (self.0)(x)
    }
}
