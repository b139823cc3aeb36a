//! Parity of the adaptive solvers with their real references, iteration by iteration.
//!
//! Expected values: `tests/golden/adaptive.json`, written by `scripts/golden/adaptive.py`, which
//! runs in float64 on the Gaussian mixture of `scripts/golden/gmm.py` (batch 2, D = 6) with
//! injected noise:
//! - `adaptive_sde`: AlexiaJM/score_sde_fast_sampling `sde_sampling_torch.py` (AdaptivePredictor,
//!   pc_sampler_adaptive) on yang-song/score_sde_pytorch `sde_lib.py` (continuous VP, beta
//!   0.1..20, eps 1e-3; VE 0.01..50, eps 1e-5);
//! - `dpm_adaptive`: k-diffusion 0.1.1.post1 `sample_dpm_adaptive` (eta 0 and eta > 0).
//!
//! Tolerance on the f64 path: 1e-8 relative for every iteration's state (max |ours -
//! reference| / max |reference| over the batch; measured worst 7.7e-10), 1e-6 for its time,
//! step size and scaled error ([`SCALAR_TOL`]); the accept / reject decisions must be
//! identical. (The f32 path is not compared: a rounding difference
//! can flip an accept decision near err = 1 and the trajectories then legitimately part.)

mod common;

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use common::{floats, load_golden};
use serde_json::Value;
use stride_models::GaussianMixture;
use stride_solvers::adaptive::{
    AdaptiveSde, AdaptiveStats, AdaptiveStep, DpmAdaptive, ErrorNorm, FinalDenoise, SampleProgress,
};
use stride_solvers::{NoiseSchedule, Parameterization, ReplayNoise};

const TOL: f64 = 1e-8;
/// For the per-iteration scalars (time, step size, scaled error). The scaled error is the
/// difference of the step's two solutions, so cancellation magnifies its relative rounding:
/// measured worst 5.9e-7.
const SCALAR_TOL: f64 = 1e-6;

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| load_golden("adaptive.json"))
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect()
}

fn state(v: &Value) -> Tensor {
    let values = floats(v);
    Tensor::from_vec(values.clone(), (2, values.len() / 2), &Device::Cpu).unwrap()
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

/// |a - b| <= SCALAR_TOL max(|a|, |b|) + 1e-15: relative, plus an ulp-level absolute slack for
/// the residue `t - eps` (~1e-18) that `t -= h` leaves on the final step.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= SCALAR_TOL * a.abs().max(b.abs()) + 1e-15
}

fn cases(solver: &str) -> Vec<&'static Value> {
    let all: Vec<&Value> =
        golden()["cases"].as_array().unwrap().iter().filter(|c| c["solver"] == solver).collect();
    assert!(!all.is_empty(), "no {solver} cases");
    all
}

fn mixture(schedule: NoiseSchedule, param: Parameterization) -> GaussianMixture {
    let gmm = &golden()["gmm"];
    let means = gmm["means"].as_array().unwrap().iter().map(floats).collect();
    GaussianMixture::new(means, floats(&gmm["stds"]), floats(&gmm["weights"]), schedule)
        .unwrap()
        .with_parameterization(param)
}

/// What the callback saw: per iteration, every sample's progress and the batch.
struct Record {
    progress: Vec<Vec<SampleProgress>>,
    x: Vec<Vec<f64>>,
    denoised: Vec<Vec<f64>>,
}

fn recorder(record: &mut Record) -> impl FnMut(&AdaptiveStep) + '_ {
    |step: &AdaptiveStep| {
        assert_eq!(step.iteration, record.progress.len());
        record.progress.push(step.samples.to_vec());
        record.x.push(to_vec(step.x));
        record.denoised.push(to_vec(step.denoised));
    }
}

// ------------------------------------------------------------------ adaptive_sde

fn sde_model(case: &Value) -> GaussianMixture {
    let sde = &case["sde"];
    match sde["type"].as_str().unwrap() {
        // The reference's score model is -eps_hat / std: an epsilon-prediction model.
        "vp" => mixture(
            NoiseSchedule::ContinuousVp {
                beta_min: sde["beta_min"].as_f64().unwrap(),
                beta_max: sde["beta_max"].as_f64().unwrap(),
            },
            Parameterization::Epsilon,
        ),
        // score = (x0_hat - x) / std^2: the data prediction of a VE model.
        "ve" => mixture(
            NoiseSchedule::Ve {
                sigma_min: sde["sigma_min"].as_f64().unwrap(),
                sigma_max: sde["sigma_max"].as_f64().unwrap(),
            },
            Parameterization::X0,
        ),
        other => panic!("unknown SDE {other}"),
    }
}

fn sde_solver(case: &Value, denoise: FinalDenoise) -> AdaptiveSde {
    let o = &case["options"];
    AdaptiveSde {
        rtol: o["reltol"].as_f64().unwrap(),
        atol: o["abstol"].as_f64().unwrap(),
        h_init: o["h_init"].as_f64().unwrap(),
        theta: o["safety"].as_f64().unwrap(),
        r: o["exp"].as_f64().unwrap(),
        norm: match o["norm"].as_str().unwrap() {
            "L2_scaled" => ErrorNorm::L2Scaled,
            "Linf" => ErrorNorm::Linf,
            other => panic!("unknown norm {other}"),
        },
        max_nfe: 100_000,
        shared_step: false,
        denoise,
    }
}

