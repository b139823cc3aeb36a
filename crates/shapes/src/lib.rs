//! # stride-shapes
//!
//! The "shapes world" behind stride's bundled text-to-image model: a seeded generator of
//! 32x32 RGB scenes (a background colour and 1 to 3 flat-coloured objects on a 3x3 grid),
//! a prompt grammar that describes them from terse ("a red circle") to full ("a small
//! yellow triangle in the top left and a large blue square at the bottom, on a black
//! background"), and ShapesEval, a GenEval in miniature that reads an image and says, per
//! requested attribute, whether it matches a prompt.
//!
//! ```
//! use stride_shapes::{check, render, Request, World};
//!
//! let world = World::new(7);
//! let sample = world.sample(0); // scene + prompt, the same for every run and platform
//! let image = render(&sample.scene); // 3x32x32, values in [-1, 1]
//! assert!(check(&sample.prompt.request, &image).passed());
//!
//! let request = Request::parse("two green circles on a black background").unwrap();
//! assert_eq!(request.to_string(), "two green circles on a black background");
//! ```
//!
//! ## The world
//!
//! A [`Scene`] is a background [`Color`] and 1 to 3 [`Object`]s, each a [`Shape`] (circle,
//! square, triangle, cross), a colour other than the background, a [`Size`] (small: a
//! 5-pixel box, large: 9) and a [`Cell`] of the 3x3 grid, one object per cell, centred on
//! it, so objects never touch. [`render`] draws it with flat colours, no anti-aliasing,
//! into an [`Image32`] (CHW `f32` in `[-1, 1]`). The nine palette colours are the corners
//! of the RGB cube and its centre (gray), at least `sqrt(3)` apart.
//!
//! ## Prompts
//!
//! A [`Prompt`] is text plus the [`Request`] it encodes: [`Phrase`]s naming some or all of
//! an object's attributes, and optionally the background. Attributes a prompt leaves out
//! are free, and so are objects it does not mention. The generator writes prompts at four
//! levels of [`Detail`], from terse to full; [`Request::richness`] counts the attributes a
//! prompt names. The grammar, which [`Request::parse`] reads and `Display` writes:
//!
//! ```text
//! prompt     := phrase ( ["and"] phrase )* [background] | background
//! phrase     := "a" [size] [colour] noun [location]          // at least one such object
//!             | ("two" | "three") [size] [colour] nouns      // exactly that many
//! noun       := "circle" | "square" | "triangle" | "cross" | "shape"      ("shape": any)
//! nouns      := "circles" | "squares" | "triangles" | "crosses" | "shapes"
//! location   := "in the top left" | "at the top" | "in the top right" | "on the left"
//!             | "in the center" | "on the right" | "in the bottom left" | "at the bottom"
//!             | "in the bottom right"
//! background := "on a" colour "background"
//! ```
//!
//! Words are case-insensitive; commas and a final full stop are punctuation only. The
//! generator writes `X`, `X and Y`, `X, Y and Z`, with `, on a ... background` after two
//! or more phrases and ` on a ... background` after one.
//!
//! ## ShapesEval
//!
//! [`check`] reads the image ([`perceive`]) and judges the request against what it saw
//! ([`Request::evaluate`]), returning a [`Report`] with a verdict per requested
//! [`Attribute`] and [`Report::passed`] for the whole prompt.
//!
//! Reading ([`perceive`]):
//! 1. every pixel takes the nearest palette colour; the background is the most common one;
//! 2. each 4-connected patch of one non-background colour is a seed, largest first. Its
//!    object's pixels are those connected to it whose colour lies on the line from the
//!    measured background colour to the seed's measured colour, at least half way along
//!    ([`MIN_COVERAGE`]) and no farther than [`MAX_OFF_LINE`] from the line. So a soft
//!    edge counts where it is at least half object, a blend of two other colours (a rim
//!    of gray between blue and yellow) does not join, and a uniform shift or fading of
//!    the colours does not matter;
//! 3. an object has at least [`MIN_AREA`] pixels and at least one pixel whose four
//!    neighbours are in it too (so rims and speckles are not objects);
//! 4. its colour is the seed's palette colour; its size is `Large` when its bounding box
//!    is 7 or more pixels on its longer side; its cell is the one holding its centroid
//!    (image cut in thirds); its shape is the [`Shape::mask`] drawn in its bounding box
//!    that overlaps it best (intersection over union). A patch that overlaps no shape by
//!    at least [`MIN_SHAPE_IOU`] is not an object.
//!
//! Judging ([`Request::evaluate`]): each "a ..." phrase gets an object of its own, the
//! assignment chosen to satisfy as many named attributes as possible; each attribute the
//! phrase names is then reported for its object. A counted phrase ("two red circles")
//! holds when exactly that many objects have its size, colour and shape; the objects it
//! counts are its own, so "a" phrases are matched among the others ("a circle and two red
//! circles" asks for a circle that is not red). The background
//! holds when it is the colour named. Attributes a prompt leaves out are free, and so are
//! objects it does not mention.
//!
//! ## Determinism, training data and the held-out split
//!
//! Randomness comes from [`rand_chacha::ChaCha8Rng`], which gives the same stream on every
//! platform. [`World::sample`] seeds `ChaCha8Rng::seed_from_u64(seed)` and draws sample
//! `index` from stream `index`, so any sample can be drawn directly, in any order, on any
//! thread. Changing this crate's distributions (or its `rand` major versions) changes the
//! samples; a test pins a few of them.
//!
//! [`is_heldout`] sets aside a fixed 1 in 16 of all prompt texts by a stable hash of their
//! words. [`World::sample`] never returns one; [`World::heldout_prompts`] returns only
//! those, so an evaluation set's texts are never seen in training (its requests can be, in
//! another phrase order: [`is_heldout_in_every_order`] tells). [`write_prompts`] and
//! [`read_prompts`] store a prompt list as text, one a line.
//!
//! Vocabulary: [`VOCABULARY`] lists every word of the grammar; [`token_ids`] maps a prompt
//! to indices into it (at most [`MAX_PROMPT_WORDS`] of them for a generated prompt).

