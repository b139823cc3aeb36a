//! The update rules, one function each, in the model's native space `x = alpha x0 + sigma eps`.
//!
//! They are public so a test (or a user) can replay a reference step by step. Notation as in
//! DPM-Solver++ (Lu et al. 2022): `s` is the k-diffusion sigma, `lambda = -ln s` the log-SNR,
//! `h = lambda_next - lambda`, `m_i` the data (x0) predictions, newest first.

use candle_core::{Result, Tensor};

use crate::schedule::Family;

/// `a x + b y` (scalar coefficients).
pub fn axpby(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    x.affine(a, 0.0)? + y.affine(b, 0.0)?
}

/// `e^{-h} = s_next / s`, exact when `s = inf` (gives 0).
fn decay(s: f64, s_next: f64) -> f64 {
    if s.is_infinite() {
        0.0
    } else {
        s_next / s
    }
}

/// First-order step from `s` to `s_next` with data prediction `x0`: DDIM (eta 0) =
/// DPM-Solver++(1) = Euler in k-diffusion coordinates:
/// `x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) x0`. A step to `s_next = 0` returns `x0`.
pub fn first_order(family: Family, x: &Tensor, x0: &Tensor, s: f64, s_next: f64) -> Result<Tensor> {
    if s_next == 0.0 {
        return Ok(x0.clone());
    }
    let (_, sg) = family.alpha_sigma(s);
    let (a1, sg1) = family.alpha_sigma(s_next);
    axpby(sg1 / sg, x, a1 * (1.0 - decay(s, s_next)), x0)
}

/// The ancestral split of a step `s -> s_next` (k-diffusion `get_ancestral_step`, in sigma units):
/// a deterministic step to `sigma_down`, then fresh noise of scale `sigma_up`, with
/// `sigma_down^2 + sigma_up^2 = s_next^2`. `eta = 1` is DDPM / DDIM(eta 1), `eta = 0` is the ODE.
pub fn ancestral_split(s: f64, s_next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 || s_next == 0.0 {
        return (s_next, 0.0);
    }
    let q = decay(s, s_next);
    let up = (eta * s_next * (1.0 - q * q).sqrt()).min(s_next);
    let down = (s_next * s_next - up * up).max(0.0).sqrt();
    (down, up)
}

/// Adds noise of k-diffusion scale `sigma_up` to a state at `s_down`, giving a state at
/// `s_next` (`sqrt(s_down^2 + sigma_up^2)`): `x' = alpha' (x / alpha_down + sigma_up z)`.
pub fn renoise(
    family: Family,
    x: &Tensor,
    s_down: f64,
    s_next: f64,
    sigma_up: f64,
    z: &Tensor,
) -> Result<Tensor> {
    let (a_down, _) = family.alpha_sigma(s_down);
    let (a1, _) = family.alpha_sigma(s_next);
    axpby(a1 / a_down, x, a1 * sigma_up, z)
}

/// Options of the multistep DPM-Solver++ family ([`dpmpp_multistep`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultistepParams {
    /// 1, 2 or 3.
    pub order: usize,
    /// Stochasticity: 0 is the ODE (`dpmpp_2m`, `dpmpp_3m`), 1 the SDE of the references.
    pub eta: f64,
    /// Scale on the injected noise (k-diffusion `s_noise`).
    pub s_noise: f64,
    /// Second-order correction: midpoint (k-diffusion default) or heun.
    pub heun: bool,
    /// Use the Taylor-exact D2 coefficient in the third-order step (twice the references').
    pub taylor_exact_d2: bool,
}

