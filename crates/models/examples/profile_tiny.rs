//! Profiles a tiny-shapes training step and the ops it is made of.
//! `cargo run --release -p stride-models --example profile_tiny -- [ops|step] [patch dim depth heads batch]`
//! `cargo run --release -p stride-models --example profile_tiny -- unet [patch level,level.. dim depth heads batch]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use stride_models::tiny_shapes::net::Arch;
use stride_models::tiny_shapes::train::{TrainConfig, Trainer};
use stride_models::tiny_shapes::Config;

fn time<T>(label: &str, reps: usize, mut f: impl FnMut() -> T) -> f64 {
    let _ = f();
    let start = Instant::now();
    for _ in 0..reps {
        let _ = f();
    }
    let s = start.elapsed().as_secs_f64() / reps as f64;
    println!("{label:<48} {:>9.2} ms", s * 1e3);
    s
}

fn fwd_bwd(label: &str, x: &Var, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) {
    time(&format!("{label} fwd"), 3, || f(x.as_tensor()).unwrap());
    time(&format!("{label} fwd+bwd"), 3, || {
        let y = f(x.as_tensor()).unwrap();
        y.sum_all().unwrap().backward().unwrap()
    });
}

fn ops(b: usize, n: usize, d: usize, h: usize) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, n, d), &dev)?)?;
    let w = Tensor::randn(0f32, 0.05, (4 * d, d), &dev)?;
    let s = Var::from_tensor(&Tensor::randn(0f32, 1., (b, h, n, n), &dev)?)?;
    let big = Var::from_tensor(&Tensor::randn(0f32, 1., (b, n, 4 * d), &dev)?)?;
    println!("--- ops at B={b} N={n} D={d} H={h}");
    fwd_bwd("linear d->4d", &x, |x| x.broadcast_matmul(&w.t()?));
    fwd_bwd("softmax composite [B,H,N,N]", &s, |s| candle_nn::ops::softmax(s, D::Minus1));
    fwd_bwd("softmax_last_dim (no bwd)", &s, |s| candle_nn::ops::softmax_last_dim(s).map(|y| y.detach()));
    fwd_bwd("layer_norm composite [B,N,D]", &x, |x| {
        let ln = candle_nn::LayerNorm::new_no_bias(Tensor::ones(d, DType::F32, &dev)?, 1e-5);
        candle_core::Module::forward(&ln, x)
    });
    fwd_bwd("gelu [B,N,4D]", &big, |x| x.gelu());
    fwd_bwd("gelu_erf [B,N,4D]", &big, |x| x.gelu_erf());
    fwd_bwd("broadcast_mul [B,N,D]x[B,1,D]", &x, |x| {
        x.broadcast_mul(&Tensor::ones((b, 1, d), DType::F32, &dev)?)
    });
    let hd = d / h;
    let q = Var::from_tensor(&Tensor::randn(0f32, 1., (b, h, n, hd), &dev)?)?;
    let kt = Tensor::randn(0f32, 1., (b, h, n, hd), &dev)?;
    fwd_bwd("q@k^T batched", &q, |q| q.matmul(&kt.t()?));
    fwd_bwd("split heads (transpose+contiguous)", &x, |x| {
        x.reshape((b, n, h, hd))?.transpose(1, 2)?.contiguous()
    });
    Ok(())
}

fn step(c: Config, batch: usize) -> candle_core::Result<()> {
    let config = TrainConfig {
        model: Config { vocab_size: stride_shapes::VOCABULARY.len() + 3, ..c },
        batch_size: batch,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config.clone(), &Device::Cpu).unwrap();
    println!(
        "--- step {:?} batch {batch}: {:.2}M params",
        config.model,
        trainer.parameter_count() as f64 / 1e6
    );
    time("train_step (Trainer)", 3, || trainer.train_step().unwrap());
    // Forward / backward split on a separate net.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = stride_models::tiny_shapes::Net::new(&config.model, vb)?;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (batch, 3, 32, 32), &dev)?;
    let t = Tensor::rand(0f32, 1., batch, &dev)?;
    let ids = Tensor::ones((batch, 12), DType::U32, &dev)?;
    let mask = Tensor::ones((batch, 12), DType::U8, &dev)?;
    let fwd = || -> candle_core::Result<Tensor> {
        let text = net.text.forward(&ids, &mask)?;
        net.forward(&x, &t, &text, &mask)?.sqr()?.mean_all()
    };
    time("forward", 3, || fwd().unwrap());
    time("forward+backward", 3, || fwd().unwrap().backward().unwrap());
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (patch, dim, depth, heads, batch) = (num(1, 4), num(2, 192), num(3, 6), num(4, 4), num(5, 64));
    let n = (32 / patch) * (32 / patch);
    match args.first().map(String::as_str) {
        Some("unet") => {
            let levels: Vec<usize> = args.get(2).map_or(vec![64], |l| {
                l.split(',').map(|c| c.parse().expect("levels: channels separated by commas")).collect()
            });
            let (patch, dim, depth, heads, batch) =
                (num(1, 2), num(3, 128), num(4, 4), num(5, 4), num(6, 64));
            step(Config { patch, levels, dim, depth, heads, ..Config::default() }, batch)
        }
        Some("conv") => conv_ops(num(1, 64), num(2, 32), num(3, 32)),
        Some("ops") => ops(batch, n, dim, heads),
        Some("mm") => matmuls(),
        _ => step(Config { patch, dim, depth, heads, arch: Arch::Dit, ..Config::default() }, batch),
    }
}

