//! ShapesEval: reads an image back into a scene and tells, attribute by attribute, whether
//! it satisfies a request.
//! See the crate docs for how it reads and judges.

use std::cmp::Reverse;
use std::fmt;

use crate::image::Image32;
use crate::prompt::{Number, Phrase, Request};
use crate::scene::{Cell, Color, Object, Scene, Shape, Size};
use crate::SIDE;

/// A pixel joins an object when it is at least this far (0 to 1) along the line from the
/// background colour to the object's colour: where it is at least half object.
pub const MIN_COVERAGE: f32 = 0.5;

/// ... and no farther than this from that line (Euclidean, `[-1, 1]` units).
pub const MAX_OFF_LINE: f32 = 0.6;

/// Smallest component, in pixels, that counts as an object (a small cross has 9).
pub const MIN_AREA: usize = 5;

/// Smallest overlap with the best shape template for a component to count as an object.
pub const MIN_SHAPE_IOU: f32 = 0.5;

/// An object as the checker saw it, with the measurements behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub object: Object,
    /// Pixels in the component.
    pub area: usize,
    /// Bounding box: left column, top row, width, height.
    pub bbox: [usize; 4],
    /// Centroid (column, row) in pixel coordinates (pixel `i` covers `[i, i + 1)`).
    pub centroid: [f32; 2],
    /// Intersection over union with the chosen shape's template.
    pub shape_iou: f32,
}

/// What the checker read from an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Perception {
    pub background: Color,
    /// Objects, top-left first (by bounding box row, then column).
    pub objects: Vec<Seen>,
}

impl Perception {
    /// The scene read from the image.
    pub fn scene(&self) -> Scene {
        Scene { background: self.background, objects: self.objects.iter().map(|s| s.object).collect() }
    }
}

/// Reads an image into background and objects (see the [crate docs](crate)).
pub fn perceive(image: &Image32) -> Perception {
    const N: usize = SIDE * SIDE;
    let rgb: Vec<[f32; 3]> = (0..N).map(|i| image.pixel(i % SIDE, i / SIDE)).collect();
    let labels: Vec<Color> = rgb.iter().map(|&p| Color::nearest(p).0).collect();
    let mut counts = [0usize; 9];
    for &c in &labels {
        counts[c as usize] += 1;
    }
    let background = Color::ALL[(0..9).max_by_key(|&k| (counts[k], Reverse(k))).unwrap_or(0)];
    let bg_rgb = mean(labels.iter().zip(&rgb).filter(|(&c, _)| c == background).map(|(_, p)| *p));

    // Seeds: patches of one palette colour, largest first.
    let mut seed_of = vec![usize::MAX; N];
    let mut seeds: Vec<(Color, Vec<usize>)> = Vec::new();
    for start in 0..N {
        let color = labels[start];
        if color == background || seed_of[start] != usize::MAX {
            continue;
        }
        let id = seeds.len();
        seed_of[start] = id;
        let pixels = flood(start, |j| {
            let take = seed_of[j] == usize::MAX && labels[j] == color;
            if take {
                seed_of[j] = id;
            }
            take
        });
        seeds.push((color, pixels));
    }
    seeds.sort_by_key(|(_, px)| Reverse(px.len()));

    let mut owner = vec![usize::MAX; N];
    let mut objects = Vec::new();
    for (id, (color, seed)) in seeds.iter().enumerate() {
        if seed.iter().any(|&i| owner[i] != usize::MAX) {
            continue;
        }
        // The object's colour as drawn: the mean of the seed's more saturated half.
        let c = color.rgb();
        let along = |p: [f32; 3], to: [f32; 3]| {
            let d = sub(to, bg_rgb);
            dot(sub(p, bg_rgb), d) / dot(d, d).max(1e-6)
        };
        let mut ts: Vec<f32> = seed.iter().map(|&i| along(rgb[i], c)).collect();
        ts.sort_by(f32::total_cmp);
        let median = ts[ts.len() / 2];
        let obj_rgb = mean(seed.iter().map(|&i| rgb[i]).filter(|&p| along(p, c) >= median));
        let d = sub(obj_rgb, bg_rgb);
        if dot(d, d) < 0.25 {
            continue;
        }
        let member = |i: usize| {
            let t = along(rgb[i], obj_rgb);
            let off = sub(sub(rgb[i], bg_rgb), scale(d, t));
            (MIN_COVERAGE..=2.0 - MIN_COVERAGE).contains(&t) && dot(off, off) <= MAX_OFF_LINE * MAX_OFF_LINE
        };
        let mut pixels = Vec::new();
        for &s in seed {
            if owner[s] == usize::MAX && member(s) {
                owner[s] = id;
                pixels.extend(flood(s, |j| {
                    let take = owner[j] == usize::MAX && member(j);
                    if take {
                        owner[j] = id;
                    }
                    take
                }));
            }
        }
        if let Some(seen) = measure(&pixels, &owner, id, *color) {
            objects.push(seen);
        }
    }
    objects.sort_by_key(|s| (s.bbox[1], s.bbox[0]));
    Perception { background, objects }
}

