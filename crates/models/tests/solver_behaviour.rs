//! Solver behaviour beyond parity: bad input, NaN from a model, every family (flow from pure
//! noise included), x0 processing, batch-independent noise.

use candle_core::{DType, Device, Result, Tensor};
use stride_models::GaussianMixture;
use stride_solvers::sampler::process_x0;
use stride_solvers::update::{self, MultistepParams};
use stride_solvers::{
    Denoiser, DiscreteSchedule, Family, NoiseSchedule, NoiseSource, Parameterization, Sampler, SamplerKind,
    Scheduler, Sigmas, SolverError, TorchNoise, X0Processing, SAMPLERS,
};

/// Returns NaN below a noise level, as a broken model would.
struct NanBelow<'a>(&'a GaussianMixture, f64);

impl Denoiser for NanBelow<'_> {
    fn schedule(&self) -> &NoiseSchedule {
        self.0.schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.0.parameterization()
    }
    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let out = self.0.predict(x, sigmas)?;
        if sigmas[0] < self.1 {
            return out.affine(f64::NAN, 0.0);
        }
        Ok(out)
    }
}

/// Returns one row fewer than it was given, as a broken batching wrapper would.
struct DropsARow<'a>(&'a GaussianMixture);

impl Denoiser for DropsARow<'_> {
    fn schedule(&self) -> &NoiseSchedule {
        self.0.schedule()
    }
    fn parameterization(&self) -> Parameterization {
        self.0.parameterization()
    }
    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
        self.0.predict(x, sigmas)?.narrow(0, 1, x.dim(0)? - 1)
    }
}

fn mixture(schedule: NoiseSchedule) -> GaussianMixture {
    GaussianMixture::synthetic(8, 3, schedule).unwrap()
}

fn start(model: &dyn Denoiser, sigmas: &Sigmas, batch: usize) -> Tensor {
    let sampler = Sampler::new(SamplerKind::Euler);
    let mut noise = TorchNoise::consecutive(1, batch);
    sampler.initial_latent(model, sigmas, &[batch, 8], &mut noise, &Device::Cpu).unwrap()
}

#[test]
fn nan_from_the_model_is_an_error_naming_the_step() {
    let model = mixture(NoiseSchedule::edm());
    let sigmas = Sigmas::new(vec![10.0, 5.0, 2.0, 1.0, 0.5, 0.0]).unwrap();
    let broken = NanBelow(&model, 1.5);
    for (name, kind) in SAMPLERS {
        let x = start(&broken, &sigmas, 2);
        let mut noise = TorchNoise::consecutive(3, 2);
        let err = Sampler::new(*kind).sample(&broken, x, &sigmas, &mut noise, |_| {}).unwrap_err();
        // Step 3 starts at sigma 1 (heun and dpmpp_2s evaluate below 1.5 within step 2 already).
        match err {
            SolverError::NonFinite { step, sigma } => {
                assert!(step == 3 || (step == 2 && sigma < 1.5), "{name}: step {step} sigma {sigma}");
                assert!(err.to_string().contains(&format!("step {step}")));
            }
            other => panic!("{name}: expected NonFinite, got {other}"),
        }
    }
}

