//! `stride eval policy`: the step policy against fixed step counts and simple rules on
//! held-out prompts (one seed each): mean steps, ShapesEval pass rate and PSNR against the
//! 50-step image.
//!
//! Every prompt is generated once at each of the policy's options (and at the fixed count
//! matched to the policy's mean); every per-prompt rule is then a lookup in that table:
//! (a) the policy, (b) each fixed count, (c) the fixed count nearest the policy's mean,
//! (d) the policy's own step counts handed out by word count (same mean, same counts),
//! (e) the same counts handed out at random, (f) a policy trained over distilled schedules.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use stride_models::TinyShapes;
use stride_policy::Policy;
use stride_shapes::{check, Prompt};
use stride_solvers::{Denoiser, Sampler, Scheduler, Sigmas, TorchNoise};

use crate::device::DeviceArg;
use crate::eval::{Heldout, Loaded};
use crate::plot::{chart, Scale, Series};
use crate::train_policy::{psnr, text_features};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  stride eval policy                        # the model's policy on 200 held-out prompts
  stride eval policy --limit 50 --policy my-policy
  stride eval policy --write                # also store the results in policy.json")]
pub struct Args {
    #[command(flatten)]
    heldout: Heldout,
    /// The policy (default: the model folder's policy/).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A policy trained over distilled schedules (`train-policy --scheduler distilled`;
    /// default: the model folder's policy-distilled/, if there).
    #[arg(long)]
    distilled_policy: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    limit: usize,
    /// Prompt i is sampled with seed `seed + i`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// The reference step count (PSNR is measured against its images).
    #[arg(long, default_value_t = 50)]
    reference_steps: usize,
    /// Store the held-out results in the policy's policy.json.
    #[arg(long)]
    write: bool,
    /// Steps chosen against prompt richness here, and pass rate against mean steps beside it
    /// (`_tradeoff` added to the name).
    #[arg(long, default_value = "assets/eval_policy.svg")]
    plot: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

/// How many shuffles of the policy's choices make the random rule's row.
const RANDOM_DRAWS: u64 = 100;

/// Every prompt's result at one schedule.
struct Column {
    steps: usize,
    passed: Vec<bool>,
    psnr: Vec<f64>,
}

/// A per-prompt rule's result.
struct Row {
    name: String,
    mean_steps: f64,
    pass: f64,
    psnr: f64,
}

/// The columns generated so far, one per distinct schedule (the reference first), so rules
/// that share a schedule share its images.
struct Columns<'a> {
    run: Generator<'a>,
    reference: Tensor,
    list: Vec<(Vec<u64>, Column)>,
}

impl<'a> Columns<'a> {
    fn new(run: Generator<'a>, reference: &Sigmas) -> Result<Self> {
        let images = run.images(reference)?;
        let mut columns = Columns { run, reference: images.clone(), list: Vec::new() };
        columns.insert(reference, &images)?;
        Ok(columns)
    }

    fn key(sigmas: &Sigmas) -> Vec<u64> {
        sigmas.as_slice().iter().map(|s| s.to_bits()).collect()
    }

    fn insert(&mut self, sigmas: &Sigmas, images: &Tensor) -> Result<usize> {
        let column = Column {
            steps: sigmas.steps(),
            passed: self.run.passed(images)?,
            psnr: psnr(images, &self.reference)?,
        };
        self.list.push((Self::key(sigmas), column));
        Ok(self.list.len() - 1)
    }

    /// The column of `sigmas`, generated on first use.
    fn get(&mut self, sigmas: &Sigmas) -> Result<usize> {
        let key = Self::key(sigmas);
        if let Some(i) = self.list.iter().position(|(k, _)| *k == key) {
            return Ok(i);
        }
        let images = self.run.images(sigmas)?;
        self.insert(sigmas, &images)
    }

    fn steps(&self, column: usize) -> usize {
        self.list[column].1.steps
    }