/// One multistep DPM-Solver++ step (ODE for `eta = 0`, the SDE of Lu et al. / k-diffusion
/// `sample_dpmpp_{2m,3m}_sde` otherwise).
///
/// `history` holds `(x0, lambda)` of the current and earlier steps, newest first; the step uses
/// `min(order, history.len())` of them. With `H = (1 + eta) h`:
/// `x' = (sigma'/sigma) e^{-eta h} x + alpha' [phi1 D0 + phi2 D1 - phi3 D2] + sigma' sqrt(1 - e^{-2 eta h}) z`,
/// `phi1 = 1 - e^{-H}`, `phi2 = 1 - phi1 / H`, `phi3 = phi2 / H - 1/2`; the midpoint variant uses
/// `phi1 / 2` for the order-2 term.
pub fn dpmpp_multistep(
    family: Family,
    x: &Tensor,
    history: &[(&Tensor, f64)],
    s: f64,
    s_next: f64,
    params: MultistepParams,
    z: Option<&Tensor>,
) -> Result<Tensor> {
    let m0 = history[0].0;
    if s_next == 0.0 {
        return Ok(m0.clone());
    }
    let (_, sg) = family.alpha_sigma(s);
    let (a1, sg1) = family.alpha_sigma(s_next);
    let lambda = history[0].1;
    let h = -s_next.ln() - lambda;
    // eta = 0 must stay exact when h is infinite (a first step from pure noise).
    let eta_h = if params.eta == 0.0 { 0.0 } else { params.eta * h };
    let big_h = h + eta_h;
    let phi1 = -(-big_h).exp_m1();
    let phi2 = 1.0 - phi1 / big_h;
    let mut out = axpby(sg1 / sg * (-eta_h).exp(), x, a1 * phi1, m0)?;
    match params.order.min(history.len()) {
        1 => {}
        2 => {
            let (m1, lambda1) = history[1];
            let r = (lambda - lambda1) / h;
            let d = (m0 - m1)?.affine(1.0 / r, 0.0)?;
            let c = if params.heun { phi2 } else { 0.5 * phi1 };
            out = (out + d.affine(a1 * c, 0.0)?)?;
        }
        _ => {
            let ((m1, lambda1), (m2, lambda2)) = (history[1], history[2]);
            let r0 = (lambda - lambda1) / h;
            let r1 = (lambda1 - lambda2) / h;
            let d1_0 = (m0 - m1)?.affine(1.0 / r0, 0.0)?;
            let d1_1 = (m1 - m2)?.affine(1.0 / r1, 0.0)?;
            let diff = (&d1_0 - &d1_1)?;
            let d1 = (d1_0 + diff.affine(r0 / (r0 + r1), 0.0)?)?;
            let d2 = diff.affine(1.0 / (r0 + r1), 0.0)?;
            let phi3 = phi2 / big_h - 0.5;
            let c2 = if params.taylor_exact_d2 { 2.0 * phi3 } else { phi3 };
            out = (out + axpby(a1 * phi2, &d1, -a1 * c2, &d2)?)?;
        }
    }
    match z {
        Some(z) if params.eta > 0.0 => {
            let scale = sg1 * (-(-2.0 * eta_h).exp_m1()).sqrt() * params.s_noise;
            out + z.affine(scale, 0.0)?
        }
        _ => Ok(out),
    }
}

/// The second stage of a singlestep DPM-Solver++(2) step from `s` to `s_next` through the
/// intermediate level `s_mid` (k-diffusion's `dpmpp_2s`: the log-SNR midpoint; diffusers'
/// singlestep scheduler: the schedule's own intermediate entry). `x0` and `x0_mid` are the data
/// predictions at `s` and at the intermediate state. With `r = (lambda_mid - lambda) / h`:
/// `x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) (x0 + (x0_mid - x0) / (2 r))`.
pub fn dpmpp_2s_second_stage(
    family: Family,
    x: &Tensor,
    x0: &Tensor,
    x0_mid: &Tensor,
    s: f64,
    s_mid: f64,
    s_next: f64,
) -> Result<Tensor> {
    let r = (s.ln() - s_mid.ln()) / (s.ln() - s_next.ln());
    let w = 1.0 / (2.0 * r);
    let d = axpby(1.0 - w, x0, w, x0_mid)?;
    first_order(family, x, &d, s, s_next)
}

/// The coordinates in which Euler and Heun integrate the probability-flow ODE: `y = x / c(s)`
/// against time `tau(s)`, with velocity `dy/dtau = a x0 + b eps`. VP and VE use k-diffusion's
/// (`y = x / alpha`, `tau = s`, velocity `eps`: EDM, diffusers' Euler/Heun schedulers); flow
/// models their own (`y = x`, `tau = t`, velocity `eps - x0`: diffusers' FlowMatch schedulers).
/// Both give the same Euler step; Heun differs.
#[derive(Debug, Clone, Copy)]
pub struct OdeFrame {
    family: Family,
}

impl OdeFrame {
    pub fn new(family: Family) -> Self {
        Self { family }
    }

    /// `(c, tau)` at `s`.
    pub fn coords(&self, s: f64) -> (f64, f64) {
        match self.family {
            Family::Flow => (1.0, self.family.sigma(s)),
            Family::Vp | Family::Ve => (self.family.alpha(s), s),
        }
    }

    /// `dy/dtau` at the native state `x` (noise level `s`) with data prediction `x0`:
    /// `eps = (x - alpha x0) / sigma` for VP/VE, `eps - x0 = (x - x0) / sigma` for flow.
    pub fn velocity(&self, x: &Tensor, x0: &Tensor, s: f64) -> Result<Tensor> {
        let (alpha, sigma) = self.family.alpha_sigma(s);
        match self.family {
            Family::Flow => axpby(1.0 / sigma, x, -1.0 / sigma, x0),
            Family::Vp | Family::Ve => axpby(1.0 / sigma, x, -alpha / sigma, x0),
        }
    }

    /// `x'` after moving `y` along `velocity` from `s` to `s_next`.
    pub fn advance(&self, x: &Tensor, velocity: &Tensor, s: f64, s_next: f64) -> Result<Tensor> {
        let (c, tau) = self.coords(s);
        let (c1, tau1) = self.coords(s_next);
        axpby(c1 / c, x, c1 * (tau1 - tau), velocity)
    }
}
