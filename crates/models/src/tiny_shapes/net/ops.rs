//! Fused CPU kernels, with backward, for the ops candle composes from many single-threaded
//! passes: layer norm (plain and with the adaLN shift/scale), softmax over the last dimension,
//! the tanh GELU and SiLU, and the 3x3 neighbourhood gather of a convolution. A training step spent most of its time in the backward passes of their
//! composed forms. On other devices, or for other dtypes, the composed forms run instead.
//!
//! Every kernel works row by row in a fixed order, so results do not depend on the thread
//! count.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

const LN_EPS: f32 = 1e-6;
/// sqrt(2 / pi), for the tanh GELU.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `(x - mean) / sqrt(var + eps)` over the last dimension.
pub fn layer_norm(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(LayerNorm);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + f64::from(LN_EPS))?.sqrt()?)
}

/// `layer_norm(x) * (1 + scale) + shift` for `x` `[B, N, D]` and `shift`, `scale` `[B, D]`.
pub fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op3(&shift.contiguous()?, &scale.contiguous()?, LnModulate);
    }
    layer_norm(x)?.broadcast_mul(&(scale + 1.0)?.unsqueeze(1)?)?.broadcast_add(&shift.unsqueeze(1)?)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(Softmax);
    }
    candle_nn::ops::softmax(x, D::Minus1)
}

/// The tanh approximation of GELU, `x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(Activation::Gelu);
    }
    x.gelu()
}

/// SiLU, `x * sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(Activation::Silu);
    }
    x.silu()
}

/// `x + bias` for `x` `[.., C]` and `bias` `[C]` (the bias gradient is a column sum).
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op2(bias, AddBias);
    }
    x.broadcast_add(bias)
}

/// `x + y * gate` for `x`, `y` `[B, N, D]` and `gate` `[B, D]` (adaLN-Zero's gated residual).
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op3(&y.contiguous()?, &gate.contiguous()?, GatedResidual);
    }
    x + y.broadcast_mul(&gate.unsqueeze(1)?)?
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op: input is not contiguous"),
    }
}

fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

