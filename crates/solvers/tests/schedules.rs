//! Step schedules against diffusers 0.42.1 and k-diffusion 0.1.1.post1.
//!
//! Expected values: `tests/golden/schedules.json` (written by `scripts/golden/generate.py`), the
//! references' own float32 outputs for the Stable Diffusion 1.5 scheduler config. Integer
//! timesteps must be equal; sigmas agree to 2e-5 relative: diffusers builds `alphas_cumprod`
//! as a float32 running product over 1000 steps, whose rounding drifts to ~1e-5 relative at
//! the noisy end, while we compute in f64 (the f64 k-diffusion values are checked to 1e-12).

use std::sync::OnceLock;

use serde_json::Value;
use stride_solvers::{AysModel, DiscreteSchedule, NoiseSchedule, ScheduleError, Scheduler, Sigmas};

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/schedules.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn sd15() -> NoiseSchedule {
    NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion())
}

fn assert_close(ours: &[f64], reference: &[f64], rel: f64, what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!((a - b).abs() <= rel * b.abs().max(1e-3), "{what}: sigma #{i} ours {a} reference {b}");
    }
}

fn cases<'a>(
    scheduler: &'a str,
    spacing: &'a str,
    karras: bool,
) -> impl Iterator<Item = &'static Value> + 'a {
    golden()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(move |c| c["scheduler"] == scheduler && c["spacing"] == spacing && c["karras"] == karras)
}

#[test]
fn alphas_cumprod_match_diffusers() {
    let sd = DiscreteSchedule::stable_diffusion();
    assert_close(sd.alphas_cumprod(), &floats(&golden()["alphas_cumprod"]), 2e-5, "alphas_cumprod");
}