#[test]
fn bad_options_and_names_are_clear_errors() {
    let model = mixture(NoiseSchedule::edm());
    let sigmas = Sigmas::new(vec![10.0, 0.0]).unwrap();
    let mut sampler = Sampler::new(SamplerKind::Ddim);
    sampler.eta = f64::NAN;
    let err = sampler.sample(&model, start(&model, &sigmas, 1), &sigmas, &mut TorchNoise::new(&[0]), |_| {});
    assert!(matches!(err, Err(SolverError::Options(m)) if m.contains("eta")));
    let unknown = "dpmpp_2n".parse::<Sampler>().unwrap_err().to_string();
    for (name, _) in SAMPLERS {
        assert!(unknown.contains(name), "{unknown}");
    }

    // Settings, states and models a library caller can get wrong are errors, not panics.
    let x = start(&model, &sigmas, 2);
    let mut noise = TorchNoise::new(&[0, 1]);
    let mut thresholded = Sampler::new(SamplerKind::Euler);
    thresholded.x0_processing = X0Processing::DynamicThreshold { ratio: 0.995, max: 0.5 };
    let err = thresholded.sample(&model, x.clone(), &sigmas, &mut noise, |_| {}).unwrap_err();
    assert!(matches!(&err, SolverError::Options(m) if m.contains("max >= 1")), "{err}");
    assert!(process_x0(&x, thresholded.x0_processing).is_err());
    let euler = Sampler::new(SamplerKind::Euler);
    let empty = x.narrow(0, 0, 0).unwrap();
    let err = euler.sample(&model, empty, &sigmas, &mut TorchNoise::new(&[]), |_| {}).unwrap_err();
    assert!(matches!(&err, SolverError::Options(m) if m.contains("at least one sample")), "{err}");
    let err = euler.sample(&DropsARow(&model), x, &sigmas, &mut noise, |_| {}).unwrap_err();
    assert!(matches!(err, SolverError::PredictionShape { .. }), "{err}");
    assert!(TorchNoise::new(&[]).sample(&(0, 8).into(), DType::F32, &Device::Cpu).is_err());
    let params = MultistepParams { order: 2, eta: 0.0, s_noise: 1.0, heun: false, taylor_exact_d2: false };
    let one = start(&model, &sigmas, 1);
    assert!(update::dpmpp_multistep(Family::Ve, &one, &[], 1.0, 0.5, params, None).is_err());
    assert!(GaussianMixture::synthetic(0, 3, NoiseSchedule::edm()).is_err());
    assert!(mixture(NoiseSchedule::edm()).with_stds_scaled(f64::NAN).is_err());
}

/// Every sampler reaches the data from pure noise in every family: the result at 30 steps
/// lies within 0.05 RMS of a 1000-step Euler solution of the same ODE. The stochastic samplers
/// draw other paths, so each of their samples must instead lie where the data does: inside
/// the 99.99% ball of its nearest component (`|x - mu_k|^2 / std_k^2` is chi-square with 8
/// degrees of freedom, above 31.8 with probability 1e-4).
#[test]
fn every_family_reaches_the_data() {
    let schedules = [
        (
            "discrete VP",
            NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion()),
            Scheduler::Karras { rho: 7.0 },
        ),
        ("continuous VP", NoiseSchedule::continuous_vp(), Scheduler::Karras { rho: 7.0 }),
        ("VE", NoiseSchedule::edm(), Scheduler::Karras { rho: 7.0 }),
        ("flow", NoiseSchedule::Flow { shift: 3.0 }, Scheduler::Exponential),
    ];
    for (family, schedule, scheduler) in schedules {
        let model = mixture(schedule.clone());
        let sigmas = |n: usize| match schedule {
            // From pure noise (sigma = inf), then log-uniform from 50 down: a uniform-in-t flow
            // schedule ends with one long log-SNR step that multistep solvers handle poorly.
            NoiseSchedule::Flow { .. } => {
                let tail = Scheduler::Exponential
                    .sigmas(&NoiseSchedule::Ve { sigma_min: 0.01, sigma_max: 50.0 }, n - 1);
                Sigmas::new(
                    [f64::INFINITY].into_iter().chain(tail.unwrap().as_slice().iter().copied()).collect(),
                )
                .unwrap()
            }
            _ => scheduler.sigmas(&schedule, n).unwrap(),
        };
        let (fine, coarse) = (sigmas(1000), sigmas(30));
        let x_fine = start(&model, &fine, 4);
        let x_coarse = start(&model, &coarse, 4);
        let euler = Sampler::new(SamplerKind::Euler);
        let reference = euler.sample(&model, x_fine, &fine, &mut TorchNoise::new(&[0; 4]), |_| {}).unwrap();
        for (name, kind) in SAMPLERS {
            let sampler = Sampler::new(*kind);
            let mut noise = TorchNoise::consecutive(100, 4);
            let mut nfe = 0;
            let out = sampler
                .sample(&model, x_coarse.clone(), &coarse, &mut noise, |s| nfe = s.nfe)
                .unwrap_or_else(|e| panic!("{name} on {family}: {e}"));
            assert_eq!(nfe, sampler.nfe(schedule.family(), &coarse), "{name}: NFE");
            if sampler.eta == 0.0 {
                let diff = (&out - &reference).unwrap().sqr().unwrap().mean_all().unwrap();
                let rms = diff.to_scalar::<f32>().unwrap().sqrt();
                assert!(rms < 0.05, "{name} on {family}: RMS {rms} from the fine solution");
            } else {
                for row in out.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap() {
                    let chi2 = model
                        .components()
                        .map(|(mu, std)| {
                            row.iter().zip(mu).map(|(x, m)| (x - m).powi(2)).sum::<f64>() / std.powi(2)
                        })
                        .fold(f64::INFINITY, f64::min);
                    assert!(chi2 < 31.8, "{name} on {family}: {row:?} is off the data (chi-square {chi2})");
                }
            }
        }
    }
}