/// The 4-connected pixels reachable from `start` (which is included) through pixels for
/// which `take` says yes; `take` marks what it takes.
fn flood(start: usize, mut take: impl FnMut(usize) -> bool) -> Vec<usize> {
    let mut out = vec![start];
    let mut k = 0;
    while k < out.len() {
        let i = out[k];
        k += 1;
        let (x, y) = (i % SIDE, i / SIDE);
        let mut next = [None; 4];
        if x > 0 {
            next[0] = Some(i - 1);
        }
        if x + 1 < SIDE {
            next[1] = Some(i + 1);
        }
        if y > 0 {
            next[2] = Some(i - SIDE);
        }
        if y + 1 < SIDE {
            next[3] = Some(i + SIDE);
        }
        for j in next.into_iter().flatten() {
            if take(j) {
                out.push(j);
            }
        }
    }
    out
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn scale(a: [f32; 3], s: f32) -> [f32; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn mean(it: impl Iterator<Item = [f32; 3]>) -> [f32; 3] {
    let (mut s, mut n) = ([0.0f32; 3], 0usize);
    for p in it {
        s = [s[0] + p[0], s[1] + p[1], s[2] + p[2]];
        n += 1;
    }
    scale(s, 1.0 / n.max(1) as f32)
}

/// Measures one object's pixels (`owner[i] == id`); `None` when it is not an object.
fn measure(pixels: &[usize], owner: &[usize], id: usize, color: Color) -> Option<Seen> {
    if pixels.len() < MIN_AREA {
        return None;
    }
    let inside = |x: usize, y: usize| owner[y * SIDE + x] == id;
    let has_core = pixels.iter().any(|&i| {
        let (x, y) = (i % SIDE, i / SIDE);
        x > 0
            && y > 0
            && x + 1 < SIDE
            && y + 1 < SIDE
            && inside(x - 1, y)
            && inside(x + 1, y)
            && inside(x, y - 1)
            && inside(x, y + 1)
    });
    if !has_core {
        return None;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (SIDE, SIDE, 0, 0);
    let (mut sx, mut sy) = (0.0f32, 0.0f32);
    for &i in pixels {
        let (x, y) = (i % SIDE, i / SIDE);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
        sx += x as f32 + 0.5;
        sy += y as f32 + 0.5;
    }
    let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
    let area = pixels.len();
    let centroid = [sx / area as f32, sy / area as f32];
    let mut best = (Shape::Square, -1.0f32);
    for shape in Shape::ALL {
        let mask = shape.mask(w, h);
        let (mut both, mut either) = (0usize, 0usize);
        for (k, &m) in mask.iter().enumerate() {
            let seen = inside(x0 + k % w, y0 + k / w);
            both += (m && seen) as usize;
            either += (m || seen) as usize;
        }
        let iou = both as f32 / either.max(1) as f32;
        if iou > best.1 {
            best = (shape, iou);
        }
    }
    if best.1 < MIN_SHAPE_IOU {
        return None;
    }
    let object = Object {
        shape: best.0,
        color,
        size: Size::from_extent(w.max(h)),
        cell: Cell::of_point(centroid[0], centroid[1]),
    };
    Some(Seen { object, area, bbox: [x0, y0, w, h], centroid, shape_iou: best.1 })
}

/// Checks an image against a request: [`perceive`], then [`Request::evaluate`].
pub fn check(request: &Request, image: &Image32) -> Report {
    request.evaluate(&perceive(image).scene())
}

/// A requested attribute, for tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    /// An "a ..." phrase found an object of its own; a counted phrase found at least one.
    Present,
    Shape,
    Color,
    Size,
    Position,
    Count,
    Background,
}

impl Attribute {
    /// All attributes.
    pub const ALL: [Attribute; 7] = [
        Attribute::Present,
        Attribute::Shape,
        Attribute::Color,
        Attribute::Size,
        Attribute::Position,
        Attribute::Count,
        Attribute::Background,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Present => "present",
            Attribute::Shape => "shape",
            Attribute::Color => "colour",
            Attribute::Size => "size",
            Attribute::Position => "position",
            Attribute::Count => "count",
            Attribute::Background => "background",
        }
    }
}

/// The verdict on one phrase. `None`: not requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhraseReport {
    pub phrase: Phrase,
    /// "a ...": an object was assigned to the phrase (the image has enough objects);
    /// counted: at least one object has the phrase's size, colour and shape.
    pub present: bool,
    /// "a ..." phrases: whether the assigned object has the named shape (and so on).
    pub shape: Option<bool>,
    pub color: Option<bool>,
    pub size: Option<bool>,
    pub position: Option<bool>,
    /// Counted phrases: whether exactly that many objects fit.
    pub count: Option<bool>,
    /// "a ...": the object assigned to the phrase.
    pub matched: Option<Object>,
    /// Counted: how many objects have the phrase's size, colour and shape.
    pub found: usize,
}