    /// Looks up each prompt's result at its chosen column.
    fn row(&self, name: &str, choice: &[usize]) -> Row {
        let n = choice.len() as f64;
        let mean = |f: &dyn Fn(usize, &Column) -> f64| {
            choice.iter().enumerate().map(|(i, &c)| f(i, &self.list[c].1)).sum::<f64>() / n
        };
        Row {
            name: name.into(),
            mean_steps: mean(&|_, c| c.steps as f64),
            pass: mean(&|i, c| f64::from(u8::from(c.passed[i]))),
            psnr: mean(&|i, c| c.psnr[i].min(60.0)),
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.limit > 0 && args.batch_size > 0, "--limit and --batch-size must be at least 1");
    let device = args.device.open()?;
    let Loaded { dir: model_dir, model, prompts, source } = args.heldout.load(args.limit, &device)?;
    let hash = crate::schedules::model_hash(&model_dir)?;
    let policy_dir = args.policy.clone().unwrap_or_else(|| model_dir.join(stride_policy::MODEL_POLICY_DIR));
    let policy = Policy::load(&policy_dir, &device)?;
    policy.check_model(&policy_dir, &hash)?;
    let distilled_dir = args.distilled_policy.clone().unwrap_or_else(|| model_dir.join("policy-distilled"));
    // The default distilled policy is optional; one that is there must load.
    let distilled = if args.distilled_policy.is_none() && !distilled_dir.exists() {
        None
    } else {
        let distilled = Policy::load(&distilled_dir, &device)?;
        distilled.check_model(&distilled_dir, &hash)?;
        let (d, s) = (&distilled.sidecar, &policy.sidecar);
        anyhow::ensure!(
            d.sampler == s.sampler && d.cfg_scale == s.cfg_scale,
            "{} was trained for {} at cfg {}, {} for {} at cfg {}: row (f) compares schedules of \
             one solver",
            distilled_dir.display(),
            d.sampler,
            d.cfg_scale,
            policy_dir.display(),
            s.sampler,
            s.cfg_scale
        );
        Some(distilled)
    };
    let side = &policy.sidecar;
    let sampler: Sampler = side.sampler.parse()?;
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let (features, mask) = text_features(&model, &texts)?;
    let chosen = policy.net.choose(&features, &mask)?;
    let options = side.config.options.clone();
    println!(
        "step policy {} on {} held-out prompts ({}), {} + {}, cfg {}, one seed each",
        policy_dir.display(),
        prompts.len(),
        source,
        side.sampler,
        side.scheduler,
        side.cfg_scale
    );
    let run = Generator {
        model: &model,
        prompts: &prompts,
        sampler,
        cfg: side.cfg_scale,
        args: &args,
        device: &device,
    };
    let schedule = model.denoiser(&["a"], 1.0)?.schedule().clone();
    let sigmas = |scheduler: &str, steps: usize| {
        crate::schedules::option_sigmas(&model_dir, &schedule, &side.sampler, scheduler, steps)
    };
    let mut columns = Columns::new(run, &Scheduler::Uniform.sigmas(&schedule, args.reference_steps)?)?;
    let fixed: Vec<usize> =
        options.iter().map(|&n| columns.get(&sigmas(&side.scheduler, n)?)).collect::<Result<_>>()?;
    let chosen: Vec<usize> = chosen.iter().map(|&o| fixed[o]).collect();
    let all = |column: usize| vec![column; prompts.len()];
    let mut rows: Vec<Row> = Vec::new();
    let policy_row = columns.row("(a) policy", &chosen);
    for (o, &n) in options.iter().enumerate() {
        rows.push(columns.row(&format!("(b) fixed {n}"), &all(fixed[o])));
    }
    let matched = policy_row.mean_steps.round().max(1.0) as usize;
    let matched_column = columns.get(&sigmas(&side.scheduler, matched)?)?;
    let matched_row = columns.row(&format!("(c) fixed {matched} (policy's mean)"), &all(matched_column));
    rows.push(columns.row("(d) word count, same steps", &by_word_count(&prompts, &columns, &chosen)));
    // One shuffle is noisy at a few hundred prompts; the mean of many is the random rule's value.
    let draws: Vec<Row> =
        (0..RANDOM_DRAWS).map(|d| columns.row("", &shuffled(&chosen, args.seed.wrapping_add(d)))).collect();
    let random_row = Row {
        name: format!("(e) random, same steps ({RANDOM_DRAWS} draws)"),
        mean_steps: policy_row.mean_steps,
        pass: draws.iter().map(|r| r.pass).sum::<f64>() / RANDOM_DRAWS as f64,
        psnr: draws.iter().map(|r| r.psnr).sum::<f64>() / RANDOM_DRAWS as f64,
    };
    let richness: Vec<usize> = prompts.iter().map(|p| p.request.richness()).collect();
    let mut by_richness = vec![choice_by_richness("policy", &richness, &columns, &chosen)];
    let mut distilled_row = None;
    if let Some(distilled) = &distilled {
        let d_options = &distilled.sidecar.config.options;
        let picks = distilled.net.choose(&features, &mask)?;
        // Only the options it picks are generated (those without a distilled schedule are
        // the uniform columns above).
        let mut column_of = vec![None; d_options.len()];
        for &pick in &picks {
            if column_of[pick].is_none() {
                column_of[pick] = Some(columns.get(&sigmas(&distilled.sidecar.scheduler, d_options[pick])?)?);
            }
        }
        let picks: Vec<usize> = picks.iter().filter_map(|&pick| column_of[pick]).collect();
        by_richness.push(choice_by_richness("policy over distilled schedules", &richness, &columns, &picks));
        distilled_row = Some(columns.row("(f) policy, distilled schedules", &picks));
    }
    let reference_row = columns.row(&format!("fixed {} (reference)", args.reference_steps), &all(0));
    rows.insert(0, policy_row);
    rows.push(matched_row);
    rows.push(random_row);
    rows.extend(distilled_row);
    rows.sort_by_key(|r| r.name.chars().take(3).collect::<String>());
    print_rows(&rows, args.reference_steps);
    print_targets(&rows, &reference_row);
    if distilled.is_none() {
        println!("(f) skipped: no policy over distilled schedules in {}", distilled_dir.display());
    }
    chart(
        &args.plot,
        "tiny-shapes: steps the policy chooses",
        ("requested attributes", Scale::Linear),
        ("mean steps chosen", Scale::Linear),
        &by_richness,
    )?;
    let tradeoff_plot = args.plot.with_file_name(format!(
        "{}_tradeoff.svg",
        args.plot.file_stem().map_or("eval_policy".into(), |s| s.to_string_lossy())
    ));
    let fixed_curve = Series {
        name: format!("fixed steps ({})", side.scheduler),
        points: rows.iter().filter(|r| r.name.starts_with("(b)")).map(|r| (r.mean_steps, r.pass)).collect(),
    };
    let mut tradeoff = vec![fixed_curve];
    for r in rows.iter().filter(|r| !r.name.starts_with("(b)") && !r.name.starts_with("(c)")) {
        tradeoff.push(Series { name: r.name.clone(), points: vec![(r.mean_steps, r.pass)] });
    }
    chart(
        &tradeoff_plot,
        "tiny-shapes: ShapesEval pass rate against mean steps",
        ("mean steps", Scale::Log),
        ("pass rate", Scale::Linear),
        &tradeoff,
    )?;
    println!("plots: {}, {}", args.plot.display(), tradeoff_plot.display());
    if args.write {
        let mut sidecar = policy.sidecar.clone();
        sidecar.heldout = Some(serde_json::json!({
            "prompts": prompts.len(),
            "reference_steps": args.reference_steps,
            "rows": rows.iter().map(|r| serde_json::json!({
                "name": r.name, "mean_steps": r.mean_steps, "pass_rate": r.pass, "psnr": r.psnr
            })).collect::<Vec<_>>(),
        }));
        Policy::write_sidecar(&policy_dir, &sidecar)?;
        println!("results stored in {}", policy_dir.join(stride_policy::file::SIDECAR).display());
    }
    Ok(())
}

/// Generates every prompt (batched, prompt i from seed `seed + i`) on a schedule.
struct Generator<'a> {
    model: &'a TinyShapes,
    prompts: &'a [Prompt],
    sampler: Sampler,
    cfg: f64,
    args: &'a Args,
    device: &'a Device,
}

