//! 32x32 RGB images and the renderer.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::scene::{Color, Scene};
use crate::SIDE;

/// Number of values in an image: 3 channels of `SIDE` x `SIDE`.
pub const LEN: usize = 3 * SIDE * SIDE;

/// Error for image data of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an image needs {expected} values (3 x 32 x 32), got {got}")]
pub struct ImageError {
    pub expected: usize,
    pub got: usize,
}

/// A 32x32 RGB image, channel-major (CHW, the layout of a `(3, 32, 32)` tensor), values
/// nominally in `[-1, 1]` (-1 black, 1 full intensity). Values outside that range are
/// kept as they are (a model's output may overshoot); [`Image32::to_rgb8`] clamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Image32 {
    chw: Vec<f32>,
}

impl Image32 {
    /// An image filled with one palette colour.
    pub fn filled(color: Color) -> Image32 {
        let rgb = color.rgb();
        let mut chw = Vec::with_capacity(LEN);
        for v in rgb {
            chw.extend(std::iter::repeat_n(v, SIDE * SIDE));
        }
        Image32 { chw }
    }

    /// Wraps CHW data of length [`LEN`] (for example a `(3, 32, 32)` tensor's values).
    pub fn from_chw(chw: Vec<f32>) -> Result<Image32, ImageError> {
        if chw.len() != LEN {
            return Err(ImageError { expected: LEN, got: chw.len() });
        }
        Ok(Image32 { chw })
    }

    /// Builds an image from 8-bit RGB, row-major, interleaved (HWC), `v / 127.5 - 1`.
    pub fn from_rgb8(hwc: &[u8]) -> Result<Image32, ImageError> {
        if hwc.len() != LEN {
            return Err(ImageError { expected: LEN, got: hwc.len() });
        }
        let mut chw = vec![0.0; LEN];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * SIDE * SIDE + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
        Ok(Image32 { chw })
    }

    /// The CHW values.
    pub fn as_chw(&self) -> &[f32] {
        &self.chw
    }

    /// The CHW values, by value.
    pub fn into_chw(self) -> Vec<f32> {
        self.chw
    }

    /// 8-bit RGB, row-major, interleaved (HWC): `round((v + 1) * 127.5)`, clamped.
    pub fn to_rgb8(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        for i in 0..SIDE * SIDE {
            for c in 0..3 {
                let v = (self.chw[c * SIDE * SIDE + i] + 1.0) * 127.5;
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
        out
    }

    /// The RGB value at column `x`, row `y` (each below [`SIDE`]; panics otherwise, like
    /// slice indexing).
    pub fn pixel(&self, x: usize, y: usize) -> [f32; 3] {
        assert!(x < SIDE && y < SIDE, "pixel ({x}, {y}) outside a {SIDE}x{SIDE} image");
        let i = y * SIDE + x;
        [self.chw[i], self.chw[SIDE * SIDE + i], self.chw[2 * SIDE * SIDE + i]]
    }

    /// Sets the RGB value at column `x`, row `y` (each below [`SIDE`]; panics otherwise).
    pub fn set_pixel(&mut self, x: usize, y: usize, rgb: [f32; 3]) {
        assert!(x < SIDE && y < SIDE, "pixel ({x}, {y}) outside a {SIDE}x{SIDE} image");
        let i = y * SIDE + x;
        for (c, v) in rgb.into_iter().enumerate() {
            self.chw[c * SIDE * SIDE + i] = v;
        }
    }

    /// Adds independent Gaussian noise of standard deviation `std` (in `[-1, 1]` units) to
    /// every value, without clamping. Values are drawn in CHW order with
    /// `rand_distr::StandardNormal`, so a seeded `rng` gives the same image everywhere.
    pub fn add_gaussian_noise<R: Rng + ?Sized>(&mut self, std: f32, rng: &mut R) {
        for v in &mut self.chw {
            let z: f64 = StandardNormal.sample(rng);
            *v += std * z as f32;
        }
    }
}

/// Draws a scene: flat background, then each object's [`crate::Shape::mask`] of side
/// `size.pixels()` centred on its cell's [`crate::Cell::center_px`], in flat colour, no
/// anti-aliasing. Later objects paint over earlier ones (they never meet in a valid scene).
pub fn render(scene: &Scene) -> Image32 {
    let mut img = Image32::filled(scene.background);
    for o in &scene.objects {
        let s = o.size.pixels();
        let (cx, cy) = o.cell.center_px();
        let (x0, y0) = (cx - s / 2, cy - s / 2);
        let rgb = o.color.rgb();
        for (k, inside) in o.shape.mask(s, s).into_iter().enumerate() {
            if inside {
                img.set_pixel(x0 + k % s, y0 + k / s, rgb);
            }
        }
    }
    img
}
