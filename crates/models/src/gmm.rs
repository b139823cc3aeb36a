//! An exact denoiser: data drawn from a mixture of isotropic Gaussians.
//!
//! For `x0 ~ sum_k w_k N(mu_k, std_k^2 I)` and `x = alpha x0 + sigma eps`, the component
//! marginals are `N(alpha mu_k, var_k I)` with `var_k = alpha^2 std_k^2 + sigma^2`, and
//!
//! `E[x0 | x] = sum_k r_k(x) (mu_k + alpha std_k^2 / var_k (x - alpha mu_k))`,
//! `log r_k = log w_k - (D/2) log var_k - |x - alpha mu_k|^2 / (2 var_k)` (then softmax).
//!
//! It is the model every solver test and benchmark uses: its probability-flow ODE has no
//! closed form, but its denoiser is exact in any dimension, dtype and schedule.

use candle_core::{Result, Tensor, D};
use stride_solvers::{from_x0_eps, Denoiser, NoiseSchedule, Parameterization};

/// A Gaussian mixture with its noise schedule and the parameterization it reports.
#[derive(Debug, Clone)]
pub struct GaussianMixture {
    means: Vec<Vec<f64>>,
    stds: Vec<f64>,
    log_weights: Vec<f64>,
    schedule: NoiseSchedule,
    parameterization: Parameterization,
}

#[derive(Debug, thiserror::Error)]
pub enum MixtureError {
    #[error("a mixture needs at least one component with means, stds and weights of equal count")]
    Components,
    #[error("every mean must have the same, non-zero dimension")]
    Dimension,
    #[error("stds and weights must be positive and finite")]
    Values,
}

impl GaussianMixture {
    /// Components with means `means[k]` (all of one dimension), isotropic stds and weights
    /// (normalised here). Reports x0 predictions until [`Self::with_parameterization`].
    pub fn new(
        means: Vec<Vec<f64>>,
        stds: Vec<f64>,
        weights: Vec<f64>,
        schedule: NoiseSchedule,
    ) -> std::result::Result<Self, MixtureError> {
        if means.is_empty() || means.len() != stds.len() || means.len() != weights.len() {
            return Err(MixtureError::Components);
        }
        let dim = means[0].len();
        if dim == 0 || means.iter().any(|m| m.len() != dim) {
            return Err(MixtureError::Dimension);
        }
        let positive = |v: &f64| v.is_finite() && *v > 0.0;
        if !stds.iter().all(positive) || !weights.iter().all(positive) {
            return Err(MixtureError::Values);
        }
        let total: f64 = weights.iter().sum();
        let log_weights = weights.iter().map(|w| (w / total).ln()).collect();
        Ok(Self { means, stds, log_weights, schedule, parameterization: Parameterization::X0 })
    }

    /// A reproducible mixture of `components` components in `dim` dimensions: means spread
    /// on `[-1, 1]` by a fixed hash of (component, coordinate), stds evenly from 0.1 towards 0.4
    /// (0.1 + 0.3 k / K for component k of K).
    pub fn synthetic(
        dim: usize,
        components: usize,
        schedule: NoiseSchedule,
    ) -> std::result::Result<Self, MixtureError> {
        let hash = |k: usize, i: usize| splitmix_unit((k as u64) << 32 | i as u64) * 2.0 - 1.0;
        let means = (0..components).map(|k| (0..dim).map(|i| hash(k, i)).collect()).collect();
        let stds = (0..components).map(|k| 0.1 + 0.3 * k as f64 / components.max(2) as f64).collect();
        let weights = (0..components).map(|k| 1.0 + k as f64).collect();
        Self::new(means, stds, weights, schedule)
    }

