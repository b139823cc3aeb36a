//! `stride bench adaptive`: model evaluations against error for the adaptive solvers and the
//! fixed-step solvers they replace.
//!
//! - SDE: `adaptive_sde` at several rtol against Euler–Maruyama on the same reverse SDE. The
//!   two draw different Brownian increments, so the error is distributional (as the paper's
//!   FID): on the Gaussian mixture the Fréchet distance between the samples' and the data's
//!   exact mean and covariance; on the bundled model the ShapesEval pass rate.
//! - ODE: `dpm_adaptive` against `dpmpp_2m` on log-SNR-uniform steps over the same sigma range,
//!   error against the exact ODE solution from the same noise (a 2000-step DPM-Solver++(3M)
//!   solve on the mixture, a 1000-step `dpmpp_2m` solve on the bundled model).

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use stride_models::GaussianMixture;
use stride_solvers::adaptive::{AdaptiveSampler, EulerMaruyama};
use stride_solvers::{
    Denoiser, NoiseSchedule, NoiseSource, Parameterization, Sampler, SamplerKind, Scheduler, Sigmas,
    TorchNoise,
};

use crate::plot::{log_log_chart, Series};

#[derive(clap::Args)]
pub struct Args {
    /// Relative tolerances of adaptive_sde and dpm_adaptive (atol stays at its 0.0078 default).
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.1,0.05,0.02,0.01")]
    rtol: Vec<f64>,
    /// Euler–Maruyama step counts (each costs one more evaluation for the final denoise).
    #[arg(long, value_delimiter = ',', default_value = "10,20,50,100,200,500,1000")]
    em_steps: Vec<usize>,
    /// dpmpp_2m step counts.
    #[arg(long, value_delimiter = ',', default_value = "5,8,10,15,20,30,50,100")]
    dpmpp_steps: Vec<usize>,
    /// Gaussian mixture: dimension.
    #[arg(long, default_value_t = 8)]
    dim: usize,
    /// Gaussian mixture: samples for the Fréchet distance.
    #[arg(long, default_value_t = 8192)]
    samples: usize,
    /// Gaussian mixture: component stds (0.1 to 0.36) multiplied by this (smaller: sharper
    /// data, a stiffer score near sigma 0).
    #[arg(long, default_value_t = 1.0)]
    std_scale: f64,
    /// Bundled model: held-out prompts sampled per SDE setting (0 skips the model part).
    #[arg(long, default_value_t = 64)]
    model_samples: usize,
    /// Bundled model: samples for the ODE comparison (each needs a 1000-step reference).
    #[arg(long, default_value_t = 16)]
    model_ode_samples: usize,
    #[command(flatten)]
    heldout: crate::eval::Heldout,
    #[arg(long, default_value_t = 3.0)]
    cfg_scale: f64,
    /// Where to write the two NFE-vs-error plots (`_sde.svg`, `_ode.svg` are appended).
    #[arg(long, default_value = "assets/bench_adaptive")]
    plot: PathBuf,
}

/// Labelled runs of one solver.
type Runs = Vec<(String, Point)>;

/// One run: mean model evaluations per sample and its error (lower is better).
#[derive(Clone, Copy)]
struct Point {
    nfe: f64,
    error: f64,
}

/// The NFE the fixed-step `curve` needs for `error`, interpolated log-log between its two
/// neighbouring runs; `None` when `error` is outside the curve's range.
fn matched_nfe(curve: &[Point], error: f64) -> Option<f64> {
    curve.windows(2).find_map(|w| {
        let (a, b) = (w[0], w[1]);
        let (lo, hi) = (a.error.min(b.error), a.error.max(b.error));
        if !(lo..=hi).contains(&error) || a.error == b.error {
            return None;
        }
        let s = (error.ln() - a.error.ln()) / (b.error.ln() - a.error.ln());
        Some((a.nfe.ln() + s * (b.nfe.ln() - a.nfe.ln())).exp())
    })
}

