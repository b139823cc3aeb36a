//! How much tiny-shapes' prediction depends on its input and on its prompt: the mean change of
//! the output inside and outside a perturbed 4x4 patch, and when the prompt changes to one with
//! another object, colour and background, at several noise levels.
//!
//! `cargo run --release -p stride-models --example probe_conditioning`

use candle_core::{Device, Tensor};
use stride_models::TinyShapes;
use stride_solvers::Denoiser;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = TinyShapes::load(&TinyShapes::default_dir(), &Device::Cpu)?;
    let d = model.denoiser(&["a large red circle in the middle on a white background"], 1.0)?;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu)?;
    for sigma in [20.0, 3.0, 1.0, 0.3] {
        let x = (&x * (sigma / (1.0 + sigma)))?; // the noise part of a flow state at this sigma
        let base = d.predict(&x, &[sigma])?;
        // perturb the top-left 4x4 patch only
        let mut v = x.flatten_all()?.to_vec1::<f32>()?;
        for c in 0..3 {
            for yy in 0..4 {
                for xx in 0..4 {
                    v[c * 1024 + yy * 32 + xx] += 2.0;
                }
            }
        }
        let x2 = Tensor::from_vec(v, (1, 3, 32, 32), &Device::Cpu)?;
        let out = d.predict(&x2, &[sigma])?;
        let diff = (out - &base)?.abs()?.squeeze(0)?.sum(0)?; // [32,32]
        let g = diff.to_vec2::<f32>()?;
        let inside: f32 =
            (0..4).flat_map(|y| (0..4).map(move |x| (y, x))).map(|(y, x)| g[y][x]).sum::<f32>() / 16.0;
        let outside: f32 = g.iter().flatten().sum::<f32>() - inside * 16.0;
        println!(
            "sigma {sigma}: mean |d out| inside the patch {inside:.4}, elsewhere {:.5}",
            outside / (1024.0 - 16.0)
        );
        // text sensitivity
        let d2 = model.denoiser(&["a small blue square in the top left on a black background"], 1.0)?;
        let t = (d2.predict(&x, &[sigma])? - &base)?.abs()?.mean_all()?.to_scalar::<f32>()?;
        println!("   mean |d out| when the prompt changes: {t:.4}");
    }
    Ok(())
}