/// diffusers' `_threshold_sample`: per sample, q = quantile(|x0|, ratio) clamped to [1, max],
/// x0 = clamp(x0, -q, q) / q. Expected values computed by hand below.
#[test]
fn dynamic_thresholding_and_clipping() {
    // Sample 0: |x| = 0..=9 (q at 0.9 = 8.1, clamped to max 5); sample 1: all within 1 (q = 1).
    let row0: Vec<f32> = (0..10).map(|i| if i % 2 == 0 { i as f32 } else { -(i as f32) }).collect();
    let row1: Vec<f32> = (0..10).map(|i| i as f32 / 20.0).collect();
    let x0 = Tensor::from_vec([row0.clone(), row1.clone()].concat(), (2, 10), &Device::Cpu).unwrap();
    let out = process_x0(&x0, X0Processing::DynamicThreshold { ratio: 0.9, max: 5.0 }).unwrap();
    let out = out.to_vec2::<f32>().unwrap();
    for (i, v) in row0.iter().enumerate() {
        assert!((out[0][i] - v.clamp(-5.0, 5.0) / 5.0).abs() < 1e-6);
    }
    assert_eq!(out[1], row1);
    let clipped =
        process_x0(&x0, X0Processing::Clip(1.0)).unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(clipped, 1.0);
}

/// Sample i of a batch sees the same noise as a batch of one seeded with seed + i, so an image
/// does not depend on the batch it was made in, including the stochastic samplers' steps.
#[test]
fn noise_is_independent_of_the_batch() {
    let model = mixture(NoiseSchedule::edm());
    let sigmas = Scheduler::Karras { rho: 7.0 }.sigmas(model.schedule(), 12).unwrap();
    let sampler = Sampler::new(SamplerKind::Dpmpp2mSde);
    let run = |seed: u64, batch: usize| {
        let mut noise = TorchNoise::consecutive(seed, batch);
        let x = sampler.initial_latent(&model, &sigmas, &[batch, 8], &mut noise, &Device::Cpu).unwrap();
        sampler.sample(&model, x, &sigmas, &mut noise, |_| {}).unwrap()
    };
    let batch = run(40, 3);
    for i in 0..3 {
        let single = run(40 + i as u64, 1);
        assert_eq!(
            batch.get(i).unwrap().to_vec1::<f32>().unwrap(),
            single.get(0).unwrap().to_vec1::<f32>().unwrap()
        );
    }
    // And the initial latent of seed s is torch.randn for that seed.
    let mut noise = TorchNoise::new(&[42]);
    let z = noise.sample(&(1, 8).into(), DType::F32, &Device::Cpu).unwrap();
    let expected = stride_solvers::TorchGenerator::new(42).randn(8);
    assert_eq!(z.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
}
