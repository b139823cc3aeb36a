//! `stride eval schedules`: hand-designed against distilled step schedules on the bundled
//! model, by fidelity to the teacher (PSNR) and ShapesEval pass rate.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use stride_distill::{teacher, Intended, ScheduleFile};
use stride_models::tiny_shapes::Guided;
use stride_solvers::{Denoiser, NoiseSource, Sampler, SamplerKind, Scheduler, Sigmas, TorchNoise};

use crate::device::DeviceArg;
use crate::eval::{pass_rate, to_images, Heldout, Loaded};
use crate::plot::{log_log_chart, Series};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  stride eval schedules --limit 64               # the README table (64 held-out prompts)
  stride eval schedules --limit 16 --nfe 10      # a quick look")]
pub struct Args {
    #[command(flatten)]
    heldout: Heldout,
    /// Use only the first N prompts.
    #[arg(long, default_value_t = 128)]
    limit: usize,
    /// Prompt i is sampled from seed `seed + i` (calibration used seeds from 0).
    #[arg(long, default_value_t = 100_000)]
    seed: u64,
    /// Step counts (= model evaluations) to compare at.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    nfe: Vec<usize>,
    /// Solvers to compare with (each against its own distilled schedules).
    #[arg(long, alias = "solver", value_delimiter = ',', default_value = "euler,dpmpp_2m")]
    solvers: Vec<String>,
    /// OSS schedules (`SOLVER-NFE.json`; default: the model folder's schedules/); a missing
    /// NFE is interpolated from the nearest file.
    #[arg(long)]
    oss_dir: Option<PathBuf>,
    /// Exact-DP schedules (`SOLVER-NFE.json`, single-step solvers; default: exact/ in the OSS
    /// folder).
    #[arg(long)]
    exact_dir: Option<PathBuf>,
    /// The teacher: euler over this many uniform steps.
    #[arg(long, default_value_t = 200)]
    teacher_steps: usize,
    #[arg(long, default_value_t = 3.0)]
    cfg_scale: f64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value = "assets/eval_schedules.svg")]
    plot: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

/// The schedule families compared, in table order.
const HAND: &[&str] = &["uniform", "karras", "exponential", "logsnr", "ays"];

/// A distilled schedule from `dir` for `solver` at `nfe` (interpolated from the nearest file,
/// marked `*`), with its distillation cost. The file must have been distilled for this model
/// and solver by `method`.
fn distilled(
    dir: &Path,
    intended: &Intended,
    method: &str,
    nfe: usize,
) -> Result<Option<(Sigmas, bool, ScheduleFile)>> {
    let Some(path) = crate::schedules::nearest(dir, intended.solver, nfe) else {
        return Ok(None);
    };
    let file = ScheduleFile::read(&path)?;
    file.check(&path.display().to_string(), intended, false)?;
    anyhow::ensure!(
        file.search.method == method,
        "{}: a schedule found by --method {}, in the folder of the {method} ones",
        path.display(),
        file.search.method
    );
    let interpolated = file.nfe != nfe;
    let sigmas = if interpolated { file.sigmas_for(nfe)? } else { file.sigmas()? };
    Ok(Some((sigmas, interpolated, file)))
}

/// One evaluated (solver, schedule, NFE).
struct Cell {
    psnr: f64,
    rms: f64,
    pass: f64,
    note: &'static str,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.limit > 0 && args.batch_size > 0, "--limit and --batch-size must be at least 1");
    anyhow::ensure!(args.nfe.iter().all(|n| *n > 0), "--nfe values must be at least 1");
    let device = args.device.open()?;
    let Loaded { dir: model_dir, model, prompts, .. } = args.heldout.load(args.limit, &device)?;
    let oss_dir = args.oss_dir.clone().unwrap_or_else(|| model_dir.join(crate::schedules::SHIPPED_DIR));
    let exact_dir = args.exact_dir.clone().unwrap_or_else(|| oss_dir.join("exact"));
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let hash = crate::schedules::model_hash(&model_dir)?;
    let guided = model.denoiser(&texts, args.cfg_scale)?;
    let schedule = guided.schedule().clone();
    let n = prompts.len();
    let seeds: Vec<u64> = (0..n as u64).map(|i| args.seed + i).collect();
    let side = stride_shapes::SIDE;
    let noise = TorchNoise::new(&seeds).sample(&(n, 3, side, side).into(), DType::F32, &device)?;

    let run_schedule = |sampler: &Sampler, sigmas: &Sigmas| -> Result<Tensor> {
        let mut outs = Vec::new();
        for first in (0..n).step_by(args.batch_size) {
            let count = args.batch_size.min(n - first);
            let rows: Vec<usize> = (first..first + count).collect();
            let denoiser: Guided = guided.rows(&rows)?;
            let x = noise.narrow(0, first, count)?.affine(schedule.family().sigma(sigmas.first()), 0.0)?;
            outs.push(sampler.sample(&denoiser, x, sigmas, &mut TorchNoise::new(&[0]), |_| {})?);
        }
        Ok(Tensor::cat(&outs, 0)?.clamp(-1.0, 1.0)?)
    };

    eprintln!("teacher: euler, {} uniform steps, on {n} held-out prompts", args.teacher_steps);
    let grid = teacher::default_grid(&schedule, args.teacher_steps)?;
    let teacher = run_schedule(&Sampler::new(SamplerKind::Euler), &grid)?;
    let teacher_pass = pass_rate(&prompts, &to_images(&teacher)?);

