//! Flow-matching loss of a model folder on training samples with their own prompts, with
//! the prompts of other samples, and with the empty prompt: how much the model uses the text.
//! At t = 0.99 the image is all but pure noise: only the prompt can tell the model what to draw.
//! On the samples whose prompt names a background, also: the background colour word swapped
//! with an object's colour word ("a red circle on a blue background" -> "a blue circle on a
//! red background"), which only a model that binds colours to their nouns can tell apart.
//! On the samples whose prompt names a place: the place mirrored ("top left" -> "bottom
//! right"), which only a model that puts objects where the prompt says can tell apart.
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
    let eps = stride_solvers::TorchGenerator::new(0).randn(n * 3 * 32 * 32);
    let eps = Tensor::from_vec(eps, (n, 3, 32, 32), &Device::Cpu)?;
    let own: Vec<&str> = samples.iter().map(|s| s.prompt.text.as_str()).collect();
    let shifted: Vec<&str> = (0..n).map(|i| own[(i + 1) % n]).collect();
    let empty: Vec<&str> = vec![""; n];
    let (with_background, swapped): (Vec<usize>, Vec<String>) =
        own.iter().enumerate().filter_map(|(i, p)| Some((i, swap_background(p)?))).unzip();
    let bound: Vec<&str> = with_background.iter().map(|&i| own[i]).collect();
    let swapped: Vec<&str> = swapped.iter().map(String::as_str).collect();
    let keep = Tensor::new(with_background.iter().map(|&i| i as u32).collect::<Vec<_>>(), &Device::Cpu)?;
    let (with_place, mirrored): (Vec<usize>, Vec<String>) =
        own.iter().enumerate().filter_map(|(i, p)| Some((i, mirror_places(p)?))).unzip();
    let placed: Vec<&str> = with_place.iter().map(|&i| own[i]).collect();
    let mirrored: Vec<&str> = mirrored.iter().map(String::as_str).collect();
    let keep_placed = Tensor::new(with_place.iter().map(|&i| i as u32).collect::<Vec<_>>(), &Device::Cpu)?;
    for t in [0.99f32, 0.95, 0.8, 0.5, 0.2] {
        let xt = ((&x0 * (1.0 - t) as f64)? + (&eps * t as f64)?)?;
        let target = (&eps - &x0)?;
        // The loss of each named prompt set on the rows `rows` of this noise level.
        let losses = |rows: Option<&Tensor>, sets: &[(&str, &Vec<&str>)]| -> candle_core::Result<String> {
            let select = |x: &Tensor| rows.map_or(Ok(x.clone()), |r| x.index_select(r, 0));
            let (xt, target) = (select(&xt)?, select(&target)?);
            let tt = Tensor::full(t, xt.dim(0)?, &Device::Cpu)?;
            let mut line = String::new();
            for (name, prompts) in sets {
                let tok = model.tokenize(prompts).map_err(candle_core::Error::wrap)?;
                let text = model.net.text.forward(&tok.ids, &tok.mask)?;
                let pred = model.net.forward(&xt, &tt, &text, &tok.mask)?;
                let loss = (pred - &target)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
                line += &format!("  {name} {loss:.4}");
            }
            Ok(line)
        };
        println!("t {t}:{}", losses(None, &[("own", &own), ("other", &shifted), ("empty", &empty)])?);
        let line = losses(Some(&keep), &[("own", &bound), ("colours swapped", &swapped)])?;
        println!("t {t}, {} prompts with a background:{line}", bound.len());
        let line = losses(Some(&keep_placed), &[("own", &placed), ("places mirrored", &mirrored)])?;
        println!("t {t}, {} prompts with a place:{line}", placed.len());
    }
    Ok(())
}

/// The prompt with its background colour and its first other colour word exchanged, when
/// they differ.
fn swap_background(prompt: &str) -> Option<String> {
    let colours: Vec<&str> = stride_shapes::Color::ALL.iter().map(|c| c.name()).collect();
    let mut words: Vec<&str> = prompt.split(' ').collect();
    let background = words.iter().position(|w| w.trim_end_matches(',') == "background")? - 1;
    let object = words[..background].iter().position(|w| colours.contains(&w.trim_end_matches(',')))?;
    let (a, b) = (words[object].trim_end_matches(','), words[background]);
    if a == b || words[object].ends_with(',') {
        return None;
    }
    words[object] = b;
    words[background] = a;
    Some(words.join(" "))
}

/// The prompt with every place word mirrored through the centre (top <-> bottom, left <->
/// right), when it has one.
fn mirror_places(prompt: &str) -> Option<String> {
    let mirror = |word: &str| match word.trim_end_matches(',') {
        "top" => Some("bottom"),
        "bottom" => Some("top"),
        "left" => Some("right"),
        "right" => Some("left"),
        _ => None,
    };
    let words: Vec<String> = prompt
        .split(' ')
        .map(|w| mirror(w).map_or(w.to_string(), |m| m.to_string() + if w.ends_with(',') { "," } else { "" }))
        .collect();
    let mirrored = words.join(" ");
    (mirrored != prompt).then_some(mirrored)
}
