//! Flow-matching loss of a model folder on training samples with their own prompts, with
//! the prompts of other samples, and with the empty prompt: how much the model uses the text.
//! `cargo run --release -p stride-models --example probe_loss -- MODEL_DIR`
use candle_core::{Device, Tensor};
use stride_models::TinyShapes;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(TinyShapes::default_dir);
    let model = TinyShapes::load(&dir, &Device::Cpu)?;
    let world = stride_shapes::World::new(0);
    let n = 64;
    let samples: Vec<_> = (0..n).map(|i| world.sample(10_000_000 + i as u64)).collect();
    let pixels: Vec<f32> = samples.iter().flat_map(|s| stride_shapes::render(&s.scene).into_chw()).collect();
    let x0 = Tensor::from_vec(pixels, (n, 3, 32, 32), &Device::Cpu)?;
    let eps = Tensor::randn(0f32, 1.0, (n, 3, 32, 32), &Device::Cpu)?;
    for t in [0.95f32, 0.8, 0.5, 0.2] {
        let xt = ((&x0 * (1.0 - t) as f64)? + (&eps * t as f64)?)?;
        let target = (&eps - &x0)?;
        let tt = Tensor::full(t, n, &Device::Cpu)?;
        let own: Vec<&str> = samples.iter().map(|s| s.prompt.text.as_str()).collect();
        let shifted: Vec<&str> = (0..n).map(|i| own[(i + 1) % n]).collect();
        let empty: Vec<&str> = vec![""; n];
        let mut line = format!("t {t}:");
        for (name, prompts) in [("own", &own), ("other", &shifted), ("empty", &empty)] {
            let tok = model.tokenize(prompts)?;
            let text = model.net.text.forward(&tok.ids, &tok.mask)?;
            let pred = model.net.forward(&xt, &tt, &text, &tok.mask)?;
            let loss = (pred - &target)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
            line += &format!("  {name} {loss:.4}");
        }
        println!("{line}");
    }
    Ok(())
}
