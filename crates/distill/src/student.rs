//! The student: the solver a schedule is distilled for, stepping exactly as
//! [`Sampler::sample`] does.
//!
//! Every step goes through the solver crate's own update rules ([`update::first_order`],
//! [`update::dpmpp_multistep`]) with the sampler's order logic (warm-up, `lower_order_final`),
//! so the distilled schedule is optimal for the update the sampler will run. The updates are
//! linear in the state and the predictions, so their coefficients are read off by applying the
//! very same rule to unit vectors ([`Student::coefficients`]): the search can then land one
//! state on every grid point with one matrix product.

use candle_core::{DType, Device, Tensor};
use stride_solvers::update::{self, MultistepParams};
use stride_solvers::{Family, Sampler, SamplerKind, X0Processing};

use crate::error::DistillError;

/// Which student state is compared with the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    /// Mean squared distance of the landing state to the teacher's state there (the OSS code).
    /// Costs no model evaluation beyond the search's own.
    Xt,
    /// Mean squared distance of the model's x0 prediction at the landing to the teacher's x0
    /// prediction there (the OSS paper's ablation preferred x0 space); a landing on the clean
    /// end is compared as it is. Costs one model evaluation per candidate landing: about
    /// K N^2 / 2 per sample for OSS, N^2 / 2 for the exact mode.
    X0,
}

impl Distance {
    pub fn name(self) -> &'static str {
        match self {
            Distance::Xt => "xt",
            Distance::X0 => "x0",
        }
    }
}

impl std::str::FromStr for Distance {
    type Err = DistillError;
    fn from_str(name: &str) -> Result<Self, DistillError> {
        match name {
            "xt" => Ok(Distance::Xt),
            "x0" => Ok(Distance::X0),
            other => Err(DistillError::Config(format!("unknown distance `{other}`: use xt or x0"))),
        }
    }
}

/// A single-evaluation, deterministic solver a schedule can be distilled for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Student {
    sampler: Sampler,
}

impl Student {
    /// Accepts euler, ddim (eta 0), dpmpp_2m and dpmpp_3m: the solvers whose step lands on the
    /// next grid point with one model evaluation. Two-stage (heun, dpmpp_2s) and stochastic
    /// solvers would need evaluations or noise between grid points.
    pub fn new(sampler: Sampler) -> Result<Self, DistillError> {
        use SamplerKind::*;
        let single = matches!(sampler.kind, Euler | Ddim | Dpmpp2m | Dpmpp3m);
        if !single || sampler.eta != 0.0 {
            return Err(DistillError::Config(format!(
                "cannot distill a schedule for `{}` (eta {}): choose a deterministic single-evaluation \
                 solver: euler, ddim, dpmpp_2m or dpmpp_3m",
                sampler.kind, sampler.eta
            )));
        }
        Ok(Self { sampler })
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// How many x0 predictions a step may use (the current one included).
    pub fn order(&self) -> usize {
        self.sampler.kind.order()
    }

    pub fn x0_processing(&self) -> X0Processing {
        self.sampler.x0_processing
    }

    /// The order of step `index` of `steps`, as [`Sampler::sample`] picks it: warm-up, then
    /// diffusers' `lower_order_final` below 15 steps.
    pub fn step_order(&self, index: usize, steps: usize) -> usize {
        let mut order = self.order().min(index + 1);
        if self.sampler.lower_order_final && steps < 15 {
            if index + 1 == steps {
                order = 1;
            } else if index + 2 == steps {
                order = order.min(2);
            }
        }
        order
    }

    /// One step from `x` at sigma `s` to `s_next` with `history` = `(x0, lambda)` of this and
    /// earlier steps, newest first, at most [`Self::order`] long; `order` from
    /// [`Self::step_order`].
    pub fn step(
        &self,
        family: Family,
        x: &Tensor,
        history: &[(&Tensor, f64)],
        (s, s_next): (f64, f64),
        order: usize,
    ) -> candle_core::Result<Tensor> {
        let Some(&(m0, _)) = history.first() else {
            candle_core::bail!("a student step needs the current x0 prediction in its history");
        };
        match self.sampler.kind {
            SamplerKind::Dpmpp2m | SamplerKind::Dpmpp3m => {
                let params = MultistepParams {
                    order,
                    eta: 0.0,
                    s_noise: self.sampler.s_noise,
                    heun: self.sampler.heun_correction,
                    taylor_exact_d2: self.sampler.taylor_exact_d2,
                };
                update::dpmpp_multistep(family, x, history, s, s_next, params, None)
            }
            // euler and ddim (eta 0): the same first-order step
            _ => update::first_order(family, x, m0, s, s_next),
        }
    }

    /// The coefficients `[c_x, c_m0, c_m1, ...]` of [`Self::step`] as a linear map of the state
    /// and the predictions (log-SNRs `lambdas`, newest first), read off by stepping unit
    /// vectors in f64.
    pub fn coefficients(
        &self,
        family: Family,
        lambdas: &[f64],
        (s, s_next): (f64, f64),
        order: usize,
    ) -> candle_core::Result<Vec<f64>> {
        let terms = lambdas.len() + 1;
        let unit = |k: usize| {
            let mut v = vec![0.0f64; terms];
            v[k] = 1.0;
            Tensor::from_vec(v, terms, &Device::Cpu)
        };
        let x = unit(0)?;
        let m: Vec<Tensor> = (1..terms).map(unit).collect::<candle_core::Result<_>>()?;
        let history: Vec<(&Tensor, f64)> = m.iter().zip(lambdas).map(|(t, l)| (t, *l)).collect();
        self.step(family, &x, &history, (s, s_next), order)?.to_dtype(DType::F64)?.to_vec1()
    }
}
