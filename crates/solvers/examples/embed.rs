//! Embedding stride-solvers in your own program: implement `Denoiser` for your model, pick a
//! step schedule and a sampler, and sample.
//!
//! Run: `cargo run --release -p stride-solvers --example embed`
//!
//! The "model" here is the exact denoiser of Gaussian data `x0 ~ N(mean, std^2)` under a
//! Stable-Diffusion-style discrete VP schedule, predicting epsilon like SD does; swap in your
//! network's forward pass.

use candle_core::{Device, Result, Tensor};
use stride_solvers::{
    Denoiser, DiscreteSchedule, NoiseSchedule, Parameterization, Sampler, Scheduler, TorchNoise,
};

struct GaussianData {
    mean: f64,
    std: f64,
    schedule: NoiseSchedule,
}

impl Denoiser for GaussianData {
    fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn parameterization(&self) -> Parameterization {
        Parameterization::Epsilon
    }

    /// `x = alpha x0 + sigma eps`; a real model would map `sigmas` to its timesteps with
    /// `self.schedule.t_at(s)` and run its network.
    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (alpha, sigma) = self.schedule.family().alpha_sigma(sigmas[0]);
        // E[eps | x] for Gaussian data: (x - alpha mean) sigma / (alpha^2 std^2 + sigma^2).
        let var = alpha * alpha * self.std * self.std + sigma * sigma;
        x.affine(sigma / var, -alpha * self.mean * sigma / var)
    }
}

fn main() -> anyhow::Result<()> {
    let model = GaussianData {
        mean: 0.5,
        std: 0.1,
        schedule: NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion()),
    };
    println!("sampler      scheduler  steps  NFE  mean    std     (data: mean 0.5, std 0.1)");
    for sampler_name in ["euler", "dpmpp_2m"] {
        for (scheduler_name, steps) in [("karras", 10), ("trailing", 10)] {
            let sampler: Sampler = sampler_name.parse()?;
            let scheduler: Scheduler = scheduler_name.parse()?;
            let sigmas = scheduler.sigmas(model.schedule(), steps)?;
            // One seed per sample (seed, seed + 1, ...): torch.manual_seed(seed); torch.randn(..).
            let mut noise = TorchNoise::consecutive(42, 1024);
            let x = sampler.initial_latent(&model, &sigmas, &[1024, 1], &mut noise, &Device::Cpu)?;
            let mut nfe = 0;
            let x0 = sampler.sample(&model, x, &sigmas, &mut noise, |step| nfe = step.nfe)?;
            let mean = x0.mean_all()?.to_scalar::<f32>()?;
            let std = x0.broadcast_sub(&x0.mean_all()?)?.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt();
            println!("{sampler_name:<12} {scheduler_name:<10} {steps:>5} {nfe:>4}  {mean:.4}  {std:.4}");
        }
    }
    Ok(())
}