fn run_sde(case: &Value, denoise: FinalDenoise) -> (Tensor, AdaptiveStats, Record) {
    let model = sde_model(case);
    let mut noise = ReplayNoise::new(case["noises"].as_array().unwrap().iter().map(state));
    let mut record = Record { progress: vec![], x: vec![], denoised: vec![] };
    let (out, stats) = sde_solver(case, denoise)
        .sample(
            &model,
            state(&case["x_init"]),
            case["sigma_max"].as_f64().unwrap(),
            case["sigma_min"].as_f64().unwrap(),
            &mut noise,
            recorder(&mut record),
        )
        .unwrap();
    assert_eq!(noise.remaining(), 0, "{}: fewer noise draws than the reference", case["name"]);
    (out, stats, record)
}

#[test]
fn adaptive_sde_matches_gotta_go_fast() {
    for case in cases("adaptive_sde") {
        let name = case["name"].as_str().unwrap();
        let eps = case["options"]["eps"].as_f64().unwrap();
        let (out, stats, record) = run_sde(case, FinalDenoise::ScoreSde);
        let iterations = case["iterations"].as_array().unwrap();
        assert_eq!(record.progress.len(), iterations.len(), "{name}: iteration count");
        let mut accepted_steps = 0;
        let mut worst = 0.0f64;
        let mut expected_calls = 1; // the final denoise
        let mut expected_nfe = [1usize; 2];
        for (k, it) in iterations.iter().enumerate() {
            let (t, h, err) = (floats(&it["t"]), floats(&it["h"]), floats(&it["err"]));
            let (t_next, h_next, accepted) =
                (floats(&it["t_next"]), floats(&it["h_next"]), bools(&it["accepted"]));
            let ours = &record.progress[k];
            // The first stage is reused when every sample stepping now was rejected last time.
            let reuse = k > 0 && (0..2).all(|i| !ours[i].stepped || !record.progress[k - 1][i].accepted);
            let cost = if reuse { 1 } else { 2 };
            expected_calls += cost;
            for i in 0..2 {
                let p = &ours[i];
                if !p.stepped {
                    // Finished: the reference keeps the row with h = 0 (or a step of ~1e-18
                    // after landing an ulp beside eps), which leaves it in place.
                    assert!(
                        (t[i] - eps).abs() <= 1e-6 && h[i] < 1e-12,
                        "{name} it {k} sample {i}: not finished"
                    );
                    continue;
                }
                expected_nfe[i] += cost;
                assert!(
                    close(p.t, t[i]) && close(p.h, h[i]),
                    "{name} it {k} sample {i}: t/h {p:?} vs {t:?} {h:?}"
                );
                assert!(close(p.error, err[i]), "{name} it {k} sample {i}: err {} vs {}", p.error, err[i]);
                assert_eq!(p.accepted, accepted[i], "{name} it {k} sample {i}: accept decision");
                assert!(
                    close(p.t_next, t_next[i]),
                    "{name} it {k} sample {i}: t_next {} vs {}",
                    p.t_next,
                    t_next[i]
                );
                assert!(
                    close(p.h_next, h_next[i]),
                    "{name} it {k} sample {i}: h_next {} vs {}",
                    p.h_next,
                    h_next[i]
                );
                accepted_steps += usize::from(p.accepted);
            }
            let e = rel_err(&record.x[k], &floats(&it["x"]));
            assert!(e <= TOL, "{name} iteration {k}: state relative error {e:e}");
            worst = worst.max(e);
        }
        assert!(accepted_steps > 50, "{name}: only {accepted_steps} accepted steps");
        let e = rel_err_t(&out, &floats(&case["final"]));
        assert!(e <= TOL, "{name}: final (x - sigma eps at eps) relative error {e:e}");
        // NFE: the reference spends 2 evaluations per iteration on the whole batch plus the
        // denoise; we skip the first stage after a rejection of every stepping sample.
        assert_eq!(stats.model_calls, expected_calls, "{name}: model calls");
        assert!(stats.model_calls <= case["extra"]["score_calls"].as_u64().unwrap() as usize);
        for (i, (s, nfe)) in stats.samples.iter().zip(expected_nfe).enumerate() {
            assert_eq!(s.nfe, nfe, "{name}: sample {i} NFE");
            assert!(s.capped_at.is_none());
        }
        eprintln!(
            "{name}: worst state error {worst:.1e}, final {e:.1e}; {} iterations, model calls {} (reference {}), {}",
            iterations.len(),
            stats.model_calls,
            case["extra"]["score_calls"],
            stats
        );
    }
}

fn rel_err_t(ours: &Tensor, reference: &[f64]) -> f64 {
    rel_err(&to_vec(ours), reference)
}