    let kinds: Vec<&str> = HAND.iter().copied().chain(["exact", "oss"]).collect();
    let total = args.solvers.len() * kinds.len() * args.nfe.len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} runs [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    let mut results: Vec<(String, String, Vec<Option<Cell>>)> = Vec::new();
    let mut costs: Vec<String> = Vec::new();
    for solver in &args.solvers {
        let sampler: Sampler = solver.parse()?;
        for &kind in &kinds {
            let mut row = Vec::new();
            for &nfe in &args.nfe {
                bar.set_message(format!("{solver} {kind} {nfe}"));
                let (sigmas, note) = match kind {
                    "exact" | "oss" => {
                        let dir = if kind == "exact" { &exact_dir } else { &oss_dir };
                        let intended = Intended { model_id: "tiny-shapes", model_hash: &hash, solver };
                        match distilled(dir, &intended, kind, nfe)? {
                            Some((sigmas, interpolated, file)) => {
                                if !interpolated {
                                    if let Some(c) = &file.compute {
                                        costs.push(format!(
                                            "{kind:<6} {solver:<10} {nfe:>4} {:>14.0} {:>12.1} {:>8}",
                                            c.model_evaluations, c.seconds, c.device
                                        ));
                                    }
                                }
                                (sigmas, if interpolated { "*" } else { "" })
                            }
                            None => {
                                row.push(None);
                                bar.inc(1);
                                continue;
                            }
                        }
                    }
                    hand => (hand.parse::<Scheduler>()?.sigmas(&schedule, nfe)?, ""),
                };
                let out = run_schedule(&sampler, &sigmas)?;
                let rms = per_image_rms(&out, &teacher)?;
                let psnr = rms.iter().map(|r| 20.0 * (2.0 / r.max(1e-12)).log10()).sum::<f64>() / n as f64;
                let rms = (rms.iter().map(|r| r * r).sum::<f64>() / n as f64).sqrt();
                let pass = pass_rate(&prompts, &to_images(&out)?);
                row.push(Some(Cell { psnr, rms, pass, note }));
                bar.inc(1);
            }
            results.push((solver.clone(), kind.to_string(), row));
        }
    }
    bar.finish_and_clear();
    print_report(&args, n, teacher_pass, &results, &costs);
    let series: Vec<Series> = results
        .iter()
        .filter(|(solver, kind, _)| solver == "dpmpp_2m" || matches!(kind.as_str(), "uniform" | "oss"))
        .map(|(solver, kind, row)| Series {
            name: format!("{solver} {kind}"),
            points: args
                .nfe
                .iter()
                .zip(row)
                .filter_map(|(&nfe, c)| c.as_ref().map(|c| (nfe as f64, c.rms)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let title = format!("tiny-shapes: RMS error to the {}-step teacher", args.teacher_steps);
    log_log_chart(&args.plot, &title, "NFE", "RMS error", &series)?;
    println!("plot: {}", args.plot.display());
    Ok(())
}

/// Per image, the RMS difference (images in [-1, 1]).
fn per_image_rms(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let d = (a - b)?.sqr()?.flatten_from(1)?.mean(1)?.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    Ok(d.to_vec1::<f64>()?.into_iter().map(f64::sqrt).collect())
}

fn print_report(
    args: &Args,
    n: usize,
    teacher_pass: f64,
    results: &[(String, String, Vec<Option<Cell>>)],
    costs: &[String],
) {
    println!(
        "\nStep schedules on tiny-shapes: {n} held-out prompts (seeds {}..), cfg {}; PSNR (dB) of the final \
         image against the {}-step euler teacher from the same noise / ShapesEval pass rate. Teacher pass rate: {teacher_pass:.3}",
        args.seed, args.cfg_scale, args.teacher_steps
    );
    print!("{:<10} {:<12}", "solver", "schedule");
    for nfe in &args.nfe {
        print!(" {:>16}", format!("NFE {nfe}"));
    }
    println!();
    for (solver, kind, row) in results {
        print!("{solver:<10} {kind:<12}");
        for cell in row {
            match cell {
                Some(c) => print!(" {:>16}", format!("{:.2}{} / {:.3}", c.psnr, c.note, c.pass)),
                None => print!(" {:>16}", "-"),
            }
        }
        println!();
    }
    println!("(* interpolated log-linearly from the nearest distilled NFE; - no schedule of that kind)");
    // The targets: OSS against the best hand-designed schedule, and against the teacher.
    if let Some(k) = args.nfe.iter().position(|&nfe| nfe == 10) {
        for solver in &args.solvers {
            let cell = |kind: &str| {
                results
                    .iter()
                    .find(|(s, k2, _)| s == solver && k2 == kind)
                    .and_then(|(_, _, row)| row[k].as_ref())
            };
            let best_hand =
                HAND.iter().filter_map(|h| cell(h).map(|c| (h, c.psnr))).max_by(|a, b| a.1.total_cmp(&b.1));
            if let (Some(oss), Some((hand, psnr))) = (cell("oss"), best_hand) {
                let kept = if teacher_pass > 0.0 {
                    format!("{:.1}% of the teacher's", 100.0 * oss.pass / teacher_pass)
                } else {
                    "the teacher passes none, so no ratio".to_string()
                };
                println!(
                    "{solver} at 10 NFE: OSS {:.2} dB vs best hand-designed ({hand}) {psnr:.2} dB: {:+.2} dB; \
                     pass rate {:.3} ({kept})",
                    oss.psnr,
                    oss.psnr - psnr,
                    oss.pass,
                );
            }
        }
    }
    if !costs.is_empty() {
        println!("\nDistillation cost per calibration sample (from the schedule files)");
        println!(
            "{:<6} {:<10} {:>4} {:>14} {:>12} {:>8}",
            "mode", "solver", "NFE", "model evals", "seconds", "device"
        );
        for line in costs {
            println!("{line}");
        }
    }
}
