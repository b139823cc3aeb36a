//! Parity with the real reference samplers (diffusers 0.42.1, k-diffusion 0.1.1.post1).
//!
//! Expected values: `tests/golden/solvers.json`, written by `scripts/golden/generate.py`,
//! which runs each reference in float64 on the same Gaussian mixture with the same initial
//! state and injected noise. Tolerance: max |ours - reference| / max |reference| over every
//! recorded state, at most 1e-6 on the f64 path and 1e-4 on the f32 path.

mod common;

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use common::{floats, load_golden};
use serde_json::Value;
use stride_models::GaussianMixture;
use stride_solvers::update::{self, MultistepParams};
use stride_solvers::{
    to_x0_eps, Denoiser, DiscreteSchedule, Family, NoiseSchedule, Parameterization, ReplayNoise, Sampler,
    SamplerKind, Sigmas,
};

// Relative error per step. Measured worst over all cases and steps: 5.5e-15 in f64 (the
// references ran in f64 too: what is left is summation order) and 2.7e-6 in f32 (the
// reference is f64; f32 rounding compounds over up to 50 steps). The f32 margin is wider
// because another CPU's SIMD width changes f32 rounding.
const F64_TOL: f64 = 1e-12;
const F32_TOL: f64 = 2e-5;

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| load_golden("solvers.json"))
}

fn state(v: &Value, dtype: DType) -> Tensor {
    let values = floats(v);
    Tensor::from_vec(values.clone(), (2, values.len() / 2), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a - b| / max |b|
fn rel_err(ours: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    ours.iter().zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn model(case: &Value) -> GaussianMixture {
    let gmm = &golden()["gmm"];
    let means = gmm["means"].as_array().unwrap().iter().map(floats).collect();
    let schedule = match case["family"].as_str().unwrap() {
        "vp" => NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion()),
        "ve" => NoiseSchedule::edm(),
        other => panic!("unknown family {other}"),
    };
    let param = match case["prediction"].as_str().unwrap() {
        "epsilon" => Parameterization::Epsilon,
        "v_prediction" => Parameterization::V,
        "sample" => Parameterization::X0,
        other => panic!("unknown prediction {other}"),
    };
    GaussianMixture::new(means, floats(&gmm["stds"]), floats(&gmm["weights"]), schedule)
        .unwrap()
        .with_parameterization(param)
}

fn cases(filter: impl Fn(&Value) -> bool) -> Vec<&'static Value> {
    let all: Vec<&Value> = golden()["cases"].as_array().unwrap().iter().filter(|c| filter(c)).collect();
    assert!(!all.is_empty(), "no golden cases matched");
    all
}

fn name(case: &Value) -> &str {
    case["name"].as_str().unwrap()
}

fn option<'a>(case: &'a Value, key: &str) -> Option<&'a Value> {
    case["options"].get(key)
}

/// The sampler configured as the reference was.
fn sampler_for(case: &Value) -> Sampler {
    let kind = match case["sampler"].as_str().unwrap() {
        "dpmpp_1" => SamplerKind::Euler, // DPM-Solver++(1) is DDIM / Euler.
        other => other.parse().unwrap(),
    };
    let mut sampler = Sampler::new(kind);
    if let Some(eta) = option(case, "eta").and_then(Value::as_f64) {
        sampler.eta = eta;
    }
    if let Some(solver_type) = option(case, "solver_type").and_then(Value::as_str) {
        sampler.heun_correction = solver_type == "heun";
    }
    // k-diffusion has no lower_order_final (only its step to sigma 0 is first order).
    sampler.lower_order_final = !case["reference"].as_str().unwrap().starts_with("k_diffusion");
    sampler
}