    /// The same mixture with every component's std multiplied by `factor` (sharper data makes
    /// the score stiff near sigma 0, as for images).
    pub fn with_stds_scaled(mut self, factor: f64) -> std::result::Result<Self, MixtureError> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(MixtureError::Values);
        }
        self.stds.iter_mut().for_each(|s| *s *= factor);
        Ok(self)
    }

    /// Report predictions in `parameterization` (the x0 posterior mean converted exactly).
    pub fn with_parameterization(mut self, parameterization: Parameterization) -> Self {
        self.parameterization = parameterization;
        self
    }

    /// The components' means and stds.
    pub fn components(&self) -> impl Iterator<Item = (&[f64], f64)> {
        self.means.iter().map(Vec::as_slice).zip(self.stds.iter().copied())
    }

    /// Data dimension `D`.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// The data distribution's exact mean and covariance (`D x D`, row-major):
    /// `mu = sum_k w_k mu_k`, `Sigma = sum_k w_k (std_k^2 I + mu_k mu_k^T) - mu mu^T`.
    pub fn moments(&self) -> (Vec<f64>, Vec<f64>) {
        let d = self.dim();
        let weights: Vec<f64> = self.log_weights.iter().map(|l| l.exp()).collect();
        let mut mean = vec![0.0; d];
        let mut cov = vec![0.0; d * d];
        for (k, mu) in self.means.iter().enumerate() {
            for i in 0..d {
                mean[i] += weights[k] * mu[i];
                cov[i * d + i] += weights[k] * self.stds[k].powi(2);
                for j in 0..d {
                    cov[i * d + j] += weights[k] * mu[i] * mu[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] -= mean[i] * mean[j];
            }
        }
        (mean, cov)
    }

    /// `n` exact draws from the data distribution, shape `(n, D)`, f64, reproducible from `seed`.
    pub fn sample_data(&self, n: usize, seed: u64) -> Result<Tensor> {
        let d = self.dim();
        let weights: Vec<f64> = self.log_weights.iter().map(|l| l.exp()).collect();
        let z = stride_solvers::TorchGenerator::new(seed).randn_f64(n * d);
        let mut data = Vec::with_capacity(n * d);
        for j in 0..n {
            let u = splitmix_unit(seed.wrapping_mul(0x1000_0000_01B3) ^ j as u64);
            let mut cumulative = 0.0;
            let k = weights.iter().position(|w| {
                cumulative += w;
                u < cumulative
            });
            let k = k.unwrap_or(weights.len() - 1);
            data.extend((0..d).map(|i| self.means[k][i] + self.stds[k] * z[j * d + i]));
        }
        Tensor::from_vec(data, (n, d), &candle_core::Device::Cpu)
    }

    /// The exact posterior mean `E[x0 | x]` for a batch `x` (any shape with `D` elements per
    /// sample) at per-sample k-diffusion sigmas.
    pub fn posterior_mean(&self, x: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (batch, device, dtype) = (x.dim(0)?, x.device(), x.dtype());
        let flat = x.flatten_from(1)?;
        if flat.dim(1)? != self.dim() {
            candle_core::bail!("state has {} elements per sample, the mixture {}", flat.dim(1)?, self.dim());
        }
        let family = self.schedule.family();
        let (alpha, sigma): (Vec<f64>, Vec<f64>) = sigmas.iter().map(|&s| family.alpha_sigma(s)).unzip();
        let column = |v: Vec<f64>| Tensor::from_vec(v, (batch, 1), device)?.to_dtype(dtype);
        let a = column(alpha.clone())?;
        let d = self.dim() as f64;
        let mut logits = Vec::with_capacity(self.means.len());
        let mut shrink = Vec::with_capacity(self.means.len());
        let mut centred_means = Vec::with_capacity(self.means.len());
        for (k, mean) in self.means.iter().enumerate() {
            let var: Vec<f64> =
                alpha.iter().zip(&sigma).map(|(a, s)| a * a * self.stds[k].powi(2) + s * s).collect();
            let mu = Tensor::from_vec(mean.clone(), (1, mean.len()), device)?.to_dtype(dtype)?;
            let a_mu = mu.broadcast_mul(&a)?;
            let dist = flat.sub(&a_mu)?.sqr()?.sum_keepdim(1)?;
            let bias: Vec<f64> = var.iter().map(|v| self.log_weights[k] - 0.5 * d * v.ln()).collect();
            let inv_two_var: Vec<f64> = var.iter().map(|v| -0.5 / v).collect();
            logits.push(dist.mul(&column(inv_two_var)?)?.add(&column(bias)?)?);
            // mu_k + c_k (x - alpha mu_k), c_k = alpha std_k^2 / var_k
            let c: Vec<f64> = alpha.iter().zip(&var).map(|(a, v)| a * self.stds[k].powi(2) / v).collect();
            shrink.push(column(c)?);
            centred_means.push((mu, a_mu));
        }
        let logits = Tensor::cat(&logits, 1)?;
        let r = candle_nn_softmax(&logits)?;
        let mut x0 = flat.zeros_like()?;
        for (k, (mu, a_mu)) in centred_means.iter().enumerate() {
            let term = flat.sub(a_mu)?.broadcast_mul(&shrink[k])?.broadcast_add(mu)?;
            x0 = (x0 + term.broadcast_mul(&r.narrow(1, k, 1)?)?)?;
        }
        x0.reshape(x.shape())
    }
}

/// SplitMix64 of `index` as a uniform number in `[0, 1)`: deterministic, uncorrelated values.
fn splitmix_unit(index: u64) -> f64 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Numerically stable softmax over the last dimension (candle-nn's, without the dependency).
fn candle_nn_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let e = logits.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

impl Denoiser for GaussianMixture {
    fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }

    fn predict(&self, x: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let x0 = self.posterior_mean(x, sigmas)?;
        if self.parameterization == Parameterization::X0 {
            return Ok(x0);
        }
        let family = self.schedule.family();
        let (alpha, sigma): (Vec<f64>, Vec<f64>) = sigmas.iter().map(|&s| family.alpha_sigma(s)).unzip();
        // eps = (x - alpha x0) / sigma
        let inv: Vec<f64> = sigma.iter().map(|s| 1.0 / s).collect();
        let neg: Vec<f64> = alpha.iter().zip(&sigma).map(|(a, s)| -a / s).collect();
        let eps = (scale(x, &inv)? + scale(&x0, &neg)?)?;
        from_x0_eps(self.parameterization, &x0, &eps, &alpha, &sigma)
    }
}

fn scale(x: &Tensor, c: &[f64]) -> Result<Tensor> {
    let mut shape = vec![c.len()];
    shape.resize(x.rank(), 1);
    x.broadcast_mul(&Tensor::new(c, x.device())?.to_dtype(x.dtype())?.reshape(shape)?)
}