mod check;
mod image;
mod prompt;
mod scene;

pub use check::{
    check, perceive, Attribute, Perception, PhraseReport, Report, Seen, MAX_OFF_LINE, MIN_AREA, MIN_COVERAGE,
    MIN_SHAPE_IOU,
};
pub use image::{render, Image32, ImageError, LEN};
pub use prompt::{
    is_heldout, is_heldout_in_every_order, parse_prompts, read_prompts, token_ids, words, write_prompts,
    Detail, Number, ParseError, Phrase, Prompt, PromptsFileError, Request, MAX_PHRASES, MAX_PROMPT_WORDS,
    VOCABULARY,
};
pub use rand;
pub use rand_chacha;
pub use scene::{Cell, Color, Object, Scene, SceneError, Shape, Size, UnknownName};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Image side in pixels.
pub const SIDE: usize = 32;

/// A seeded, random-access source of training samples and held-out prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    seed: u64,
}

/// A scene and a prompt that is true of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub scene: Scene,
    pub prompt: Prompt,
    /// The level of detail the prompt was written at.
    pub detail: Detail,
}

/// Seed offset of the stream the held-out prompts are drawn from.
const HELDOUT_SALT: u64 = 0x0005_eed0_f4e1_d0a7;

impl World {
    /// The world of one seed.
    pub fn new(seed: u64) -> World {
        World { seed }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The RNG behind sample `index`: `ChaCha8Rng::seed_from_u64(seed)` on stream `index`.
    pub fn rng(&self, index: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index);
        rng
    }

    /// Training sample `index`: a [`Scene::random`] and a prompt at a [`Detail`] drawn
    /// uniformly. The prompt is never a held-out one ([`is_heldout`]): such a draw is
    /// thrown away and the next draw of the same stream taken.
    pub fn sample(&self, index: u64) -> Sample {
        let mut rng = self.rng(index);
        loop {
            let s = draw(&mut rng);
            if !is_heldout(&s.prompt.text) {
                return s;
            }
        }
    }

    /// Training samples `start..`, one after another.
    pub fn samples(&self, start: u64) -> impl Iterator<Item = Sample> + '_ {
        (start..).map(move |i| self.sample(i))
    }

    /// `n` distinct held-out prompts ([`is_heldout`]), none of which any training sample
    /// has, in a fixed order: drawn like training samples from a stream of their own, the
    /// held-out ones kept, repeats dropped. A shorter list is a prefix of a longer one.
    /// Terse prompts have few distinct texts, so they are rarer here than in training.
    pub fn heldout_prompts(&self, n: usize) -> Vec<Prompt> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ HELDOUT_SALT);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let s = draw(&mut rng);
            if is_heldout(&s.prompt.text) && seen.insert(s.prompt.text.clone()) {
                out.push(s.prompt);
            }
        }
        out
    }
}

fn draw<R: Rng + ?Sized>(rng: &mut R) -> Sample {
    let scene = Scene::random(rng);
    let detail = Detail::ALL[rng.random_range(0..Detail::ALL.len())];
    let prompt = Prompt::describe(&scene, detail, rng);
    Sample { scene, prompt, detail }
}