/// Runs our sampler over the reference's sigmas and checks every recorded state.
fn check_sampler(case: &Value, dtype: DType, tol: f64) {
    let model = model(case);
    let sigmas = Sigmas::new(floats(&case["sigmas"])).unwrap();
    let x = state(&case["x_init"], dtype);
    let noises = case["noises"].as_array().unwrap().iter().map(|n| state(n, dtype));
    let mut noise = ReplayNoise::new(noises);
    let mut states = Vec::new();
    let out =
        sampler_for(case).sample(&model, x, &sigmas, &mut noise, |step| states.push(to_vec(step.x))).unwrap();
    // diffusers also draws noise for a final step to sigma 0, where sigma_t = 0 cancels it.
    let unused =
        usize::from(case["reference"].as_str().unwrap().starts_with("diffusers") && sigmas.last() == 0.0);
    let drawn = case["noises"].as_array().unwrap().len() - noise.remaining();
    assert!(noise.remaining() <= unused, "{}: drew {drawn} noises, the reference more", name(case));
    for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
        let err = rel_err(&states[i], &floats(&step["x"]));
        assert!(err <= tol, "{} ({dtype:?}) step {i}: relative error {err:e} > {tol:e}", name(case));
    }
    let err = rel_err(&to_vec(&out), &floats(&case["final"]));
    assert!(err <= tol, "{} ({dtype:?}) final: relative error {err:e} > {tol:e}", name(case));
}

fn is_replayed(case: &Value) -> bool {
    let s = case["sampler"].as_str().unwrap();
    // diffusers' singlestep scheduler uses the schedule's own entries as intermediate points,
    // DDIM-linspace steps to t - T/N (not the next timestep) and diffusers' order-3 SDE has the
    // D2 sign discrepancy: those are replayed step by step below.
    (case["reference"] == "diffusers.DPMSolverSinglestepScheduler")
        || (s == "ddim" && option(case, "spacing").and_then(Value::as_str) == Some("linspace"))
        || (s == "dpmpp_3m_sde" && case["reference"] == "diffusers.DPMSolverMultistepScheduler")
}

#[test]
fn samplers_match_references_f64() {
    for case in cases(|c| !is_replayed(c)) {
        check_sampler(case, DType::F64, F64_TOL);
    }
}

#[test]
fn samplers_match_references_f32() {
    for case in cases(|c| !is_replayed(c)) {
        check_sampler(case, DType::F32, F32_TOL);
    }
}

/// (x0, eps) of the mixture at one noise level, as the solvers see them.
fn predict(model: &GaussianMixture, x: &Tensor, sigma: f64) -> (Tensor, Tensor) {
    let out = model.predict(x, &[sigma, sigma]).unwrap();
    to_x0_eps(model.parameterization(), model.schedule().family(), x, &out, &[sigma, sigma]).unwrap()
}

/// diffusers' DDIM with linspace spacing steps from timestep t to t - T/N, which is not the
/// next timestep it evaluates. Replaying its (t, prev_t) pairs through our one-step DDIM
/// reproduces it; its last step (t = 0 to abar_0, the same noise level) leaves x unchanged.
#[test]
fn ddim_linspace_matches_diffusers_step_pairs() {
    for case in
        cases(|c| c["sampler"] == "ddim" && option(c, "spacing").and_then(Value::as_str) == Some("linspace"))
    {
        let model = model(case);
        let mut sampler = Sampler::new(SamplerKind::Ddim);
        sampler.eta = option(case, "eta").unwrap().as_f64().unwrap();
        let mut noise =
            ReplayNoise::new(case["noises"].as_array().unwrap().iter().map(|n| state(n, DType::F64)));
        let mut x = state(&case["x_init"], DType::F64);
        let pairs = case["extra"]["ddim_steps"].as_array().unwrap();
        for (i, pair) in pairs.iter().enumerate() {
            let (from, to) = (pair["sigma_t"].as_f64().unwrap(), pair["sigma_prev"].as_f64().unwrap());
            if to < from {
                let sigmas = Sigmas::new(vec![from, to]).unwrap();
                x = sampler.sample(&model, x, &sigmas, &mut noise, |_| {}).unwrap();
            } else {
                // Same level: diffusers recomposes alpha x0 + sigma eps = x, with zero variance.
                let _ = noise.remaining();
                if sampler.eta > 0.0 {
                    use stride_solvers::NoiseSource;
                    noise.sample_like(&x).unwrap();
                }
            }
            let err = rel_err(&to_vec(&x), &floats(&case["steps"][i]["x"]));
            assert!(err <= F64_TOL, "{} step {i}: {err:e}", name(case));
        }
        assert_eq!(noise.remaining(), 0);
    }
}

