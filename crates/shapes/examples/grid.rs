//! Writes a grid of generated scenes as a PPM image and prints their prompts.
//!
//! `cargo run --release -p stride-shapes --example grid -- OUT.ppm [SEED] [COUNT] [NOISE]`

use std::io::Write;

use stride_shapes::{check, render, World, SIDE};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).map(String::as_str).unwrap_or("grid.ppm");
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0u64);
    let count = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16usize);
    let noise = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0.0f32);
    let (cols, scale, pad) = (4usize, 4usize, 4usize);
    let rows = count.div_ceil(cols);
    let cell = SIDE * scale + pad;
    let (w, h) = (cols * cell + pad, rows * cell + pad);
    let mut buf = vec![128u8; w * h * 3];
    let world = World::new(seed);
    let mut rng = world.rng(u64::MAX);
    for k in 0..count {
        let s = world.sample(k as u64);
        let mut img = render(&s.scene);
        if noise > 0.0 {
            img.add_gaussian_noise(noise, &mut rng);
        }
        let report = check(&s.prompt.request, &img);
        println!(
            "{k:2} [{:7}] {} | {}",
            s.detail.name(),
            if report.passed() { "pass" } else { "FAIL" },
            s.prompt
        );
        let rgb = img.to_rgb8();
        let (ox, oy) = (pad + (k % cols) * cell, pad + (k / cols) * cell);
        for y in 0..SIDE * scale {
            for x in 0..SIDE * scale {
                let src = ((y / scale) * SIDE + x / scale) * 3;
                let dst = ((oy + y) * w + ox + x) * 3;
                buf[dst..dst + 3].copy_from_slice(&rgb[src..src + 3]);
            }
        }
    }
    let mut f = std::fs::File::create(out)?;
    write!(f, "P6\n{w} {h}\n255\n")?;
    f.write_all(&buf)
}