impl PhraseReport {
    /// The requested attributes and whether each holds.
    pub fn attributes(&self) -> Vec<(Attribute, bool)> {
        let mut out = vec![(Attribute::Present, self.present)];
        for (a, v) in [
            (Attribute::Shape, self.shape),
            (Attribute::Color, self.color),
            (Attribute::Size, self.size),
            (Attribute::Position, self.position),
            (Attribute::Count, self.count),
        ] {
            if let Some(v) = v {
                out.push((a, v));
            }
        }
        out
    }

    /// Whether every requested attribute holds.
    pub fn passed(&self) -> bool {
        self.attributes().iter().all(|&(_, ok)| ok)
    }
}

/// The checker's verdict on a whole prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One report per phrase, in the prompt's order.
    pub phrases: Vec<PhraseReport>,
    /// Whether the background is the colour asked for; `None` when not asked.
    pub background: Option<bool>,
    /// The scene that was judged (read from the image by [`check`]).
    pub seen: Scene,
}

impl Report {
    /// Every requested attribute and whether it holds, phrase by phrase, background last.
    pub fn attributes(&self) -> Vec<(Attribute, bool)> {
        let mut out: Vec<_> = self.phrases.iter().flat_map(PhraseReport::attributes).collect();
        if let Some(b) = self.background {
            out.push((Attribute::Background, b));
        }
        out
    }

    /// Whether the image satisfies the whole prompt.
    pub fn passed(&self) -> bool {
        self.attributes().iter().all(|&(_, ok)| ok)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} (seen: {})", if self.passed() { "PASS" } else { "FAIL" }, self.seen)?;
        for p in &self.phrases {
            write!(f, "  {}:", p.phrase)?;
            for (a, ok) in p.attributes() {
                write!(f, " {}={}", a.name(), if ok { "ok" } else { "FAIL" })?;
            }
            writeln!(f)?;
        }
        if let Some(b) = self.background {
            writeln!(f, "  background: {}", if b { "ok" } else { "FAIL" })?;
        }
        Ok(())
    }
}

/// Named attributes of a singular phrase that `o` satisfies, plus one for being assigned.
fn score(p: &Phrase, o: &Object) -> u32 {
    1 + p.size.is_some_and(|s| s == o.size) as u32
        + p.color.is_some_and(|c| c == o.color) as u32
        + p.shape.is_some_and(|s| s == o.shape) as u32
        + p.cell.is_some_and(|c| c == o.cell) as u32
}

