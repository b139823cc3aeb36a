//! The update rules, one function each, in the model's native space `x = alpha x0 + sigma eps`.
//!
//! They are public so a test (or a user) can replay a reference step by step. Notation as in
//! DPM-Solver++ (Lu et al. 2022): `s` is the k-diffusion sigma, `lambda = -ln s` the log-SNR,
//! `h = lambda_next - lambda`, `m_i` the data (x0) predictions, newest first.
//!
//! Every update is a linear combination of the state, the model's predictions and the noise,
//! so each rule works out its scalar coefficients and then makes one pass over the latent
//! ([`lincomb`]): one output buffer per step, and no latent-sized temporaries.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

use crate::schedule::Family;

/// `sum_i c_i t_i` for tensors of one shape, in one pass with a single output buffer on
/// contiguous CPU f32/f64 tensors, and as a chain of candle ops elsewhere.
pub fn lincomb(terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let Some((_, first)) = terms.first() else {
        candle_core::bail!("lincomb of no terms");
    };
    match lincomb_cpu(terms)? {
        Some(CpuStorage::F32(out)) => return Tensor::from_vec(out, first.shape(), first.device()),
        Some(CpuStorage::F64(out)) => return Tensor::from_vec(out, first.shape(), first.device()),
        _ => {}
    }
    let mut acc = first.affine(terms[0].0, 0.0)?;
    for (c, t) in &terms[1..] {
        acc = (acc + t.affine(*c, 0.0)?)?;
    }
    Ok(acc)
}

/// The fused CPU kernel (None when a term is not a contiguous CPU f32/f64 tensor).
fn lincomb_cpu(terms: &[(f64, &Tensor)]) -> Result<Option<CpuStorage>> {
    let first = terms[0].1;
    if !first.device().is_cpu()
        || terms.iter().any(|(_, t)| t.dtype() != first.dtype() || t.shape() != first.shape())
    {
        return Ok(None);
    }
    let guards: Vec<_> = terms.iter().map(|(_, t)| t.storage_and_layout()).collect();
    macro_rules! fused {
        ($ty:ty, $variant:ident) => {{
            let mut slices: Vec<(f64, &[$ty])> = Vec::with_capacity(terms.len());
            for ((c, _), (storage, layout)) in terms.iter().zip(&guards) {
                let (Storage::Cpu(CpuStorage::$variant(data)), Some((start, end))) =
                    (&**storage, layout.contiguous_offsets())
                else {
                    return Ok(None);
                };
                slices.push((*c, &data[start..end]));
            }
            let n = slices[0].1.len();
            let mut out: Vec<$ty> = vec![0.0; n];
            for (c, data) in &slices {
                let c = *c as $ty;
                out.iter_mut().zip(data.iter()).for_each(|(o, v)| *o += c * v);
            }
            Ok(Some(CpuStorage::$variant(out)))
        }};
    }
    match first.dtype() {
        DType::F32 => fused!(f32, F32),
        DType::F64 => fused!(f64, F64),
        _ => Ok(None),
    }
}

/// `a x + b y`.
pub fn axpby(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    lincomb(&[(a, x), (b, y)])
}

/// `e^{-h} = s_next / s`, exact when `s = inf` (gives 0).
fn decay(s: f64, s_next: f64) -> f64 {
    if s.is_infinite() {
        0.0
    } else {
        s_next / s
    }
}

/// Coefficients `(c_x, c_d)` of the first-order step `x' = c_x x + c_d D` from `s` to `s_next`
/// with data prediction `D`: `c_x = sigma'/sigma`, `c_d = alpha' (1 - e^{-h})`.
fn first_order_coeffs(family: Family, s: f64, s_next: f64) -> (f64, f64) {
    if s_next == 0.0 {
        return (0.0, 1.0);
    }
    let (_, sg) = family.alpha_sigma(s);
    let (a1, sg1) = family.alpha_sigma(s_next);
    (sg1 / sg, a1 * (1.0 - decay(s, s_next)))
}