/// Our default final step returns `x0`; the reference's `x + std^2 score` is `alpha(eps) x0`
/// (VP) or `x0` (VE). Checked against the reference's final state.
#[test]
fn adaptive_sde_x0_denoise_is_reference_over_alpha() {
    for case in cases("adaptive_sde") {
        let name = case["name"].as_str().unwrap();
        let (x0, _, _) = run_sde(case, FinalDenoise::X0);
        let model = sde_model(case);
        use stride_solvers::Denoiser;
        let alpha = model.schedule().family().alpha(case["sigma_min"].as_f64().unwrap());
        let e = rel_err_t(&x0.affine(alpha, 0.0).unwrap(), &floats(&case["final"]));
        assert!(e <= TOL, "{name}: alpha x0 vs reference final: {e:e}");
        let (before, _, _) = run_sde(case, FinalDenoise::None);
        let e = rel_err_t(&before, &floats(&case["before_denoise"]));
        assert!(e <= TOL, "{name}: state at eps: {e:e}");
    }
}

// ------------------------------------------------------------------ dpm_adaptive

fn dpm_solver(case: &Value) -> DpmAdaptive {
    let o = &case["options"];
    let f = |k: &str| o[k].as_f64().unwrap();
    DpmAdaptive {
        order: o["order"].as_u64().unwrap() as usize,
        rtol: f("rtol"),
        atol: f("atol"),
        h_init: f("h_init"),
        pcoeff: f("pcoeff"),
        icoeff: f("icoeff"),
        dcoeff: f("dcoeff"),
        accept_safety: f("accept_safety"),
        eta: f("eta"),
        s_noise: f("s_noise"),
        max_nfe: 100_000,
    }
}

#[test]
fn dpm_adaptive_matches_k_diffusion() {
    for case in cases("dpm_adaptive") {
        let name = case["name"].as_str().unwrap();
        let schedule = match case["family"].as_str().unwrap() {
            "ve" => NoiseSchedule::edm(),
            "vp" => NoiseSchedule::continuous_vp(),
            other => panic!("unknown family {other}"),
        };
        // k-diffusion's model is a denoiser (x0 prediction); VP states are recorded natively.
        let model = mixture(schedule, Parameterization::X0);
        let mut noise = ReplayNoise::new(case["noises"].as_array().unwrap().iter().map(state));
        let mut record = Record { progress: vec![], x: vec![], denoised: vec![] };
        let (out, stats) = dpm_solver(case)
            .sample(
                &model,
                state(&case["x_init"]),
                case["sigma_max"].as_f64().unwrap(),
                case["sigma_min"].as_f64().unwrap(),
                &mut noise,
                recorder(&mut record),
            )
            .unwrap();
        assert_eq!(noise.remaining(), 0, "{name}: noise draws");
        let iterations = case["iterations"].as_array().unwrap();
        assert_eq!(record.progress.len(), iterations.len(), "{name}: iteration count");
        let mut worst = 0.0f64;
        for (k, it) in iterations.iter().enumerate() {
            let p = &record.progress[k][0];
            assert!(record.progress[k].iter().all(|q| q == p), "{name}: one step for the batch");
            let f = |key: &str| it[key].as_f64().unwrap();
            assert_eq!(
                p.accepted,
                it["accepted"].as_bool().unwrap(),
                "{name} iteration {k}: accept decision"
            );
            assert!(close(p.t_next, f("lambda")), "{name} it {k}: lambda {} vs {}", p.t_next, f("lambda"));
            assert!(close(p.sigma_next, f("sigma")), "{name} it {k}: sigma");
            assert!(close(p.h_next, f("h_next")), "{name} it {k}: h {} vs {}", p.h_next, f("h_next"));
            assert!(close(p.error, f("error")), "{name} it {k}: error {} vs {}", p.error, f("error"));
            let e = rel_err(&record.x[k], &floats(&it["x"]));
            assert!(e <= TOL, "{name} iteration {k}: state relative error {e:e}");
            worst = worst.max(e);
            let e = rel_err(&record.denoised[k], &floats(&it["denoised"]));
            assert!(e <= TOL, "{name} iteration {k}: denoised relative error {e:e}");
        }
        let e = rel_err_t(&out, &floats(&case["final"]));
        assert!(e <= TOL, "{name}: final relative error {e:e}");
        let info = &case["extra"]["info"];
        let n = |k: &str| info[k].as_u64().unwrap() as usize;
        for s in &stats.samples {
            assert_eq!((s.accepted, s.rejected), (n("n_accept"), n("n_reject")), "{name}: step counts");
            // k-diffusion re-evaluates the unchanged starting point after a rejection; we do not.
            assert_eq!(s.nfe, n("nfe") - n("n_reject"), "{name}: NFE");
            assert!(s.capped_at.is_none());
        }
        assert_eq!(stats.model_calls, n("nfe") - n("n_reject"));
        eprintln!(
            "{name}: worst state error {worst:.1e}, final {e:.1e}; {stats} (k-diffusion nfe {})",
            n("nfe")
        );
    }
}
