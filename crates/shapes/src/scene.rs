//! The things a scene is made of: colours, shapes, sizes, grid cells, objects, and the
//! scene generator.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::SIDE;

/// Error for a word that names no colour, shape, size or cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    /// What was being parsed: "colour", "shape", "size" or "cell".
    pub what: &'static str,
    /// The text that did not parse.
    pub name: String,
}

fn unknown(what: &'static str, name: &str) -> UnknownName {
    UnknownName { what, name: name.to_string() }
}

/// The palette. Every colour sits on a corner of the RGB cube or at its centre (gray), so
/// any two colours are at least `sqrt(3)` apart in `[-1, 1]` units (220 in 8-bit units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Color {
    Black,
    White,
    Gray,
    Red,
    Green,
    Blue,
    Yellow,
    Cyan,
    Magenta,
}

impl Color {
    /// All colours, in a fixed order.
    pub const ALL: [Color; 9] = [
        Color::Black,
        Color::White,
        Color::Gray,
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Cyan,
        Color::Magenta,
    ];

    /// The word used in prompts.
    pub fn name(self) -> &'static str {
        match self {
            Color::Black => "black",
            Color::White => "white",
            Color::Gray => "gray",
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Cyan => "cyan",
            Color::Magenta => "magenta",
        }
    }

    /// The colour as RGB in `[-1, 1]` (each channel is -1, 0 or 1).
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Color::Black => [-1.0, -1.0, -1.0],
            Color::White => [1.0, 1.0, 1.0],
            Color::Gray => [0.0, 0.0, 0.0],
            Color::Red => [1.0, -1.0, -1.0],
            Color::Green => [-1.0, 1.0, -1.0],
            Color::Blue => [-1.0, -1.0, 1.0],
            Color::Yellow => [1.0, 1.0, -1.0],
            Color::Cyan => [-1.0, 1.0, 1.0],
            Color::Magenta => [1.0, -1.0, 1.0],
        }
    }

    /// The palette colour nearest to `rgb` (Euclidean, `[-1, 1]` units) and the squared
    /// distance to it.
    pub fn nearest(rgb: [f32; 3]) -> (Color, f32) {
        let mut best = (Color::Black, f32::INFINITY);
        for c in Color::ALL {
            let p = c.rgb();
            let d = (0..3).map(|i| (rgb[i] - p[i]).powi(2)).sum::<f32>();
            if d < best.1 {
                best = (c, d);
            }
        }
        best
    }
}

/// Object shapes. All are drawn apex/arms up, filling a square box of the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    /// Apex up, base at the bottom of the box.
    Triangle,
    /// A plus sign; arms a third of the box wide.
    Cross,
}

impl Shape {
    /// All shapes, in a fixed order.
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Cross];

    /// The singular noun used in prompts.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
        }
    }

    /// The plural noun used in counted prompts ("two red crosses").
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Cross => "crosses",
        }
    }

    /// The shape rasterised into a `w` x `h` box, row-major, `true` inside. The renderer
    /// stamps `mask(s, s)` with `s = size.pixels()`; the checker compares what it sees
    /// against `mask(w, h)` at the seen box. Exact integer arithmetic, no anti-aliasing.
    pub fn mask(self, w: usize, h: usize) -> Vec<bool> {
        let (wi, hi) = (w as i64, h as i64);
        let mut m = Vec::with_capacity(w * h);
        // For the cross: arm thickness about a third of the side, with the parity of the
        // side so the arm is centred (5 -> 1, 9 -> 3, 8 -> 2, 10 -> 4).
        let arm = |s: i64| -> i64 {
            let third = s as f64 / 3.0;
            let mut best = if s % 2 == 0 { 2 } else { 1 };
            let mut v = best;
            while v <= s {
                if (v as f64 - third).abs() < (best as f64 - third).abs() {
                    best = v;
                }
                v += 2;
            }
            best
        };
        let (aw, ah) = (arm(wi), arm(hi));
        for y in 0..hi {
            for x in 0..wi {
                // Twice the offset from the box centre, in pixel-centre coordinates.
                let dx = 2 * x + 1 - wi;
                let dy = 2 * y + 1 - hi;
                let inside = match self {
                    Shape::Square => true,
                    Shape::Circle => dx * dx * hi * hi + dy * dy * wi * wi <= wi * wi * hi * hi,
                    // Half-width at row y is (w / 2) * (y + 1) / h, and at least the
                    // middle pixel (odd w) or two (even w).
                    Shape::Triangle => dx.abs() * hi <= (wi * (y + 1)).max(hi),
                    Shape::Cross => dx.abs() < aw || dy.abs() < ah,
                };
                m.push(inside);
            }
        }
        m
    }
}

/// Object size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    /// A 5-pixel box.
    Small,
    /// A 9-pixel box.
    Large,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// The word used in prompts.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// Side of the object's box in pixels.
    pub fn pixels(self) -> usize {
        match self {
            Size::Small => 5,
            Size::Large => 9,
        }
    }

    /// The size the checker reads from a box side: `Large` from 7 pixels up.
    pub fn from_extent(pixels: usize) -> Size {
        if pixels >= 7 {
            Size::Large
        } else {
            Size::Small
        }
    }
}

/// A cell of the 3x3 grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cell {
    TopLeft,
    Top,
    TopRight,
    Left,
    Center,
    Right,
    BottomLeft,
    Bottom,
    BottomRight,
}