/// diffusers' DPMSolverSinglestepScheduler(order 2) spends one evaluation per schedule entry:
/// entries alternate between first-order steps (to an intermediate level) and second stages
/// over the pair. Replayed through our `first_order` and `dpmpp_2s_second_stage`.
#[test]
fn dpmpp_2s_matches_diffusers_singlestep() {
    for case in cases(|c| c["reference"] == "diffusers.DPMSolverSinglestepScheduler") {
        let model = model(case);
        let family = Family::Vp;
        let s = floats(&case["sigmas"]);
        let orders = floats(&case["extra"]["order_per_step"]);
        let mut x = state(&case["x_init"], DType::F64);
        let mut block: Option<(Tensor, Tensor, f64)> = None;
        for i in 0..s.len() - 1 {
            let (x0, _) = predict(&model, &x, s[i]);
            x = if orders[i] == 1.0 {
                let next = update::first_order(family, &x, &x0, s[i], s[i + 1]).unwrap();
                block = Some((x.clone(), x0, s[i]));
                next
            } else {
                let (x_start, x0_start, s_start) = block.take().unwrap();
                update::dpmpp_2s_second_stage(family, &x_start, &x0_start, &x0, s_start, s[i], s[i + 1])
                    .unwrap()
            };
            let err = rel_err(&to_vec(&x), &floats(&case["steps"][i]["x"]));
            assert!(err <= F64_TOL, "{} step {i}: {err:e}", name(case));
        }
    }
}

/// diffusers' `sde-dpmsolver++` third-order step has D2 coefficient
/// `alpha_t ((1 - e^{-2h} - 2h) / (2h)^2 - 1/2)`, which tends to `-alpha_t` as h -> 0; ours (=
/// k-diffusion's `sample_dpmpp_3m_sde`) uses `-alpha_t phi3`, `phi3 = phi2 / H - 1/2`, which
/// tends to 0. Their difference is exactly `-alpha_t D2`: replaying diffusers' own states,
/// our step minus `alpha_t D2` reproduces every order-3 step of diffusers, and our step alone
/// does not.
#[test]
fn dpmpp_3m_sde_diffusers_d2_sign_discrepancy() {
    let case = cases(|c| {
        c["sampler"] == "dpmpp_3m_sde" && c["reference"] == "diffusers.DPMSolverMultistepScheduler"
    })[0];
    let model = model(case);
    let family = Family::Vp;
    let s = floats(&case["sigmas"]);
    let orders = floats(&case["extra"]["order_per_step"]);
    let noises: Vec<Tensor> =
        case["noises"].as_array().unwrap().iter().map(|n| state(n, DType::F64)).collect();
    let mut x = state(&case["x_init"], DType::F64);
    let mut history: Vec<(Tensor, f64)> = Vec::new();
    let mut third_order_steps = 0;
    for i in 0..s.len() - 1 {
        let (x0, _) = predict(&model, &x, s[i]);
        history.insert(0, (x0, -s[i].ln()));
        history.truncate(3);
        let order = orders[i] as usize;
        let params = MultistepParams { order, eta: 1.0, s_noise: 1.0, heun: false, taylor_exact_d2: false };
        let refs: Vec<(&Tensor, f64)> = history.iter().map(|(m, l)| (m, *l)).collect();
        let ours = update::dpmpp_multistep(family, &x, &refs, s[i], s[i + 1], params, noises.get(i)).unwrap();
        let reference = state(&case["steps"][i]["x"], DType::F64);
        let expected = if order == 3 {
            third_order_steps += 1;
            let (h, h0, h1) =
                (-s[i + 1].ln() - history[0].1, history[0].1 - history[1].1, history[1].1 - history[2].1);
            let (r0, r1) = (h0 / h, h1 / h);
            let d1_0 = ((&history[0].0 - &history[1].0).unwrap() / r0).unwrap();
            let d1_1 = ((&history[1].0 - &history[2].0).unwrap() / r1).unwrap();
            let d2 = ((d1_0 - d1_1).unwrap() / (r0 + r1)).unwrap();
            let alpha_t = family.alpha(s[i + 1]);
            // A real difference, 1e8 times the tolerance; the check below shows it is
            // exactly alpha_t D2.
            assert!(
                rel_err(&to_vec(&ours), &to_vec(&reference)) > 1e-4,
                "step {i}: ours should differ from diffusers' order-3 SDE step"
            );
            (&ours - (d2 * alpha_t).unwrap()).unwrap()
        } else {
            ours
        };
        let err = rel_err(&to_vec(&expected), &to_vec(&reference));
        assert!(err <= F64_TOL, "step {i} (order {order}): {err:e}");
        x = reference;
    }
    assert!(third_order_steps > 10);
}