/// Calls `f(first_item, items)` on `out` split into runs of whole items of `width` values,
/// one run per thread (one thread for small jobs).
fn par_items(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let items = out.len() / width.max(1);
    let threads = if out.len() < 1 << 15 { 1 } else { threads().min(items.max(1)) };
    if threads <= 1 {
        f(0, out);
        return;
    }
    let per = items.div_ceil(threads);
    std::thread::scope(|s| {
        let mut chunks = out.chunks_mut(per * width).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            let f = &f;
            s.spawn(move || f(i * per, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
}

/// Sum with eight accumulators (vectorises; a fixed order, so deterministic).
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let rest: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Mean and reciprocal standard deviation of a row.
fn moments(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + rest) / n;
    (mean, 1.0 / (var + LN_EPS).sqrt())
}

/// Layer-norm backward for one row: `dx = rstd (g - mean(g) - xhat mean(g xhat))`, with
/// `xhat` written into `dx` first.
fn ln_row_bwd(x: &[f32], g: &[f32], dx: &mut [f32]) {
    let (mean, rstd) = moments(x);
    for (d, v) in dx.iter_mut().zip(x) {
        *d = (v - mean) * rstd;
    }
    let n = x.len() as f32;
    let (mg, mgx) = (sum(g) / n, dot(g, dx) / n);
    for (d, gv) in dx.iter_mut().zip(g) {
        *d = rstd * (gv - mg - *d * mgx);
    }
}

struct LayerNorm;

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "tiny-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let d = l.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        par_items(&mut out, d, |first, out| {
            for (r, o) in out.chunks_mut(d).enumerate() {
                let row = &x[(first + r) * d..(first + r + 1) * d];
                let (mean, rstd) = moments(row);
                for (o, v) in o.iter_mut().zip(row) {
                    *o = (v - mean) * rstd;
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.detach().apply_op2_no_bwd(&grad.contiguous()?, &LayerNormBwd)?))
    }
}

struct LayerNormBwd;

impl CustomOp2 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "tiny-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let d = l1.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        par_items(&mut out, d, |first, out| {
            for (r, o) in out.chunks_mut(d).enumerate() {
                let span = (first + r) * d..(first + r + 1) * d;
                ln_row_bwd(&x[span.clone()], &g[span], o);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// One sample's index and its three output slices.
type SampleJob3<'a> = (usize, &'a mut [f32], &'a mut [f32], &'a mut [f32]);

struct LnModulate;

impl CustomOp3 for LnModulate {
    fn name(&self) -> &'static str {
        "tiny-ln-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, shift, scale) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        let (b, n, d) = l1.shape().dims3()?;
        if l2.dims() != [b, d] || l3.dims() != [b, d] {
            candle_core::bail!("ln_modulate: shift and scale must be [{b}, {d}]");
        }
        let mut out = vec![0f32; x.len()];
        par_items(&mut out, d, |first, out| {
            for (r, o) in out.chunks_mut(d).enumerate() {
                let row = first + r;
                let xs = &x[row * d..(row + 1) * d];
                let s = row / n;
                let (sh, sc) = (&shift[s * d..(s + 1) * d], &scale[s * d..(s + 1) * d]);
                let (mean, rstd) = moments(xs);
                for i in 0..d {
                    o[i] = (xs[i] - mean) * rstd * (1.0 + sc[i]) + sh[i];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, n, d) = x.dims3()?;
        let packed = x.detach().apply_op3_no_bwd(&scale.detach(), &grad.contiguous()?, &LnModulateBwd)?;
        let dx = packed.narrow(0, 0, b * n * d)?.reshape((b, n, d))?;
        let dshift = packed.narrow(0, b * n * d, b * d)?.reshape((b, d))?;
        let dscale = packed.narrow(0, b * n * d + b * d, b * d)?.reshape((b, d))?;
        Ok((Some(dx), Some(dshift), Some(dscale)))
    }
}

/// Backward of [`LnModulate`]: one flat output holding dx `[B, N, D]`, dshift `[B, D]` and
/// dscale `[B, D]`, in that order.
struct LnModulateBwd;

impl CustomOp3 for LnModulateBwd {
    fn name(&self) -> &'static str {
        "tiny-ln-modulate-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, scale, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        let (b, n, d) = l1.shape().dims3()?;
        let mut out = vec![0f32; b * n * d + 2 * b * d];
        let (dx, rest) = out.split_at_mut(b * n * d);
        let (dshift, dscale) = rest.split_at_mut(b * d);
        let mut jobs: Vec<SampleJob3> = dx
            .chunks_mut(n * d)
            .zip(dshift.chunks_mut(d))
            .zip(dscale.chunks_mut(d))
            .enumerate()
            .map(|(s, ((a, b), c))| (s, a, b, c))
            .collect();
        let run = |jobs: &mut [SampleJob3]| {
            let mut gs = vec![0f32; d];
            for (s, dx, dshift, dscale) in jobs.iter_mut() {
                let sc = &scale[*s * d..(*s + 1) * d];
                for r in 0..n {
                    let span = (*s * n + r) * d..(*s * n + r + 1) * d;
                    let (xs, gr) = (&x[span.clone()], &g[span]);
                    let o = &mut dx[r * d..(r + 1) * d];
                    let (mean, rstd) = moments(xs);
                    for i in 0..d {
                        let xhat = (xs[i] - mean) * rstd;
                        dshift[i] += gr[i];
                        dscale[i] += gr[i] * xhat;
                        gs[i] = gr[i] * (1.0 + sc[i]);
                    }
                    ln_row_bwd(xs, &gs, o);
                }
            }
        };
        par_jobs(&mut jobs, x.len(), run);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "tiny-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let d = l.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        par_items(&mut out, d, |first, out| {
            for (r, o) in out.chunks_mut(d).enumerate() {
                let row = &x[(first + r) * d..(first + r + 1) * d];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (o, v) in o.iter_mut().zip(row) {
                    *o = (v - max).exp();
                }
                let inv = 1.0 / sum(o);
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.detach().apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?))
    }
}

/// `dx = y (g - sum(g y))` per row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "tiny-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let d = l1.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; y.len()];
        par_items(&mut out, d, |first, out| {
            for (r, o) in out.chunks_mut(d).enumerate() {
                let span = (first + r) * d..(first + r + 1) * d;
                let (ys, gs) = (&y[span.clone()], &g[span]);
                let dg = dot(ys, gs);
                for i in 0..d {
                    o[i] = ys[i] * (gs[i] - dg);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// An elementwise activation with a fused backward.
#[derive(Clone, Copy)]
enum Activation {
    /// The tanh GELU, `x * sigmoid(2 u)`, `u = sqrt(2/pi) (x + 0.044715 x^3)`.
    Gelu,
    /// `x * sigmoid(x)`.
    Silu,
}

impl Activation {
    /// `f(x)` and `f'(x)`.
    #[inline]
    fn value_and_slope(self, x: f32) -> (f32, f32) {
        match self {
            Activation::Gelu => {
                let u = GELU_C * (x + GELU_A * x * x * x);
                let du = GELU_C * (1.0 + 3.0 * GELU_A * x * x);
                let s = 1.0 / (1.0 + (-2.0 * u).exp());
                (x * s, s + 2.0 * x * s * (1.0 - s) * du)
            }
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                (x * s, s * (1.0 + x * (1.0 - s)))
            }
        }
    }
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        match self {
            Activation::Gelu => "tiny-gelu",
            Activation::Silu => "tiny-silu",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let mut out = vec![0f32; x.len()];
        par_items(&mut out, 1, |first, out| {
            for (o, v) in out.iter_mut().zip(&x[first..]) {
                *o = self.value_and_slope(*v).0;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.detach().apply_op2_no_bwd(&grad.contiguous()?, &ActivationBwd(*self))?))
    }
}

struct ActivationBwd(Activation);

impl CustomOp2 for ActivationBwd {
    fn name(&self) -> &'static str {
        "tiny-activation-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let mut out = vec![0f32; x.len()];
        par_items(&mut out, 1, |first, out| {
            for ((o, v), gv) in out.iter_mut().zip(&x[first..]).zip(&g[first..]) {
                *o = gv * self.0.value_and_slope(*v).1;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "tiny-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let c = b.len();
        if l1.dims().last() != Some(&c) {
            candle_core::bail!("add_bias: bias of {c} values for rows of {:?}", l1.dims());
        }
        let mut out = x.to_vec();
        add_to_rows(&mut out, b);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = bias.elem_count();
        let db = grad.contiguous()?.apply_op1_no_bwd(&ColumnSum(c))?;
        Ok((Some(grad.clone()), Some(db.reshape(bias.shape())?)))
    }
}

/// Adds `bias` to every row of `out` (rows of `bias.len()` values).
fn add_to_rows(out: &mut [f32], bias: &[f32]) {
    let c = bias.len();
    par_items(out, c, |_, out| {
        for row in out.chunks_mut(c) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    });
}

/// Sums the rows of a `[R, C]` matrix: partial sums over fixed blocks of rows (in parallel),
/// then the blocks in order, so the result does not depend on the thread count.
struct ColumnSum(usize);

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "tiny-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const BLOCK: usize = 64;
        let (g, c) = (contiguous(s, l)?, self.0);
        let rows = g.len() / c.max(1);
        let blocks = rows.div_ceil(BLOCK).max(1);
        let mut partial = vec![0f32; blocks * c];
        par_items(&mut partial, c, |first, out| {
            for (i, acc) in out.chunks_mut(c).enumerate() {
                let start = (first + i) * BLOCK;
                for r in start..(start + BLOCK).min(rows) {
                    acc.iter_mut().zip(&g[r * c..(r + 1) * c]).for_each(|(a, v)| *a += v);
                }
            }
        });
        let mut out = vec![0f32; c];
        for block in partial.chunks(c) {
            out.iter_mut().zip(block).for_each(|(o, v)| *o += v);
        }
        Ok((CpuStorage::F32(out), Shape::from(c)))
    }
}

struct GatedResidual;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "tiny-gated-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, gate) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        let (b, n, d) = l1.shape().dims3()?;
        if l2.dims() != l1.dims() || l3.dims() != [b, d] {
            candle_core::bail!("gated_residual: shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let mut out = x.to_vec();
        par_items(&mut out, d, |first, out| {
            for (r, o) in out.chunks_mut(d).enumerate() {
                let row = first + r;
                let (ys, gs) = (&y[row * d..(row + 1) * d], &gate[(row / n) * d..(row / n + 1) * d]);
                for i in 0..d {
                    o[i] += ys[i] * gs[i];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        y: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, n, d) = y.dims3()?;
        let packed = y.detach().apply_op3_no_bwd(&gate.detach(), &grad.contiguous()?, &GatedResidualBwd)?;
        let dy = packed.narrow(0, 0, b * n * d)?.reshape((b, n, d))?;
        let dgate = packed.narrow(0, b * n * d, b * d)?.reshape((b, d))?;
        Ok((Some(grad.clone()), Some(dy), Some(dgate)))
    }
}

/// Backward of [`GatedResidual`]: one flat output holding dy `[B, N, D]` then dgate `[B, D]`.
struct GatedResidualBwd;

impl CustomOp3 for GatedResidualBwd {
    fn name(&self) -> &'static str {
        "tiny-gated-residual-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, gate, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        let (b, n, d) = l1.shape().dims3()?;
        let mut out = vec![0f32; b * n * d + b * d];
        let (dy, dgate) = out.split_at_mut(b * n * d);
        let mut jobs: Vec<(usize, &mut [f32], &mut [f32])> =
            dy.chunks_mut(n * d).zip(dgate.chunks_mut(d)).enumerate().map(|(s, (a, b))| (s, a, b)).collect();
        let run = |jobs: &mut [(usize, &mut [f32], &mut [f32])]| {
            for (s, dy, dgate) in jobs.iter_mut() {
                let gs = &gate[*s * d..(*s + 1) * d];
                for r in 0..n {
                    let off = (*s * n + r) * d;
                    let (ys, gr) = (&y[off..off + d], &g[off..off + d]);
                    let o = &mut dy[r * d..(r + 1) * d];
                    for i in 0..d {
                        o[i] = gr[i] * gs[i];
                        dgate[i] += gr[i] * ys[i];
                    }
                }
            }
        };
        par_jobs(&mut jobs, y.len(), run);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// Runs `run` over `jobs` split into one run of consecutive jobs per thread.
fn par_jobs<T: Send>(jobs: &mut [T], work: usize, run: impl Fn(&mut [T]) + Sync) {
    let threads = if work < 1 << 15 { 1 } else { threads().min(jobs.len().max(1)) };
    let per = jobs.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|sc| {
        let mut groups = jobs.chunks_mut(per);
        let first = groups.next();
        for group in groups {
            let run = &run;
            sc.spawn(move || run(group));
        }
        if let Some(group) = first {
            run(group);
        }
    });
}

/// The 3x3 neighbourhoods (zero padded) of an NHWC image `[B, H, W, C]` as `[B, H, W, 9 C]`,
/// offset-major (`(dy, dx)` row by row, then channel): a 3x3 convolution is then one matmul,
/// forward and backward (candle's CPU conv2d backward is several times slower than a matmul).
pub fn im2col3x3(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(Im2col);
    }
    let (_, h, w, _) = x.dims4()?;
    let padded = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut taps = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            taps.push(padded.narrow(1, dy, h)?.narrow(2, dx, w)?);
        }
    }
    Tensor::cat(&taps, 3)
}

/// Visits every (output row, tap, source row) of a 3x3 NHWC neighbourhood gather:
/// `f(out_offset, in_offset)` for each in-bounds pair of C-wide slices, one sample at a time.
fn for_taps(h: usize, w: usize, c: usize, mut f: impl FnMut(usize, usize)) {
    for y in 0..h {
        for x in 0..w {
            for k in 0..9 {
                let (sy, sx) = (y as isize + k as isize / 3 - 1, x as isize + k as isize % 3 - 1);
                if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                    f(((y * w + x) * 9 + k) * c, (sy as usize * w + sx as usize) * c);
                }
            }
        }
    }
}

/// The forward of [`Im2col`] on a contiguous `[B, H, W, C]` slice.
fn gather_taps(x: &[f32], (b, h, w, c): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0f32; b * h * w * 9 * c];
    par_items(&mut out, h * w * 9 * c, |first, out| {
        for (i, o) in out.chunks_mut(h * w * 9 * c).enumerate() {
            let xs = &x[(first + i) * h * w * c..(first + i + 1) * h * w * c];
            for_taps(h, w, c, |oo, io| o[oo..oo + c].copy_from_slice(&xs[io..io + c]));
        }
    });
    out
}

struct Im2col;

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "tiny-im2col3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = l.shape().dims4()?;
        Ok((CpuStorage::F32(gather_taps(contiguous(s, l)?, (b, h, w, c))), Shape::from((b, h, w, 9 * c))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2im)?))
    }
}