/// Prints the fixed-step rows, then each adaptive row with the fixed-step NFE that reaches the
/// same error and the saving.
fn print_table(
    metric: &str,
    fixed_name: &str,
    fixed: &[(String, Point)],
    adaptive_name: &str,
    adaptive: &[(String, Point)],
) {
    println!(
        "{:<16} {:<12} {:>9} {:>12} {:>16} {:>8}",
        "solver", "setting", "NFE", metric, "fixed NFE @ err", "saving"
    );
    for (setting, p) in fixed {
        println!("{fixed_name:<16} {setting:<12} {:>9.1} {:>12.4e}", p.nfe, p.error);
    }
    let curve: Vec<Point> = fixed.iter().map(|(_, p)| *p).collect();
    for (setting, p) in adaptive {
        let (matched, saving) = match matched_nfe(&curve, p.error) {
            Some(n) => (format!("{n:.1}"), format!("{:.1}x", n / p.nfe)),
            None => ("out of range".to_string(), "-".to_string()),
        };
        println!(
            "{adaptive_name:<16} {setting:<12} {:>9.1} {:>12.4e} {matched:>16} {saving:>8}",
            p.nfe, p.error
        );
    }
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.rtol.iter().all(|r| *r > 0.0 && r.is_finite()), "--rtol values must be positive");
    anyhow::ensure!(
        args.em_steps.iter().chain(&args.dpmpp_steps).all(|s| *s > 0),
        "--em-steps and --dpmpp-steps must be at least 1"
    );
    anyhow::ensure!(args.dim > 0 && args.samples > 1, "--dim must be at least 1 and --samples at least 2");
    anyhow::ensure!(
        args.std_scale.is_finite() && args.std_scale > 0.0,
        "--std-scale must be a positive number, got {}",
        args.std_scale
    );
    let mut sde_plot = Vec::new();
    let mut ode_plot = Vec::new();
    mixture(&args, &mut sde_plot, &mut ode_plot)?;
    if args.model_samples > 0 {
        bundled_model(&args, &mut ode_plot)?;
    }
    let sde_path = args.plot.with_file_name(format!("{}_sde.svg", file_stem(&args.plot)));
    let ode_path = args.plot.with_file_name(format!("{}_ode.svg", file_stem(&args.plot)));
    log_log_chart(
        &sde_path,
        "SDE solvers on a Gaussian mixture (VP)",
        "NFE per sample",
        "Fréchet distance",
        &sde_plot,
    )?;
    log_log_chart(
        &ode_path,
        "ODE solvers: error against the exact solution",
        "NFE per sample",
        "RMS error",
        &ode_plot,
    )?;
    println!("\nplots: {}, {}", sde_path.display(), ode_path.display());
    Ok(())
}

fn file_stem(path: &std::path::Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "bench_adaptive".into())
}

/// Mean NFE per sample of an adaptive run.
fn mean_nfe(stats: &stride_solvers::AdaptiveStats) -> f64 {
    stats.samples.iter().map(|s| s.nfe as f64).sum::<f64>() / stats.samples.len() as f64
}

fn adaptive_solver(name: &str, rtol: f64) -> Result<AdaptiveSampler> {
    let mut solver: AdaptiveSampler = name.parse()?;
    solver.set_tolerances(Some(rtol), None);
    solver.set_max_nfe(100_000);
    Ok(solver)
}

/// `dpmpp_2m` on `steps` log-SNR-uniform steps from `sigma_max` to `sigma_min` (no final x0
/// step, so it ends where `dpm_adaptive` does).
fn dpmpp_2m_sigmas(sigma_max: f64, sigma_min: f64, steps: usize) -> Result<Sigmas> {
    Ok(Scheduler::LogSnr.sigmas(&NoiseSchedule::Ve { sigma_min, sigma_max }, steps)?)
}

fn rms(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    Ok((a - b)?.sqr()?.mean_all()?.to_scalar::<f64>()?.sqrt())
}

// ------------------------------------------------------------------ Gaussian mixture

