//! Distillation on the exact Gaussian-mixture denoiser (a Stable-Diffusion VP schedule): the
//! search's costs are what the sampler really gets, and a distilled schedule reproduces the
//! teacher better than the uniform and Karras schedules on held-out noise.

use candle_core::{DType, Device, Tensor};
use stride_distill::{
    aggregate, distill, distill_counts, fidelity, Aggregate, Config, Distance, Method, RowDenoiser, Shared,
};
use stride_models::GaussianMixture;
use stride_solvers::{
    Denoiser, DiscreteSchedule, NoiseSchedule, NoiseSource, Parameterization, Sampler, SamplerKind,
    Scheduler, Sigmas, TorchNoise,
};

const DIM: usize = 16;

fn model() -> GaussianMixture {
    GaussianMixture::synthetic(DIM, 4, NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion())).unwrap()
}

fn noise(seed: u64, count: usize) -> Tensor {
    let seeds: Vec<u64> = (0..count as u64).map(|i| 1000 * seed + i).collect();
    TorchNoise::new(&seeds).sample(&(count, DIM).into(), DType::F64, &Device::Cpu).unwrap()
}

fn config(model: &GaussianMixture, kind: SamplerKind, steps: usize) -> Config {
    Config::new(model.schedule(), Sampler::new(kind), steps).unwrap()
}

/// The teacher's final states for `noise`: its sampler over its grid.
fn teacher_finals(model: &GaussianMixture, config: &Config, noise: &Tensor) -> Tensor {
    let x = noise.affine(model.schedule().family().sigma(config.grid.first()), 0.0).unwrap();
    config.teacher.sample(model, x, &config.grid, &mut TorchNoise::new(&[0]), |_| {}).unwrap()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean squared distance to the teacher on held-out noise of `sigmas`.
fn held_out_error(model: &GaussianMixture, config: &Config, sigmas: &Sigmas) -> f64 {
    let test = noise(2, 32);
    let reference = teacher_finals(model, config, &test);
    mean(&fidelity(&Shared(model), &config.student, sigmas, &test, &reference).unwrap())
}

/// Distills on 16 calibration samples and returns the held-out errors of (distilled, uniform,
/// Karras) and the distilled schedule.
fn compare(kind: SamplerKind, steps: usize, method: Method, distance: Distance) -> ([f64; 3], Sigmas) {
    let model = model();
    let mut config = config(&model, kind, steps);
    config.method = method;
    config.distance = distance;
    let distilled = distill(&Shared(&model), &noise(1, 16), &config, |_| {}).unwrap();
    let per_sample: Vec<Vec<f64>> = distilled.samples.iter().map(|s| s.sigmas.clone()).collect();
    let schedule = aggregate(&per_sample, Aggregate::Median).unwrap();
    let uniform = Scheduler::Uniform.sigmas(model.schedule(), steps).unwrap();
    let karras = Scheduler::Karras { rho: 7.0 }.sigmas(model.schedule(), steps).unwrap();
    let errors = [&schedule, &uniform, &karras].map(|s| held_out_error(&model, &config, s));
    (errors, schedule)
}

fn report_and_check(method: Method, distance: Distance, kinds: &[SamplerKind]) {
    for &kind in kinds {
        for steps in [5, 10] {
            let ([distilled, uniform, karras], schedule) = compare(kind, steps, method, distance);
            eprintln!(
                "{} {} {kind} K={steps}: MSE to teacher  distilled {distilled:.3e}  uniform {uniform:.3e}  \
                 karras {karras:.3e}  sigmas {schedule:.4}",
                method.name(),
                distance.name(),
            );
            assert!(
                distilled < uniform && distilled < karras,
                "{kind} K={steps}: distilled {distilled:.3e} vs uniform {uniform:.3e}, karras {karras:.3e}"
            );
        }
    }
}

const ALL: &[SamplerKind] = &[SamplerKind::Euler, SamplerKind::Dpmpp2m, SamplerKind::Dpmpp3m];

#[test]
fn oss_xt_beats_uniform_and_karras() {
    report_and_check(Method::Oss, Distance::Xt, ALL);
}

#[test]
fn oss_x0_beats_uniform_and_karras() {
    report_and_check(Method::Oss, Distance::X0, ALL);
}

#[test]
fn exact_mode_beats_uniform_and_karras() {
    report_and_check(Method::Exact, Distance::Xt, &[SamplerKind::Euler]);
    report_and_check(Method::Exact, Distance::X0, &[SamplerKind::Euler]);
}

/// The OSS cost of a sample is the final distance to the teacher; running the solver crate's
/// sampler over that sample's schedule must give exactly that, for first-order and multistep
/// students (3M below 15 steps also exercises the warm-up and `lower_order_final` orders), and
/// for a flow model whose grid starts at pure noise (sigma = inf).
#[test]
fn oss_costs_are_what_the_sampler_gets() {
    let flow = GaussianMixture::synthetic(DIM, 4, NoiseSchedule::Flow { shift: 3.0 })
        .unwrap()
        .with_parameterization(Parameterization::FlowVelocity);
    let cases = [
        (model(), SamplerKind::Euler, Distance::X0),
        (model(), SamplerKind::Dpmpp2m, Distance::Xt),
        (model(), SamplerKind::Dpmpp3m, Distance::X0),
        (flow.clone(), SamplerKind::Dpmpp2m, Distance::Xt),
        (flow, SamplerKind::Dpmpp3m, Distance::X0),
    ];
    for (model, kind, distance) in cases {
        let mut config = config(&model, kind, 5);
        config.grid = Scheduler::Uniform.sigmas(model.schedule(), 60).unwrap();
        config.distance = distance;
        let calibration = noise(3, 4);
        let distilled = distill(&Shared(&model), &calibration, &config, |_| {}).unwrap();
        assert_eq!(distilled.samples.len(), 4);
        for (b, sample) in distilled.samples.iter().enumerate() {
            let sigmas = Sigmas::new(sample.sigmas.clone()).unwrap();
            let x = calibration.narrow(0, b, 1).unwrap();
            let reference = distilled.teacher_finals.narrow(0, b, 1).unwrap();
            let got = fidelity(&Shared(&model), &config.student, &sigmas, &x, &reference).unwrap()[0];
            assert!(
                (got - sample.cost).abs() <= 1e-9 * sample.cost.max(1e-12),
                "{kind}: sampler MSE {got:e} vs search cost {:e} on {:?}",
                sample.cost,
                sample.indices
            );
        }
    }
}

#[test]
fn progress_reports_every_sample_and_batches_do_not_change_results() {
    let model = model();
    let mut config = config(&model, SamplerKind::Dpmpp2m, 4);
    config.grid = Scheduler::Uniform.sigmas(model.schedule(), 40).unwrap();
    let calibration = noise(4, 5);
    let mut seen = Vec::new();
    let together = distill(&Shared(&model), &calibration, &config, |p| {
        if let stride_distill::Progress::Sample { index, total, .. } = p {
            seen.push((index, total));
        }
    })
    .unwrap();
    assert_eq!(seen, (0..5).map(|i| (i, 5)).collect::<Vec<_>>());
    config.batch = 2;
    config.max_rows = 7;
    let split = distill(&Shared(&model), &calibration, &config, |_| {}).unwrap();
    assert_eq!((together.samples.len(), split.samples.len()), (5, 5));
    for (a, b) in together.samples.iter().zip(&split.samples) {
        assert_eq!(a.indices, b.indices);
        // Bit for bit: every operation of the search and of the mixture is per row.
        assert_eq!(a.cost, b.cost);
    }
}

#[test]
fn unsupported_students_are_refused_clearly() {
    let model = model();
    let noise = noise(5, 1);
    let err = distill(&Shared(&model), &noise, &config(&model, SamplerKind::Heun, 4), |_| {}).unwrap_err();
    assert!(err.to_string().contains("cannot distill a schedule for `heun`"), "{err}");
    let mut exact_2m = config(&model, SamplerKind::Dpmpp2m, 4);
    exact_2m.method = Method::Exact;
    let err = distill(&Shared(&model), &noise, &exact_2m, |_| {}).unwrap_err();
    assert!(err.to_string().contains("with the OSS search"), "{err}");
    let err = distill(&Shared(&model), &noise, &config(&model, SamplerKind::Euler, 201), |_| {}).unwrap_err();
    assert!(err.to_string().contains("201 steps"), "{err}");
    let euler = config(&model, SamplerKind::Euler, 4);
    let err = distill_counts(&Shared(&model), &noise, &euler, &[4, 5, 4], |_| {}).unwrap_err();
    assert!(err.to_string().contains("step count 4 is given twice"), "{err}");
    // The search's own API refuses a landing it does not offer (from the root at 10, one step
    // of two cannot land on 0 yet, nor come from 7).
    let mut search = stride_distill::OssSearch::new(10, 2, ()).unwrap();
    assert!(search.offer(10, 3, 1.0).is_ok());
    assert!(search.offer(10, 0, 1.0).is_err() && search.offer(7, 3, 1.0).is_err());
}

/// The mixture, refusing to be evaluated at sigma 0 (as a model that divides by sigma would):
/// no search needs a prediction there, not even once a count has ended at sigma 0.
struct NoSigmaZero<'a>(Shared<&'a GaussianMixture>);