#[allow(dead_code)]
pub fn matmuls() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (m, k, n) in
        [(4096, 192, 768), (4096, 768, 192), (768, 4096, 192), (4096, 256, 1024), (16384, 160, 640)]
    {
        let a = Tensor::randn(0f32, 1., (m, k), &dev)?;
        let b = Tensor::randn(0f32, 1., (k, n), &dev)?;
        let gf = 2.0 * (m * k * n) as f64 / 1e9;
        let s = time(&format!("matmul {m}x{k}x{n}"), 5, || a.matmul(&b).unwrap());
        println!("   {:.1} GFLOP/s", gf / s);
        let at = Tensor::randn(0f32, 1., (k, m), &dev)?;
        let s = time(&format!("matmul (a^T) {m}x{k}x{n}"), 5, || at.t().unwrap().matmul(&b).unwrap());
        println!("   {:.1} GFLOP/s", gf / s);
        let bt = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let s = time(&format!("matmul (b^T) {m}x{k}x{n}"), 5, || a.matmul(&bt.t().unwrap()).unwrap());
        println!("   {:.1} GFLOP/s", gf / s);
    }
    let x = Tensor::randn(0f32, 1., (4096, 768), &dev)?;
    let bias = Tensor::randn(0f32, 1., 768, &dev)?;
    time("broadcast_add bias [4096,768]", 5, || x.broadcast_add(&bias).unwrap());
    time("sum over rows [4096,768] -> [768]", 5, || x.sum(0).unwrap());
    time("sum_keepdim(0) [4096,768]", 5, || x.sum_keepdim(0).unwrap());
    time("add [4096,768]", 5, || (&x + &x).unwrap());
    time("copy [4096,768]", 5, || x.copy().unwrap());
    Ok(())
}

/// The pieces of a U-Net residual block at batch `b`, side `side`, `c` channels.
fn conv_ops(b: usize, side: usize, c: usize) -> candle_core::Result<()> {
    use stride_models::tiny_shapes::net::ops;
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, side, side, c), &dev)?)?;
    let w = Tensor::randn(0f32, 0.05, (c, 9 * c), &dev)?;
    let cols = Var::from_tensor(&Tensor::randn(0f32, 1., (b * side * side, 9 * c), &dev)?)?;
    println!("--- conv ops at B={b} side={side} C={c}");
    fwd_bwd("im2col3x3", &x, ops::im2col3x3);
    fwd_bwd("matmul cols x W^T", &cols, |x| x.matmul(&w.t()?));
    let g = Tensor::randn(0f32, 1., (b * side * side, c), &dev)?;
    let wt = w.t()?.contiguous()?;
    let gt = g.t()?.contiguous()?;
    let cols_t = cols.as_tensor().clone();
    time("mm fwd cols [M,9C] x W^T(strided)", 3, || cols_t.matmul(&w.t().unwrap()).unwrap());
    time("mm fwd cols [M,9C] x W^T(contig)", 3, || cols_t.matmul(&wt).unwrap());
    time("mm dcols g [M,C] x W [C,9C]", 3, || g.matmul(&w).unwrap());
    time("mm dW g^T(strided) x cols", 3, || g.t().unwrap().matmul(&cols_t).unwrap());
    time("mm dW g^T(contig) x cols", 3, || gt.matmul(&cols_t).unwrap());
    time("mm dW^T cols^T(strided) x g", 3, || cols_t.t().unwrap().matmul(&g).unwrap());
    fwd_bwd("silu", &x, |x| x.silu());
    fwd_bwd("layer_norm", &x, |x| ops::layer_norm(&x.reshape((b, side * side, c))?));
    let bias = Var::from_tensor(&Tensor::zeros(c, DType::F32, &dev)?)?;
    fwd_bwd("conv3x3 (im2col + matmul + bias, composed)", &x, |x| {
        let cols = ops::im2col3x3(x)?.reshape((b * side * side, 9 * c))?;
        ops::add_bias(&cols.matmul(&w.t()?)?, bias.as_tensor())
    });
    fwd_bwd("conv3x3 (ops::conv3x3, one graph node)", &x, |x| ops::conv3x3(x, &w, bias.as_tensor()));
    let wc = Tensor::randn(0f32, 0.05, (c, c, 3, 3), &dev)?;
    let xc = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c, side, side), &dev)?)?;
    fwd_bwd("candle conv2d", &xc, |x| x.conv2d(&wc, 1, 1, 1, 1));
    Ok(())
}