fn mixture(args: &Args, sde_plot: &mut Vec<Series>, ode_plot: &mut Vec<Series>) -> Result<()> {
    let schedule = NoiseSchedule::continuous_vp();
    let model = GaussianMixture::synthetic(args.dim, 8, schedule.clone())?
        .with_stds_scaled(args.std_scale)?
        .with_parameterization(Parameterization::Epsilon);
    let (sigma_max, sigma_min) = schedule.sampling_range();
    let (n, d) = (args.samples, args.dim);
    let exact = model.moments();
    let initial = |batch: usize| -> Result<Tensor> {
        let z = TorchNoise::consecutive(0, batch).sample(&(batch, d).into(), DType::F64, &Device::Cpu)?;
        Ok(z.affine(schedule.family().sigma(sigma_max), 0.0)?)
    };
    let distance = |samples: &Tensor| -> Result<f64> {
        let (mean, cov) = sample_moments(samples)?;
        Ok(frechet_distance(&mean, &cov, &exact.0, &exact.1, d))
    };

    println!(
        "\nSDE solvers on a Gaussian mixture ({d} dims, 8 components, continuous VP, eps-prediction, f64): \
         Fréchet distance of {n} samples to the data's exact mean and covariance"
    );
    let floor = distance(&model.sample_data(n, 1)?)?;
    println!("(floor: {n} exact draws from the data score {floor:.4e})");
    let mut fixed = Vec::new();
    for &steps in &args.em_steps {
        let mut noise = TorchNoise::consecutive(1_000_000, n);
        let out = EulerMaruyama::new(steps).sample(&model, initial(n)?, sigma_max, sigma_min, &mut noise)?;
        fixed.push((format!("{steps} steps"), Point { nfe: (steps + 1) as f64, error: distance(&out)? }));
    }
    let mut adaptive = Vec::new();
    for &rtol in &args.rtol {
        let solver = adaptive_solver("adaptive_sde", rtol)?;
        let mut noise = TorchNoise::consecutive(1_000_000, n);
        let (out, stats) = solver.sample(&model, initial(n)?, sigma_max, sigma_min, &mut noise, |_| {})?;
        adaptive.push((format!("rtol {rtol}"), Point { nfe: mean_nfe(&stats), error: distance(&out)? }));
    }
    print_table("Fréchet", "euler_maruyama", &fixed, "adaptive_sde", &adaptive);
    sde_plot.push(series("euler_maruyama", &fixed));
    sde_plot.push(series("adaptive_sde", &adaptive));

    let batch = n.min(512);
    println!(
        "\nODE solvers on the same mixture: RMS error at sigma_min of {batch} samples against a 2000-step \
         DPM-Solver++(3M) solve from the same noise"
    );
    let x = initial(batch)?;
    let mut reference_solver = Sampler::new(SamplerKind::Dpmpp3m);
    reference_solver.taylor_exact_d2 = true;
    let fine = dpmpp_2m_sigmas(sigma_max, sigma_min, 2000)?;
    let reference = reference_solver.sample(&model, x.clone(), &fine, &mut TorchNoise::new(&[0]), |_| {})?;
    let (fixed, adaptive) = ode_runs(args, &model, &x, &reference, sigma_max, sigma_min)?;
    print_table("RMS error", "dpmpp_2m", &fixed, "dpm_adaptive", &adaptive);
    ode_plot.push(series("dpmpp_2m (mixture)", &fixed));
    ode_plot.push(series("dpm_adaptive (mixture)", &adaptive));
    Ok(())
}

/// `dpmpp_2m` at every `--dpmpp-steps` and `dpm_adaptive` at every `--rtol` from `x`, with
/// their RMS error against `reference`.
fn ode_runs(
    args: &Args,
    model: &dyn Denoiser,
    x: &Tensor,
    reference: &Tensor,
    sigma_max: f64,
    sigma_min: f64,
) -> Result<(Runs, Runs)> {
    let mut fixed = Vec::new();
    let sampler = Sampler::new(SamplerKind::Dpmpp2m);
    for &steps in &args.dpmpp_steps {
        let sigmas = dpmpp_2m_sigmas(sigma_max, sigma_min, steps)?;
        let out = sampler.sample(model, x.clone(), &sigmas, &mut TorchNoise::new(&[0]), |_| {})?;
        fixed.push((format!("{steps} steps"), Point { nfe: steps as f64, error: rms(&out, reference)? }));
    }
    let mut adaptive = Vec::new();
    for &rtol in &args.rtol {
        let solver = adaptive_solver("dpm_adaptive", rtol)?;
        let (out, stats) =
            solver.sample(model, x.clone(), sigma_max, sigma_min, &mut TorchNoise::new(&[0]), |_| {})?;
        adaptive
            .push((format!("rtol {rtol}"), Point { nfe: mean_nfe(&stats), error: rms(&out, reference)? }));
    }
    Ok((fixed, adaptive))
}

fn series(name: &str, runs: &[(String, Point)]) -> Series {
    Series { name: name.to_string(), points: runs.iter().map(|(_, p)| (p.nfe, p.error)).collect() }
}