/// DDIM's three spacings define the integer timesteps (n = 1, 10, 20, 30, 50).
#[test]
fn spacings_match_ddim_timesteps() {
    for (spacing, scheduler) in [
        ("leading", Scheduler::Leading { steps_offset: 1 }),
        ("trailing", Scheduler::Trailing),
        ("linspace", Scheduler::Linspace),
    ] {
        let mut seen = 0;
        for case in cases("DDIMScheduler", spacing, false) {
            let n = case["n"].as_u64().unwrap() as usize;
            let expected: Vec<usize> =
                case["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
            assert_eq!(scheduler.timesteps(1000, n).unwrap(), expected, "{spacing} n={n}");
            seen += 1;
        }
        assert_eq!(seen, 5);
    }
}

/// Euler's leading and trailing sigmas are those of the DDIM timesteps, then 0.
#[test]
fn spaced_sigmas_match_euler_discrete() {
    for (spacing, scheduler) in
        [("leading", Scheduler::Leading { steps_offset: 1 }), ("trailing", Scheduler::Trailing)]
    {
        for case in cases("EulerDiscreteScheduler", spacing, false) {
            let n = case["n"].as_u64().unwrap() as usize;
            let ours = scheduler.sigmas(&sd15(), n).unwrap();
            assert_close(ours.as_slice(), &floats(&case["sigmas"]), 2e-5, &format!("euler {spacing} n={n}"));
        }
    }
}

/// Karras over the full training range, as DPMSolverMultistepScheduler(use_karras_sigmas=True),
/// including the timesteps it rounds back from each sigma.
#[test]
fn karras_matches_dpm_solver_multistep() {
    let schedule = sd15();
    let NoiseSchedule::Discrete(discrete) = &schedule else { unreachable!() };
    let mut seen = 0;
    for case in cases("DPMSolverMultistepScheduler", "linspace", true) {
        let n = case["n"].as_u64().unwrap() as usize;
        let ours = Scheduler::Karras { rho: 7.0 }.sigmas(&schedule, n).unwrap();
        assert_close(ours.as_slice(), &floats(&case["sigmas"]), 2e-5, &format!("karras n={n}"));
        let timesteps: Vec<f64> = ours.as_slice()[..n].iter().map(|&s| discrete.t_at(s).round()).collect();
        assert_eq!(timesteps, floats(&case["timesteps"]), "karras timesteps n={n}");
        seen += 1;
    }
    assert_eq!(seen, 5);
}

/// k-diffusion's `get_sigmas_karras` / `get_sigmas_exponential` over an explicit range (f64).
#[test]
fn karras_and_exponential_match_k_diffusion() {
    let mut seen = 0;
    for entry in golden()["k_diffusion"].as_array().unwrap() {
        if entry["dtype"] != "float64" {
            continue;
        }
        let n = entry["n"].as_u64().unwrap() as usize;
        let schedule = NoiseSchedule::Ve {
            sigma_min: entry["sigma_min"].as_f64().unwrap(),
            sigma_max: entry["sigma_max"].as_f64().unwrap(),
        };
        let scheduler = match entry["fn"].as_str().unwrap() {
            "get_sigmas_karras" => Scheduler::Karras { rho: entry["rho"].as_f64().unwrap() },
            "get_sigmas_exponential" => Scheduler::Exponential,
            other => panic!("unexpected {other}"),
        };
        let ours = scheduler.sigmas(&schedule, n).unwrap();
        assert_close(ours.as_slice(), &floats(&entry["sigmas"]), 1e-12, &format!("{scheduler:?} n={n}"));
        seen += 1;
    }
    assert_eq!(seen, 6);
}

/// AYS: the 10-step table itself (its last entry replaced by 0, as ComfyUI does), and
/// log-linear interpolation that keeps both ends and stays between table neighbours. The
/// expected values are NVIDIA's published tables as ComfyUI ships them
/// (`comfy_extras/nodes_align_your_steps.py`, `NOISE_LEVELS["SD1"]` and `["SDXL"]`;
/// stable-diffusion.cpp's `AYSSchedule` has the same digits).
#[test]
fn ays_tables_interpolate_log_linearly() {
    let ten = Scheduler::Ays(AysModel::Sd15).sigmas(&sd15(), 10).unwrap();
    assert_eq!(ten.as_slice()[..3], [14.6146412293, 6.4745760956, 3.8636745985]);
    assert_eq!(ten.last(), 0.0);
    // 20 steps: every other point is a table entry; those between are geometric means.
    let twenty = Scheduler::Ays(AysModel::Sd15).sigmas(&sd15(), 20).unwrap();
    let s = twenty.as_slice();
    assert!((s[2] - 6.4745760956).abs() < 1e-9 && (s[4] - 3.8636745985).abs() < 1e-9);
    assert!((s[1] - (14.6146412293f64 * 6.4745760956).sqrt()).abs() < 1e-9);
    let sdxl = Scheduler::Ays(AysModel::Sdxl).sigmas(&sd15(), 10).unwrap();
    assert_eq!(sdxl.as_slice()[1], 6.3184485287);
}

#[test]
fn bad_schedules_are_errors_naming_the_entry() {
    assert_eq!(Sigmas::new(vec![]), Err(ScheduleError::TooShort(0)));
    assert_eq!(Sigmas::new(vec![1.0]), Err(ScheduleError::TooShort(1)));
    let err = Sigmas::new(vec![3.0, 2.0, 2.5, 0.0]).unwrap_err();
    assert_eq!(err, ScheduleError::NotDecreasing { index: 2, prev: 2.0, value: 2.5 });
    assert!(err.to_string().contains("sigma #2 (2.5) is not below sigma #1 (2)"), "{err}");
    assert!(matches!(Sigmas::new(vec![3.0, f64::NAN, 0.0]), Err(ScheduleError::NotFinite { index: 1, .. })));
    assert!(matches!(Sigmas::new(vec![3.0, f64::INFINITY]), Err(ScheduleError::NotFinite { index: 1, .. })));
    assert!(matches!(Sigmas::new(vec![3.0, -1.0]), Err(ScheduleError::Negative { index: 1, .. })));
    assert!(Sigmas::new(vec![f64::INFINITY, 1.0, 0.0]).is_ok(), "a leading +inf is pure noise");
    assert!(matches!(Sigmas::parse("14.6, x, 0"), Err(ScheduleError::Invalid(m)) if m.contains("`x`")));
    assert_eq!(Scheduler::Karras { rho: 7.0 }.sigmas(&sd15(), 0), Err(ScheduleError::ZeroSteps));
    // A mistyped count is an error, not an allocation of usize::MAX sigmas.
    let huge = usize::MAX / 4;
    assert_eq!(Scheduler::Uniform.sigmas(&sd15(), huge), Err(ScheduleError::TooManySteps(huge)));
    assert_eq!(Scheduler::Trailing.timesteps(1000, huge), Err(ScheduleError::TooManySteps(huge)));
    assert!(Scheduler::Uniform.sigmas(&sd15(), stride_solvers::sigmas::MAX_STEPS).is_ok());
    assert_eq!(stride_solvers::sigmas::loglinear_interp(&[5.0], 3), Err(ScheduleError::TooShort(1)));
    let unknown = "karas".parse::<Scheduler>().unwrap_err().to_string();
    assert!(unknown.contains("karras") && unknown.contains("exponential"), "{unknown}");
    let flow = NoiseSchedule::Flow { shift: 3.0 };
    let trailing = Scheduler::Trailing.sigmas(&flow, 10).unwrap_err().to_string();
    assert!(trailing.starts_with("trailing spacing needs a discrete-time schedule"), "{trailing}");
}

#[test]
fn parse_display_round_trip() {
    let sigmas = Sigmas::parse("14.6,7.8,3.5,0").unwrap();
    assert_eq!(sigmas.as_slice(), &[14.6, 7.8, 3.5, 0.0]);
    assert_eq!(Sigmas::parse(&sigmas.to_string()).unwrap(), sigmas);
}

/// Flow models start from pure noise (s = inf), which sigma-spaced schedules cannot reach:
/// they span `t = 1 - 1e-3 .. 1e-3` instead, so the first sigma is `shift 0.999 / (1 - 0.999)`
/// in flow time made k-sigma (derived: `u = shift t / (1 + (shift - 1) t)`, `s = u / (1 - u)`).
#[test]
fn flow_sigma_spaced_schedules_start_just_below_pure_noise() {
    let flow = NoiseSchedule::Flow { shift: 3.0 };
    let u = |t: f64| 3.0 * t / (1.0 + 2.0 * t);
    let (hi, lo) = (u(0.999) / (1.0 - u(0.999)), u(0.001) / (1.0 - u(0.001)));
    assert_eq!(flow.sampling_range(), (hi, lo));
    for scheduler in [Scheduler::Karras { rho: 7.0 }, Scheduler::Exponential, Scheduler::LogSnr] {
        let sigmas = scheduler.sigmas(&flow, 10).unwrap();
        assert!((sigmas.first() / hi - 1.0).abs() < 1e-12, "{scheduler}: {}", sigmas.first());
        let last_nonzero = sigmas.as_slice().iter().rev().find(|&&s| s > 0.0).unwrap();
        assert!((last_nonzero / lo - 1.0).abs() < 1e-12, "{scheduler}: {last_nonzero}");
    }
}

/// Every schedule's inverse maps: t_at(sigma_at(t)) = t, and lambda is -ln s.
#[test]
fn noise_schedules_invert() {
    let schedules = [
        sd15(),
        NoiseSchedule::Discrete(
            DiscreteSchedule::new(stride_solvers::BetaSchedule::SquaredCosCapV2, 1000).unwrap(),
        ),
        NoiseSchedule::continuous_vp(),
        NoiseSchedule::edm(),
        NoiseSchedule::Flow { shift: 3.0 },
        NoiseSchedule::flux_dynamic_shift(4096),
    ];
    for schedule in &schedules {
        let (t0, t1) = schedule.t_range();
        for i in 0..=20 {
            let t = t0 + (t1 - t0) * i as f64 / 20.0;
            let s = schedule.sigma_at(t);
            if !s.is_finite() || s == 0.0 {
                continue; // pure noise or clean data: lambda is infinite
            }
            let back = schedule.t_at(s);
            assert!((back - t).abs() <= 1e-9 * t.abs().max(1.0), "{schedule:?}: t {t} -> s {s} -> {back}");
            let (alpha, sigma) = schedule.alpha_sigma(t);
            assert!((schedule.lambda(t) - (alpha / sigma).ln()).abs() < 1e-9);
        }
    }
    // Flux's dynamic shift at 4096 tokens is e^1.15.
    assert_eq!(NoiseSchedule::flux_dynamic_shift(4096), NoiseSchedule::Flow { shift: 1.15f64.exp() });
}