impl Cell {
    /// All cells, row by row.
    pub const ALL: [Cell; 9] = [
        Cell::TopLeft,
        Cell::Top,
        Cell::TopRight,
        Cell::Left,
        Cell::Center,
        Cell::Right,
        Cell::BottomLeft,
        Cell::Bottom,
        Cell::BottomRight,
    ];

    /// The cell at `row`, `col` (each 0..3), or `None`.
    pub fn at(row: usize, col: usize) -> Option<Cell> {
        if row < 3 && col < 3 {
            Some(Cell::ALL[row * 3 + col])
        } else {
            None
        }
    }

    /// Row, 0 (top) to 2 (bottom).
    pub fn row(self) -> usize {
        self as usize / 3
    }

    /// Column, 0 (left) to 2 (right).
    pub fn col(self) -> usize {
        self as usize % 3
    }

    /// Short name: "top left", "top", ..., "center", ..., "bottom right".
    pub fn name(self) -> &'static str {
        match self {
            Cell::TopLeft => "top left",
            Cell::Top => "top",
            Cell::TopRight => "top right",
            Cell::Left => "left",
            Cell::Center => "center",
            Cell::Right => "right",
            Cell::BottomLeft => "bottom left",
            Cell::Bottom => "bottom",
            Cell::BottomRight => "bottom right",
        }
    }

    /// The location phrase used in prompts: "in the top left", "at the top", "on the
    /// left", "in the center", ...
    pub fn phrase(self) -> &'static str {
        match self {
            Cell::TopLeft => "in the top left",
            Cell::Top => "at the top",
            Cell::TopRight => "in the top right",
            Cell::Left => "on the left",
            Cell::Center => "in the center",
            Cell::Right => "on the right",
            Cell::BottomLeft => "in the bottom left",
            Cell::Bottom => "at the bottom",
            Cell::BottomRight => "in the bottom right",
        }
    }

    /// Pixel (column, row) on which an object in this cell is centred: 5, 16 or 26 on
    /// each axis. A 9-pixel object then leaves a 1-pixel margin at the image border and a
    /// gap of at least 1 pixel to its neighbours.
    pub fn center_px(self) -> (usize, usize) {
        const C: [usize; 3] = [5, 16, 26];
        (C[self.col()], C[self.row()])
    }

    /// The cell a point lies in, the image cut into equal thirds. `x`, `y` are pixel
    /// coordinates (pixel `i` covers `[i, i + 1)`), clamped to the image.
    pub fn of_point(x: f32, y: f32) -> Cell {
        let third = |v: f32| ((v / (SIDE as f32 / 3.0)).floor().clamp(0.0, 2.0)) as usize;
        Cell::ALL[third(y) * 3 + third(x)]
    }
}

macro_rules! impl_name_traits {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
        impl FromStr for $t {
            type Err = UnknownName;
            /// Parses the name (case-insensitive, surrounding spaces ignored).
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                let t = s.trim().to_ascii_lowercase();
                <$t>::ALL.into_iter().find(|v| v.name() == t).ok_or_else(|| unknown($what, s))
            }
        }
    };
}
impl_name_traits!(Color, "colour");
impl_name_traits!(Shape, "shape");
impl_name_traits!(Size, "size");
impl_name_traits!(Cell, "cell");

/// One object of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Object {
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    pub cell: Cell,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.size, self.color, self.shape, self.cell.phrase())
    }
}

/// What makes a [`Scene`] invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SceneError {
    #[error("two objects in the {0} cell")]
    SharedCell(Cell),
    #[error("a {0} object on a {0} background")]
    ColorIsBackground(Color),
}

/// A background colour and objects, each in its own cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scene {
    pub background: Color,
    pub objects: Vec<Object>,
}

impl Scene {
    /// Draws a scene: background uniform over the 9 colours; 1 to 3 objects (uniform) in
    /// distinct random cells; each object's size uniform, its shape uniform and its colour
    /// uniform over the 8 colours other than the background, except that an object after
    /// the first copies the shape and colour of an earlier one with probability 0.3 (so
    /// counted prompts such as "two green circles" have scenes to describe).
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Scene {
        let background = Color::ALL[rng.random_range(0..Color::ALL.len())];
        let n = rng.random_range(1..=3usize);
        let mut cells = Cell::ALL;
        let (cells, _) = cells.partial_shuffle(rng, n);
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        for &mut cell in cells {
            let size = Size::ALL[rng.random_range(0..2)];
            let (shape, color) = if !objects.is_empty() && rng.random_bool(0.3) {
                let o = objects[rng.random_range(0..objects.len())];
                (o.shape, o.color)
            } else {
                let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
                let k = rng.random_range(0..Color::ALL.len() - 1);
                let color = Color::ALL.into_iter().filter(|&c| c != background).nth(k);
                (shape, color.unwrap_or(Color::White))
            };
            objects.push(Object { shape, color, size, cell });
        }
        Scene { background, objects }
    }

    /// Checks that no two objects share a cell and no object has the background colour
    /// (the rules [`Scene::random`] keeps; [`crate::render`] draws any scene).
    pub fn validate(&self) -> Result<(), SceneError> {
        for (i, o) in self.objects.iter().enumerate() {
            if o.color == self.background {
                return Err(SceneError::ColorIsBackground(o.color));
            }
            if self.objects[..i].iter().any(|p| p.cell == o.cell) {
                return Err(SceneError::SharedCell(o.cell));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} background:", self.background)?;
        for (i, o) in self.objects.iter().enumerate() {
            write!(f, "{} {o}", if i == 0 { "" } else { ";" })?;
        }
        Ok(())
    }
}