/// Mean and covariance (`D x D`, row-major, divided by `n - 1`) of the rows of `samples`.
fn sample_moments(samples: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let rows: Vec<Vec<f64>> = samples.to_dtype(DType::F64)?.flatten_from(1)?.to_vec2()?;
    let (n, d) = (rows.len(), rows[0].len());
    let mut mean = vec![0.0; d];
    for row in &rows {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v / n as f64);
    }
    let mut cov = vec![0.0; d * d];
    for row in &rows {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += (row[i] - mean[i]) * (row[j] - mean[j]) / (n - 1) as f64;
            }
        }
    }
    Ok((mean, cov))
}

/// `|mu_a - mu_b|^2 + tr(A + B - 2 (A^1/2 B A^1/2)^1/2)`, the Fréchet (2-Wasserstein) distance
/// between two Gaussians (FID's formula).
fn frechet_distance(mean_a: &[f64], a: &[f64], mean_b: &[f64], b: &[f64], d: usize) -> f64 {
    let mean_term: f64 = mean_a.iter().zip(mean_b).map(|(x, y)| (x - y).powi(2)).sum();
    let root_a = symmetric_sqrt(a, d);
    let inner = matmul(&matmul(&root_a, b, d), &root_a, d);
    let cross: f64 = symmetric_eigenvalues(&inner, d).0.iter().map(|l| l.max(0.0).sqrt()).sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    mean_term + trace(a) + trace(b) - 2.0 * cross
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            for j in 0..d {
                out[i * d + j] += a[i * d + k] * b[k * d + j];
            }
        }
    }
    out
}

/// `V diag(sqrt(max(l, 0))) V^T` of a symmetric positive semi-definite matrix.
fn symmetric_sqrt(m: &[f64], d: usize) -> Vec<f64> {
    let (values, vectors) = symmetric_eigenvalues(m, d);
    let mut out = vec![0.0; d * d];
    for (k, l) in values.iter().enumerate() {
        let s = l.max(0.0).sqrt();
        for i in 0..d {
            for j in 0..d {
                out[i * d + j] += s * vectors[i * d + k] * vectors[j * d + k];
            }
        }
    }
    out
}