/// First-order step from `s` to `s_next` with data prediction `x0`: DDIM (eta 0) =
/// DPM-Solver++(1) = Euler in k-diffusion coordinates:
/// `x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) x0`. A step to `s_next = 0` returns `x0`.
pub fn first_order(family: Family, x: &Tensor, x0: &Tensor, s: f64, s_next: f64) -> Result<Tensor> {
    if s_next == 0.0 {
        return Ok(x0.clone());
    }
    let (cx, cd) = first_order_coeffs(family, s, s_next);
    lincomb(&[(cx, x), (cd, x0)])
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

/// An ancestral step: the first-order step to `sigma_down` with the data prediction
/// `D = sum w_j m_j` (`x0` for DDIM / Euler ancestral, the 2S combination for DPM-Solver++(2S)),
/// then noise `z` of k-diffusion scale `sigma_up` (already multiplied by `s_noise`), rescaled to
/// the native space at `s_next`: `x' = alpha' (x_down / alpha_down + sigma_up z)`.
pub fn ancestral_step(
    family: Family,
    x: &Tensor,
    prediction: &[(f64, &Tensor)],
    s: f64,
    (s_down, s_next): (f64, f64),
    noise: Option<(f64, &Tensor)>,
) -> Result<Tensor> {
    let (cx, cd) = first_order_coeffs(family, s, s_down);
    let scale = match noise {
        Some(_) => family.alpha(s_next) / family.alpha(s_down),
        None => 1.0,
    };
    let mut terms = vec![(scale * cx, x)];
    terms.extend(prediction.iter().map(|(w, m)| (scale * cd * w, *m)));
    if let Some((sigma_up, z)) = noise {
        terms.push((family.alpha(s_next) * sigma_up, z));
    }
    if cx == 0.0 {
        terms.remove(0);
    }
    lincomb(&terms)
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
/// `phi1 / 2` for the order-2 term. `D0 = m0`; order 2: `D1 = (m0 - m1) / r`; order 3:
/// `D1 = d1_0 + r0/(r0 + r1) (d1_0 - d1_1)`, `D2 = (d1_0 - d1_1)/(r0 + r1)` with
/// `d1_0 = (m0 - m1)/r0`, `d1_1 = (m1 - m2)/r1`, `r_i = h_i / h`.
pub fn dpmpp_multistep(
    family: Family,
    x: &Tensor,
    history: &[(&Tensor, f64)],
    s: f64,
    s_next: f64,
    params: MultistepParams,
    z: Option<&Tensor>,
) -> Result<Tensor> {
    if history.is_empty() || !(1..=3).contains(&params.order) {
        candle_core::bail!(
            "dpmpp_multistep needs the current x0 in its history and an order of 1 to 3, got {} \
             entries and order {}",
            history.len(),
            params.order
        );
    }
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
    // Coefficients of the data predictions m0, m1, m2.
    let mut c = [a1 * phi1, 0.0, 0.0];
    match params.order.min(history.len()) {
        1 => {}
        2 => {
            let r = (lambda - history[1].1) / h;
            let k = a1 * if params.heun { phi2 } else { 0.5 * phi1 } / r;
            c[0] += k;
            c[1] -= k;
        }
        _ => {
            let (lambda1, lambda2) = (history[1].1, history[2].1);
            let (r0, r1) = ((lambda - lambda1) / h, (lambda1 - lambda2) / h);
            let d1_0 = [1.0 / r0, -1.0 / r0, 0.0];
            let d1_1 = [0.0, 1.0 / r1, -1.0 / r1];
            let phi3 = phi2 / big_h - 0.5;
            let c2 = if params.taylor_exact_d2 { 2.0 * phi3 } else { phi3 };
            for j in 0..3 {
                let diff = d1_0[j] - d1_1[j];
                let d1 = d1_0[j] + diff * r0 / (r0 + r1);
                let d2 = diff / (r0 + r1);
                c[j] += a1 * (phi2 * d1 - c2 * d2);
            }
        }
    }
    let mut terms = vec![(sg1 / sg * (-eta_h).exp(), x)];
    terms.extend(history.iter().zip(c).filter(|(_, cj)| *cj != 0.0).map(|((m, _), cj)| (cj, *m)));
    if let (Some(z), true) = (z, params.eta > 0.0) {
        terms.push((sg1 * (-(-2.0 * eta_h).exp_m1()).sqrt() * params.s_noise, z));
    }
    lincomb(&terms)
}

/// The weights `(w0, w_mid)` of the second stage of a singlestep DPM-Solver++(2) step from `s`
/// to `s_next` through the intermediate level `s_mid`: with `r = (lambda_mid - lambda) / h`,
/// `D = x0 + (x0_mid - x0) / (2 r)`.
pub fn dpmpp_2s_weights(s: f64, s_mid: f64, s_next: f64) -> (f64, f64) {
    let r = (s.ln() - s_mid.ln()) / (s.ln() - s_next.ln());
    let w = 1.0 / (2.0 * r);
    (1.0 - w, w)
}

/// The second stage of a singlestep DPM-Solver++(2) step (k-diffusion's `dpmpp_2s`: `s_mid`
/// the log-SNR midpoint; diffusers' singlestep scheduler: the schedule's own intermediate
/// entry): `x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) D`, `D` from [`dpmpp_2s_weights`].
pub fn dpmpp_2s_second_stage(
    family: Family,
    x: &Tensor,
    x0: &Tensor,
    x0_mid: &Tensor,
    s: f64,
    s_mid: f64,
    s_next: f64,
) -> Result<Tensor> {
    let (w0, w_mid) = dpmpp_2s_weights(s, s_mid, s_next);
    ancestral_step(family, x, &[(w0, x0), (w_mid, x0_mid)], s, (s_next, s_next), None)
}

/// The coordinates in which Euler and Heun integrate the probability-flow ODE: `y = x / c(s)`
/// against time `tau(s)`. VP and VE use k-diffusion's (`y = x / alpha`, `tau = s`, velocity
/// `eps`: EDM, diffusers' Euler/Heun schedulers); flow models their own (`y = x`, `tau = t`,
/// velocity `eps - x0`: diffusers' FlowMatch schedulers). Both give the same Euler step; Heun
/// differs.
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

    /// The velocity `dy/dtau = p x + q x0` at noise level `s`, as `(p, q)`:
    /// `eps = (x - alpha x0) / sigma` for VP/VE, `eps - x0 = (x - x0) / sigma` for flow.
    pub fn velocity(&self, s: f64) -> (f64, f64) {
        let (alpha, sigma) = self.family.alpha_sigma(s);
        match self.family {
            Family::Flow => (1.0 / sigma, -1.0 / sigma),
            Family::Vp | Family::Ve => (1.0 / sigma, -alpha / sigma),
        }
    }

    /// `(c'/c, c' (tau' - tau))`: moving `y` along velocity `v` gives `x' = a x + b v`.
    pub fn advance(&self, s: f64, s_next: f64) -> (f64, f64) {
        let (c, tau) = self.coords(s);
        let (c1, tau1) = self.coords(s_next);
        (c1 / c, c1 * (tau1 - tau))
    }

    /// The Euler predictor of a Heun step: `x_e = a x + b v(x, x0)`.
    pub fn euler(&self, x: &Tensor, x0: &Tensor, s: f64, s_next: f64) -> Result<Tensor> {
        let (a, b) = self.advance(s, s_next);
        let (p, q) = self.velocity(s);
        lincomb(&[(a + b * p, x), (b * q, x0)])
    }

    /// The Heun corrector (EDM's 2nd order): `x' = a x + b (v(x, x0) + v(x_e, x0_e)) / 2`, with
    /// the Euler predictor `x_e` expanded in `x` and `x0` so it need not stay alive.
    pub fn heun(&self, x: &Tensor, x0: &Tensor, x0_euler: &Tensor, s: f64, s_next: f64) -> Result<Tensor> {
        let (a, b) = self.advance(s, s_next);
        let (p0, q0) = self.velocity(s);
        let (p1, q1) = self.velocity(s_next);
        // x_e = (a + b p0) x + b q0 x0;  v1 = p1 x_e + q1 x0_e
        let (ex, e0) = (a + b * p0, b * q0);
        let half = 0.5 * b;
        lincomb(&[(a + half * (p0 + p1 * ex), x), (half * (q0 + p1 * e0), x0), (half * q1, x0_euler)])
    }
}