/// Backward of [`Im2col`]: each input pixel gathers the gradients of the taps that read it.
struct Col2im;

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "tiny-col2im3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous(s, l)?;
        let (b, h, w, c9) = l.shape().dims4()?;
        let c = c9 / 9;
        let mut out = vec![0f32; b * h * w * c];
        par_items(&mut out, h * w * c, |first, out| {
            for (i, o) in out.chunks_mut(h * w * c).enumerate() {
                let gs = &g[(first + i) * h * w * c9..(first + i + 1) * h * w * c9];
                for_taps(h, w, c, |go, io| {
                    for (d, v) in o[io..io + c].iter_mut().zip(&gs[go..go + c]) {
                        *d += v;
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
}

/// A 3x3 convolution (zero padded, stride 1) of an NHWC image `[B, H, W, Cin]`: `weight`
/// `[Cout, 9 Cin]` over the taps in [`im2col3x3`]'s order, plus `bias` `[Cout]`; `[B, H, W, Cout]`.
///
/// In training on the CPU it is one node of the autograd graph, with the same arithmetic as the
/// composed `im2col3x3(x) W^T + b` (so results are bit for bit the same). candle's backward
/// gives each node's input a zero-filled gradient and adds into it; composed, that was two
/// extra passes over the taps' gradient, `[B, H, W, 9 Cin]`, the largest tensors of a step:
/// a training step is about 13% faster. Without gradients the composed form is as fast.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let training = x.track_op() || weight.track_op() || bias.track_op();
    if training && fused(x) && weight.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            Conv3x3 { taps: std::sync::Mutex::new(None) },
        );
    }
    conv3x3_composed(x, weight, bias)
}

/// [`conv3x3`] as a chain of graph nodes: the gather, a matmul and the bias add.
fn conv3x3_composed(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, h, w, cin) = x.dims4()?;
    let cols = im2col3x3(x)?.reshape((b * h * w, 9 * cin))?;
    add_bias(&cols.matmul(&weight.t()?)?, bias)?.reshape((b, h, w, weight.dim(0)?))
}

/// [`conv3x3`] on the CPU. The forward keeps the taps `[B H W, 9 Cin]` for the weight gradient.
struct Conv3x3 {
    taps: std::sync::Mutex<Option<Tensor>>,
}

impl CustomOp3 for Conv3x3 {
    fn name(&self) -> &'static str {
        "tiny-conv3x3"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, cin) = l1.shape().dims4()?;
        let (cout, k) = l2.shape().dims2()?;
        if k != 9 * cin || l3.shape().elem_count() != cout {
            candle_core::bail!(
                "conv3x3: weight {:?} and bias {:?} for {cin} input channels",
                l2.dims(),
                l3.dims()
            );
        }
        let cpu = candle_core::Device::Cpu;
        let taps = Tensor::from_vec(gather_taps(contiguous(s1, l1)?, (b, h, w, cin)), (b * h * w, k), &cpu)?;
        let weight = Tensor::from_slice(contiguous(s2, l2)?, (cout, k), &cpu)?;
        let mut y = taps.matmul(&weight.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        add_to_rows(&mut y, contiguous(s3, l3)?);
        *self.taps.lock().map_err(|_| candle_core::Error::Msg("conv3x3: poisoned lock".into()))? = Some(taps);
        Ok((CpuStorage::F32(y), Shape::from((b, h, w, cout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, w, cin) = x.dims4()?;
        let cout = weight.dim(0)?;
        let taps = self.taps.lock().ok().and_then(|mut t| t.take());
        let taps = match taps {
            Some(taps) => taps,
            // A second backward through the same graph: gather again.
            None => im2col3x3(&x.detach())?.reshape((b * h * w, 9 * cin))?,
        };
        let grad = grad.reshape((b * h * w, cout))?.contiguous()?;
        let d_bias = grad.apply_op1_no_bwd(&ColumnSum(cout))?.reshape(bias.shape())?;
        let d_weight = taps.t()?.matmul(&grad)?.t()?;
        let d_taps = grad.matmul(&weight.detach())?.reshape((b, h, w, 9 * cin))?;
        Ok((Some(d_taps.apply_op1_no_bwd(&Col2im)?), Some(d_weight), Some(d_bias)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    type Op<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
    type Case<'a> = (&'static str, Op<'a>, Op<'a>);

    /// The fused convolution is the composed one (the CPU's fused gather, matmul and bias add)
    /// bit for bit, forward and backward, so training runs reproduce across the change.
    #[test]
    fn conv3x3_is_the_composed_convolution_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, w, cin, cout) = (4, 16, 12, 8, 16);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, h, w, cin), &dev)?)?;
        let weight = Var::from_tensor(&Tensor::randn(0f32, 0.2, (cout, 9 * cin), &dev)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 1., cout, &dev)?)?;
        let fused = conv3x3(x.as_tensor(), weight.as_tensor(), bias.as_tensor())?;
        let reference = conv3x3_composed(x.as_tensor(), weight.as_tensor(), bias.as_tensor())?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect())
        };
        assert_eq!(bits(&fused)?, bits(&reference)?, "forward");
        let g = Tensor::randn(0f32, 1., (b, h, w, cout), &dev)?;
        let (gf, gc) = ((fused * &g)?.sum_all()?.backward()?, (reference * &g)?.sum_all()?.backward()?);
        for (name, v) in [("x", &x), ("weight", &weight), ("bias", &bias)] {
            let (a, c) =
                (gf.get(v.as_tensor()).expect("fused gradient"), gc.get(v.as_tensor()).expect("gradient"));
            assert_eq!(bits(a)?, bits(c)?, "gradient of {name}");
        }
        Ok(())
    }

    /// The fused ops and their gradients match the composed candle forms.
    #[test]
    fn fused_ops_match_composed_forms() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 700, 40), &dev)?)?;
        let shift = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 40), &dev)?)?;
        let scale = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 40), &dev)?)?;
        let composed = |x: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Tensor> { f(x) };
        let cases: Vec<Case<'_>> = vec![
            (
                "layer_norm",
                Box::new(layer_norm),
                Box::new(|x: &Tensor| {
                    let mean = x.mean_keepdim(D::Minus1)?;
                    let c = x.broadcast_sub(&mean)?;
                    c.broadcast_div(&(c.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?)
                }),
            ),
            ("softmax", Box::new(softmax), Box::new(|x: &Tensor| candle_nn::ops::softmax(x, D::Minus1))),
            ("gelu", Box::new(gelu), Box::new(|x: &Tensor| x.gelu())),
            ("silu", Box::new(silu), Box::new(|x: &Tensor| x.silu())),
            (
                "ln_modulate",
                Box::new(|x: &Tensor| ln_modulate(x, shift.as_tensor(), scale.as_tensor())),
                Box::new(|x: &Tensor| {
                    let mean = x.mean_keepdim(D::Minus1)?;
                    let c = x.broadcast_sub(&mean)?;
                    let n = c.broadcast_div(&(c.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?)?;
                    n.broadcast_mul(&(scale.as_tensor() + 1.0)?.unsqueeze(1)?)?
                        .broadcast_add(&shift.as_tensor().unsqueeze(1)?)
                }),
            ),
            (
                "add_bias",
                Box::new(|x: &Tensor| add_bias(x, &shift.as_tensor().get(0)?)),
                Box::new(|x: &Tensor| x.broadcast_add(&shift.as_tensor().get(0)?)),
            ),
            (
                "im2col3x3",
                Box::new(|x: &Tensor| im2col3x3(&x.reshape((3, 70, 10, 40))?)),
                Box::new(|x: &Tensor| {
                    let x = x.reshape((3, 70, 10, 40))?;
                    let padded = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
                    let taps = (0..9)
                        .map(|k| padded.narrow(1, k / 3, 70)?.narrow(2, k % 3, 10))
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&taps, 3)
                }),
            ),
            (
                "gated_residual",
                Box::new(|x: &Tensor| gated_residual(&x.sqr()?, x, scale.as_tensor())),
                Box::new(|x: &Tensor| x.sqr()? + x.broadcast_mul(&scale.as_tensor().unsqueeze(1)?)?),
            ),
        ];
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        // f32 tolerances: the fused kernels sum in another order than candle's composed ops
        // (the bias gradients sum 2100 rows), which moves results by ulps of the values summed,
        // far less than a wrong term or a missing factor would. (The whole network's gradients
        // are checked against the composed ops in f64 in tests/tiny_shapes.rs.)
        for (name, fast, slow) in &cases {
            let (yf, ys) = (fast(x.as_tensor())?, composed(x.as_tensor(), slow.as_ref())?);
            assert!(max_diff(&yf, &ys)? < 1e-4, "{name} forward");
            let w = Tensor::randn(0f32, 1., yf.shape(), &dev)?;
            let gf = (yf * &w)?.sum_all()?.backward()?;
            let gs = (ys * &w)?.sum_all()?.backward()?;
            for v in [&x, &shift, &scale] {
                match (gf.get(v.as_tensor()), gs.get(v.as_tensor())) {
                    (Some(a), Some(b)) => {
                        let tol = 1e-3 * (1.0 + b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?);
                        assert!(max_diff(a, b)? < tol, "{name} backward");
                    }
                    (None, None) => {}
                    (a, b) => panic!("{name}: fused gradient {:?}, composed {:?}", a.is_some(), b.is_some()),
                }
            }
        }
        Ok(())
    }
}