/// Eigenvalues and eigenvectors (columns, row-major) of a symmetric matrix by cyclic Jacobi
/// rotations: for the small matrices here it converges to machine precision in a few sweeps.
fn symmetric_eigenvalues(m: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v: Vec<f64> = (0..d * d).map(|i| f64::from(u8::from(i / d == i % d))).collect();
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

// ------------------------------------------------------------------ bundled model

/// The bundled model's SDE runs skip the longest Euler–Maruyama runs and the tightest
/// tolerances of the list: on a CPU they cost many minutes each, and the pass rate has long
/// stopped moving there.
const MODEL_MAX_EM_STEPS: usize = 200;
const MODEL_MIN_RTOL: f64 = 0.02;

fn bundled_model(args: &Args, ode_plot: &mut Vec<Series>) -> Result<()> {
    let crate::eval::Loaded { model, prompts, .. } = args.heldout.load(args.model_samples, &Device::Cpu)?;
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let denoiser = model.denoiser(&texts, args.cfg_scale)?;
    let (sigma_max, sigma_min) = denoiser.schedule().sampling_range();
    let side = stride_shapes::SIDE;
    let initial = |batch: usize| -> Result<Tensor> {
        let z = TorchNoise::consecutive(0, batch).sample(
            &(batch, 3, side, side).into(),
            DType::F32,
            &Device::Cpu,
        )?;
        Ok(z.affine(denoiser.schedule().family().sigma(sigma_max), 0.0)?)
    };

    let n = prompts.len();
    println!(
        "\nSDE solvers on the bundled model (tiny-shapes, cfg {}): ShapesEval pass rate of {n} held-out \
         prompts (error column: 1 - pass rate)",
        args.cfg_scale
    );
    let pass_rate =
        |out: &Tensor| -> Result<f64> { Ok(crate::eval::pass_rate(&prompts, &crate::eval::to_images(out)?)) };
    let mut fixed = Vec::new();
    for &steps in args.em_steps.iter().filter(|&&s| s <= MODEL_MAX_EM_STEPS) {
        let mut noise = TorchNoise::consecutive(1_000_000, n);
        let out =
            EulerMaruyama::new(steps).sample(&denoiser, initial(n)?, sigma_max, sigma_min, &mut noise)?;
        fixed.push((
            format!("{steps} steps"),
            Point { nfe: (steps + 1) as f64, error: 1.0 - pass_rate(&out)? },
        ));
    }
    let mut adaptive = Vec::new();
    for &rtol in args.rtol.iter().filter(|&&r| r >= MODEL_MIN_RTOL) {
        let solver = adaptive_solver("adaptive_sde", rtol)?;
        let mut noise = TorchNoise::consecutive(1_000_000, n);
        let (out, stats) = solver.sample(&denoiser, initial(n)?, sigma_max, sigma_min, &mut noise, |_| {})?;
        adaptive
            .push((format!("rtol {rtol}"), Point { nfe: mean_nfe(&stats), error: 1.0 - pass_rate(&out)? }));
    }
    print_table("1 - pass", "euler_maruyama", &fixed, "adaptive_sde", &adaptive);

    let batch = args.model_ode_samples.min(n).max(1);
    let ode_denoiser = model.denoiser(&texts[..batch], args.cfg_scale)?;
    println!(
        "\nODE solvers on the bundled model: RMS error (PSNR) of {batch} images at sigma_min against a \
         1000-step dpmpp_2m solve from the same noise"
    );
    let x = initial(batch)?;
    let fine = dpmpp_2m_sigmas(sigma_max, sigma_min, 1000)?;
    let reference = Sampler::new(SamplerKind::Dpmpp2m).sample(
        &ode_denoiser,
        x.clone(),
        &fine,
        &mut TorchNoise::new(&[0]),
        |_| {},
    )?;
    let (fixed, adaptive) = ode_runs(args, &ode_denoiser, &x, &reference, sigma_max, sigma_min)?;
    print_table("RMS error", "dpmpp_2m", &fixed, "dpm_adaptive", &adaptive);
    // Images live in [-1, 1]: PSNR = 20 log10(2 / RMS).
    println!("(PSNR = 20 log10(2 / RMS error): 1e-2 -> 46 dB, 3e-2 -> 36.5 dB, 1e-1 -> 26 dB)");
    ode_plot.push(series("dpmpp_2m (tiny-shapes)", &fixed));
    ode_plot.push(series("dpm_adaptive (tiny-shapes)", &adaptive));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussians with diagonal covariances: the distance has the closed form
    /// `|dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2`; a rotation of both leaves it unchanged.
    #[test]
    fn frechet_distance_matches_the_diagonal_closed_form() {
        let d = 3;
        let (a_diag, b_diag) = ([1.0, 4.0, 0.25], [9.0, 1.0, 0.25]);
        let (ma, mb) = ([0.0, 1.0, 2.0], [1.0, 1.0, 0.0]);
        let expected = 1.0 + 4.0 + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2);
        let diag =
            |v: &[f64; 3]| (0..9).map(|i| if i / 3 == i % 3 { v[i / 3] } else { 0.0 }).collect::<Vec<_>>();
        let got = frechet_distance(&ma, &diag(&a_diag), &mb, &diag(&b_diag), d);
        assert!((got - expected).abs() < 1e-10, "{got} vs {expected}");
        // Rotate both covariances by the same orthogonal R: R A R^T.
        let (c, s) = (0.6, 0.8);
        let r = [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0];
        let rt = [c, s, 0.0, -s, c, 0.0, 0.0, 0.0, 1.0];
        let rotate = |m: &[f64]| matmul(&matmul(&r, m, d), &rt, d);
        let got = frechet_distance(&ma, &rotate(&diag(&a_diag)), &mb, &rotate(&diag(&b_diag)), d);
        assert!((got - expected).abs() < 1e-10, "rotated: {got} vs {expected}");
    }

    #[test]
    fn matched_nfe_interpolates_log_log() {
        let curve = [Point { nfe: 10.0, error: 1e-1 }, Point { nfe: 100.0, error: 1e-3 }];
        let n = matched_nfe(&curve, 1e-2).unwrap();
        assert!((n - 31.622776601683793).abs() < 1e-9, "{n}"); // sqrt(10 * 100)
        assert!(matched_nfe(&curve, 1e-4).is_none());
    }
}
