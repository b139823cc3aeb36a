//! What a model folder recovers of a scene from flow time t: training-world scenes with their
//! full prompts ("a large red circle in the top left, ..., on a white background") are noised
//! to t and sampled back to 0 (20 Euler steps, guidance 3, as SDEdit does), and ShapesEval
//! reads the result against the full prompt. From low t the image still shows the scene, so
//! this measures the image pathway (does a 5-pixel triangle stay a triangle); from t = 1 only
//! the prompt says what goes where, so it measures the conditioning.
//!
//! `cargo run --release -p stride-models --example probe_denoise -- [MODEL_DIR]`

use candle_core::{Device, Tensor};
use stride_models::TinyShapes;
use stride_shapes::{check, Attribute, Image32, Prompt, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(TinyShapes::default_dir);
    let model = TinyShapes::load(&dir, &Device::Cpu)?;
    let world = stride_shapes::World::new(0);
    let n = 64;
    let scenes: Vec<_> = (0..n).map(|i| world.sample(20_000_000 + i as u64).scene).collect();
    let requests: Vec<Request> = scenes.iter().map(Request::full).collect();
    let prompts: Vec<String> = requests.iter().map(|r| Prompt::from(r.clone()).text).collect();
    let pixels: Vec<f32> = scenes.iter().flat_map(|s| stride_shapes::render(s).into_chw()).collect();
    let x0 = Tensor::from_vec(pixels, (n, 3, 32, 32), &Device::Cpu)?;
    let eps = stride_solvers::TorchGenerator::new(0).randn(n * 3 * 32 * 32);
    let eps = Tensor::from_vec(eps, (n, 3, 32, 32), &Device::Cpu)?;
    let own: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let tokens = model.tokenize(&own)?;
    let text = model.net.text.forward(&tokens.ids, &tokens.mask)?;
    let empty = model.tokenize(&vec![""; n])?;
    let empty_text = model.net.text.forward(&empty.ids, &empty.mask)?;
    let velocity = |x: &Tensor, t: f32| -> candle_core::Result<Tensor> {
        let tt = Tensor::full(t, n, &Device::Cpu)?;
        let cond = model.net.forward(x, &tt, &text, &tokens.mask)?;
        let uncond = model.net.forward(x, &tt, &empty_text, &empty.mask)?;
        &uncond + ((cond - &uncond)? * 3.0)?
    };
    println!("{n} scenes, full prompts, sampled from t; share of requested attributes recovered");
    println!("   t  whole  present  shape  colour  size  position  background");
    for t in [0.2f32, 0.4, 0.6, 0.8, 0.9, 1.0] {
        let mut x = ((&x0 * (1.0 - t) as f64)? + (&eps * t as f64)?)?;
        const STEPS: usize = 20;
        for k in 0..STEPS {
            let (from, to) =
                (t * (STEPS - k) as f32 / STEPS as f32, t * (STEPS - k - 1) as f32 / STEPS as f32);
            x = (&x + (velocity(&x, from)? * (to - from) as f64)?)?;
        }
        let pred = x.clamp(-1f32, 1f32)?;
        let images = pred.flatten_from(1)?.to_vec2::<f32>()?;
        let mut whole = 0;
        let mut tally = [(0usize, 0usize); 7];
        for (image, request) in images.into_iter().zip(&requests) {
            let report = check(request, &Image32::from_chw(image)?);
            whole += report.passed() as usize;
            for (a, ok) in report.attributes() {
                let k = Attribute::ALL.iter().position(|&b| b == a).unwrap_or(0);
                tally[k].0 += ok as usize;
                tally[k].1 += 1;
            }
        }
        let rate = |a: Attribute| {
            let (ok, all) = tally[Attribute::ALL.iter().position(|&b| b == a).unwrap_or(0)];
            ok as f64 / all.max(1) as f64
        };
        println!(
            "{t:>4}  {:>5.2}  {:>7.2}  {:>5.2}  {:>6.2}  {:>4.2}  {:>8.2}  {:>10.2}",
            whole as f64 / n as f64,
            rate(Attribute::Present),
            rate(Attribute::Shape),
            rate(Attribute::Color),
            rate(Attribute::Size),
            rate(Attribute::Position),
            rate(Attribute::Background)
        );
    }
    Ok(())
}