impl Generator<'_> {
    fn images(&self, sigmas: &Sigmas) -> Result<Tensor> {
        let mut out = Vec::new();
        for (k, chunk) in self.prompts.chunks(self.args.batch_size).enumerate() {
            let texts: Vec<&str> = chunk.iter().map(|p| p.text.as_str()).collect();
            let denoiser = self.model.denoiser(&texts, self.cfg)?;
            let mut noise =
                TorchNoise::consecutive(self.args.seed + (k * self.args.batch_size) as u64, chunk.len());
            let side = stride_shapes::SIDE;
            let x = self.sampler.initial_latent(
                &denoiser,
                sigmas,
                &[chunk.len(), 3, side, side],
                &mut noise,
                self.device,
            )?;
            out.push(self.sampler.sample(&denoiser, x, sigmas, &mut noise, |_| {})?.clamp(-1.0, 1.0)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    fn passed(&self, images: &Tensor) -> Result<Vec<bool>> {
        let images = crate::eval::to_images(images)?;
        Ok(self.prompts.iter().zip(&images).map(|(p, image)| check(&p.request, image).passed()).collect())
    }
}

/// The policy's step choices handed out by word count: the wordiest prompt gets the most
/// steps. It spends the policy's own step budget (its histogram on these prompts), so it is a
/// comparison at equal cost, not a rule that could be deployed alone.
fn by_word_count(prompts: &[Prompt], columns: &Columns, chosen: &[usize]) -> Vec<usize> {
    let mut sorted = chosen.to_vec();
    sorted.sort_by_key(|&c| columns.steps(c));
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (prompts[i].text.split_whitespace().count(), i));
    let mut out = vec![0; prompts.len()];
    for (rank, &i) in order.iter().enumerate() {
        out[i] = sorted[rank];
    }
    out
}

/// The policy's step choices in a seeded random order.
fn shuffled(chosen: &[usize], seed: u64) -> Vec<usize> {
    let mut out = chosen.to_vec();
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    for i in (1..out.len()).rev() {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        out.swap(i, (state >> 33) as usize % (i + 1));
    }
    out
}

/// Mean steps chosen per prompt richness.
fn choice_by_richness(name: &str, richness: &[usize], columns: &Columns, chosen: &[usize]) -> Series {
    let max = richness.iter().copied().max().unwrap_or(0);
    let points = (0..=max)
        .filter_map(|r| {
            let steps: Vec<f64> = richness
                .iter()
                .zip(chosen)
                .filter(|(&q, _)| q == r)
                .map(|(_, &c)| columns.steps(c) as f64)
                .collect();
            (!steps.is_empty()).then(|| (r as f64, steps.iter().sum::<f64>() / steps.len() as f64))
        })
        .collect();
    Series { name: name.into(), points }
}

/// The targets, each met or not, against the reference count's pass rate.
fn print_targets(rows: &[Row], reference: &Row) {
    let find = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix));
    let (steps, pass) = (reference.mean_steps, reference.pass);
    // A share of a zero pass rate says nothing: those targets cannot be judged.
    let verdict = |met: bool| match (pass > 0.0, met) {
        (false, _) => "cannot tell (the reference passes no prompt)",
        (true, true) => "met",
        (true, false) => "NOT met",
    };
    let share = |p: f64| if pass > 0.0 { format!("{:.1}%", 100.0 * p / pass) } else { "n/a".into() };
    println!("\ntargets, against {} ({} steps, pass rate {pass:.3}):", reference.name, steps);
    if let Some(a) = find("(a)") {
        let fewer = 1.0 - a.mean_steps / steps;
        println!(
            "  policy: at least 40% fewer steps at >= 99% of the pass rate: {:.0}% fewer, {} of the pass rate: {}",
            100.0 * fewer,
            share(a.pass),
            verdict(fewer >= 0.4 && a.pass >= 0.99 * pass)
        );
        if let Some(c) = find("(c)") {
            println!(
                "  policy beats the fixed count at its mean steps: {:.3} against {:.3}: {}",
                a.pass,
                c.pass,
                if a.pass > c.pass { "met" } else { "NOT met" }
            );
        }
    }
    if let Some(f) = find("(f)") {
        println!(
            "  policy over distilled schedules: at least 5x fewer steps at >= 99% of the pass rate: {:.1}x \
             fewer, {} of the pass rate: {}",
            steps / f.mean_steps,
            share(f.pass),
            verdict(steps / f.mean_steps >= 5.0 && f.pass >= 0.99 * pass)
        );
    }
}

fn print_rows(rows: &[Row], reference: usize) {
    println!(
        "\n{:<36} {:>10} {:>10} {:>14}",
        "rule",
        "mean steps",
        "pass rate",
        format!("PSNR vs {reference}")
    );
    for r in rows {
        println!("{:<36} {:>10.2} {:>10.3} {:>14.2}", r.name, r.mean_steps, r.pass, r.psnr);
    }
}