impl Request {
    /// Judges a scene against the request (see the [crate docs](crate)).
    /// On the scene a prompt was generated from, this always passes.
    pub fn evaluate(&self, scene: &Scene) -> Report {
        let objs = &scene.objects;
        let singular: Vec<usize> =
            (0..self.phrases.len()).filter(|&i| self.phrases[i].number == Number::A).collect();
        // Objects a counted phrase counts are its own; "a" phrases take from the rest.
        let free: Vec<usize> = (0..objs.len())
            .filter(|&o| !self.phrases.iter().any(|p| p.number != Number::A && p.fits_kind(&objs[o])))
            .collect();
        let singular_phrases: Vec<Phrase> = singular.iter().map(|&i| self.phrases[i]).collect();
        let free_objs: Vec<Object> = free.iter().map(|&o| objs[o]).collect();
        let assignment: Vec<Option<usize>> =
            assign(&singular_phrases, &free_objs).into_iter().map(|a| a.map(|k| free[k])).collect();
        let mut phrases = Vec::with_capacity(self.phrases.len());
        for (i, p) in self.phrases.iter().enumerate() {
            let r = match p.number.count() {
                None => {
                    let k = singular.iter().position(|&j| j == i).unwrap_or(0);
                    let o = assignment.get(k).copied().flatten().map(|oi| objs[oi]);
                    let holds = |named: bool, ok: fn(&Phrase, &Object) -> bool| {
                        named.then(|| o.as_ref().is_some_and(|o| ok(p, o)))
                    };
                    PhraseReport {
                        phrase: *p,
                        present: o.is_some(),
                        shape: holds(p.shape.is_some(), |p, o| p.shape == Some(o.shape)),
                        color: holds(p.color.is_some(), |p, o| p.color == Some(o.color)),
                        size: holds(p.size.is_some(), |p, o| p.size == Some(o.size)),
                        position: holds(p.cell.is_some(), |p, o| p.cell == Some(o.cell)),
                        count: None,
                        matched: o,
                        found: o.is_some() as usize,
                    }
                }
                Some(n) => {
                    let found = objs.iter().filter(|o| p.fits_kind(o)).count();
                    PhraseReport {
                        phrase: *p,
                        present: found > 0,
                        shape: None,
                        color: None,
                        size: None,
                        position: None,
                        count: Some(found == n),
                        matched: None,
                        found,
                    }
                }
            };
            phrases.push(r);
        }
        Report { phrases, background: self.background.map(|c| c == scene.background), seen: scene.clone() }
    }

    /// Whether `scene` satisfies the request (`self.evaluate(scene).passed()`).
    pub fn holds_for(&self, scene: &Scene) -> bool {
        self.evaluate(scene).passed()
    }
}

/// Gives each phrase a distinct object (or none when objects run out), maximising the
/// total [`score`]; ties go to the earliest objects. Dynamic programming over objects and
/// the set of phrases already served; past 12 phrases (more than a parsed prompt can
/// have), greedily in phrase order instead.
fn assign(phrases: &[Phrase], objs: &[Object]) -> Vec<Option<usize>> {
    let k = phrases.len();
    if k == 0 {
        return Vec::new();
    }
    if k > 12 {
        let mut used = vec![false; objs.len()];
        return phrases
            .iter()
            .map(|p| {
                let best =
                    (0..objs.len()).filter(|&i| !used[i]).max_by_key(|&i| (score(p, &objs[i]), Reverse(i)));
                if let Some(i) = best {
                    used[i] = true;
                }
                best
            })
            .collect();
    }
    let full = 1usize << k;
    // best[i][mask]: best score using objects i.. given phrases in `mask` are served.
    let mut best = vec![vec![0u32; full]; objs.len() + 1];
    for i in (0..objs.len()).rev() {
        for mask in 0..full {
            let mut b = best[i + 1][mask];
            for p in 0..k {
                if mask & (1 << p) == 0 {
                    b = b.max(score(&phrases[p], &objs[i]) + best[i + 1][mask | (1 << p)]);
                }
            }
            best[i][mask] = b;
        }
    }
    // Walk the table forwards to recover the choice.
    let mut out = vec![None; k];
    let mut mask = 0usize;
    for i in 0..objs.len() {
        let target = best[i][mask];
        if let Some(p) = (0..k).find(|&p| {
            mask & (1 << p) == 0 && score(&phrases[p], &objs[i]) + best[i + 1][mask | (1 << p)] == target
        }) {
            out[p] = Some(i);
            mask |= 1 << p;
        }
    }
    out
}
