//! Convergence order of the deterministic solvers on the exact Gaussian-mixture denoiser.
//!
//! Expected values are derived, not recorded: the probability-flow ODE is integrated from
//! sigma 20 to 0.05 (uniform in log-SNR, the DPM-Solver spacing) and compared with a very fine
//! reference run (third-order multistep with the Taylor-exact D2 term, 4000 steps, f64),
//! whose own error is below 1e-9 (checked below), over 10^4 times below every solver's error at
//! N = 80 (2.7e-5 to 4.5e-3). The measured order log2(e(N) / e(2N)) at N = 40 -> 80 must be
//! within 0.3 of each solver's nominal order: measured 1.00 (euler, ddim) to 3.11 (3M with the
//! exact D2), printed with `--nocapture`; a wrong step coefficient costs about half an order
//! or more, as the reference 3M below shows.

use candle_core::{DType, Device, Tensor};
use stride_models::GaussianMixture;
use stride_solvers::{NoiseSchedule, NoiseSource, Sampler, SamplerKind, Scheduler, Sigmas, TorchNoise};

const S_MAX: f64 = 20.0;
const S_MIN: f64 = 0.05;

fn setup() -> (GaussianMixture, Tensor) {
    let schedule = NoiseSchedule::Ve { sigma_min: S_MIN, sigma_max: S_MAX };
    let model = GaussianMixture::synthetic(16, 4, schedule).unwrap();
    let mut noise = TorchNoise::new(&[7, 8, 9, 10]);
    let x = noise.sample(&(4, 16).into(), DType::F64, &Device::Cpu).unwrap().affine(S_MAX, 0.0).unwrap();
    (model, x)
}

fn solve(sampler: &Sampler, model: &GaussianMixture, x: &Tensor, steps: usize) -> Tensor {
    let sigmas: Sigmas = Scheduler::LogSnr.sigmas(stride_solvers::Denoiser::schedule(model), steps).unwrap();
    let mut unused = TorchNoise::new(&[0]);
    sampler.sample(model, x.clone(), &sigmas, &mut unused, |_| {}).unwrap()
}

fn rms(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap().sqrt()
}

fn exact_sampler() -> Sampler {
    let mut s = Sampler::new(SamplerKind::Dpmpp3m);
    s.taylor_exact_d2 = true;
    s
}

/// Measured orders at N = 10->20, 20->40, 40->80.
fn measured_orders(sampler: &Sampler) -> Vec<f64> {
    let (model, x) = setup();
    let reference = solve(&exact_sampler(), &model, &x, 4000);
    let errors: Vec<f64> =
        [10, 20, 40, 80].iter().map(|&n| rms(&solve(sampler, &model, &x, n), &reference)).collect();
    let shown: Vec<String> = errors.iter().map(|e| format!("{e:.2e}")).collect();
    eprintln!("errors at N = 10, 20, 40, 80: {shown:?}");
    errors.windows(2).map(|w| (w[0] / w[1]).log2()).collect()
}

fn sampler(kind: SamplerKind) -> Sampler {
    let mut s = Sampler::new(kind);
    s.lower_order_final = false;
    s
}

/// The reference run is converged: doubling its steps changes it by less than 1e-9 RMS
/// (measured 5.0e-10; for a third-order solver the 4000-step error is about 8/7 of that).
#[test]
fn the_reference_is_converged() {
    let (model, x) = setup();
    let change = rms(&solve(&exact_sampler(), &model, &x, 4000), &solve(&exact_sampler(), &model, &x, 8000));
    assert!(change < 1e-9, "4000 -> 8000 steps changes the reference by {change:e}");
}

#[test]
fn each_solver_converges_at_its_order() {
    let mut heun_2m = sampler(SamplerKind::Dpmpp2m);
    heun_2m.heun_correction = true;
    let mut exact_3m = sampler(SamplerKind::Dpmpp3m);
    exact_3m.taylor_exact_d2 = true;
    let cases = [
        ("euler", sampler(SamplerKind::Euler), 1.0),
        ("ddim", sampler(SamplerKind::Ddim), 1.0),
        ("heun", sampler(SamplerKind::Heun), 2.0),
        ("dpmpp_2m (midpoint)", sampler(SamplerKind::Dpmpp2m), 2.0),
        ("dpmpp_2m (heun)", heun_2m, 2.0),
        ("dpmpp_2s", sampler(SamplerKind::Dpmpp2s), 2.0),
        ("dpmpp_3m (Taylor-exact D2)", exact_3m, 3.0),
    ];
    for (name, sampler, nominal) in cases {
        let orders = measured_orders(&sampler);
        let last = orders[orders.len() - 1];
        eprintln!("{name}: measured orders {orders:.3?}");
        assert!(
            (last - nominal).abs() <= 0.3,
            "{name}: measured order {last:.3} vs nominal {nominal} ({orders:.3?})"
        );
    }
}

/// The 3M step of diffusers, k-diffusion and Lu et al. weights D2 = h^2 x0''/2 by
/// `-((e^{-h} - 1 + h)/h^2 - 1/2)`, half of the Taylor-exact `(h^2 - 2h + 2 - 2e^{-h})/h^2`.
/// That costs it its third order: as written it converges at about 2 (we keep it as the
/// default for parity), with the term doubled at 3.
#[test]
fn reference_3m_is_not_third_order() {
    let orders = measured_orders(&sampler(SamplerKind::Dpmpp3m));
    let last = orders[orders.len() - 1];
    eprintln!("dpmpp_3m (reference D2): measured orders {orders:.3?}");
    // Measured 2.56, 2.48, 2.47 (README); 2.7 is the lowest order the test above accepts for a
    // third-order solver, so the two tests cannot both pass for the same step formula.
    assert!(last < 2.7, "reference 3M measured order {last:.3} ({orders:.3?})");
}