impl RowDenoiser for NoSigmaZero<'_> {
    fn schedule(&self) -> &NoiseSchedule {
        self.0.schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.0.parameterization()
    }
    fn predict(&self, x: &Tensor, sigmas: &[f64], samples: &[usize]) -> candle_core::Result<Tensor> {
        if sigmas.contains(&0.0) {
            candle_core::bail!("evaluated at sigma 0");
        }
        self.0.predict(x, sigmas, samples)
    }
}

/// One search for several step counts finds, per sample, the same schedule as a separate search
/// for each count (the best landing per level and index does not depend on the steps that
/// follow), for every student and both modes. Exact equality: the mixture's rows do not
/// depend on what else is in a batch.
#[test]
fn one_search_for_several_counts_equals_separate_searches() {
    let model = model();
    let counts = [3, 5, 8, 15, 17];
    let calibration = noise(3, 4);
    for (kind, method) in [
        (SamplerKind::Euler, Method::Oss),
        (SamplerKind::Dpmpp2m, Method::Oss),
        (SamplerKind::Dpmpp3m, Method::Oss),
        (SamplerKind::Euler, Method::Exact),
    ] {
        let mut config = config(&model, kind, 1);
        config.grid = stride_distill::teacher::default_grid(model.schedule(), 24).unwrap();
        config.method = method;
        let guarded = NoSigmaZero(Shared(&model));
        let shared = distill_counts(&guarded, &calibration, &config, &counts, |_| {}).unwrap();
        for (&steps, together) in counts.iter().zip(&shared) {
            config.steps = steps;
            let alone = distill(&guarded, &calibration, &config, |_| {}).unwrap();
            for (a, b) in together.samples.iter().zip(&alone.samples) {
                assert_eq!(a.indices, b.indices, "{kind:?} {method:?} {steps} steps");
                assert_eq!(a.cost, b.cost, "{kind:?} {method:?} {steps} steps");
            }
        }
    }
}
