//! The prompt grammar: structured requests, their text, the parser, the vocabulary, and
//! the generator's descriptions of a scene.
//! See the crate docs for the grammar.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::scene::{Cell, Color, Object, Scene, Shape, Size};

/// Every word the grammar uses, in a fixed order (the index of a word is its
/// [`token_ids`] id). Punctuation is not a word.
pub const VOCABULARY: [&str; 35] = [
    "a",
    "two",
    "three",
    "small",
    "large",
    "black",
    "white",
    "gray",
    "red",
    "green",
    "blue",
    "yellow",
    "cyan",
    "magenta",
    "circle",
    "square",
    "triangle",
    "cross",
    "shape",
    "circles",
    "squares",
    "triangles",
    "crosses",
    "shapes",
    "in",
    "at",
    "on",
    "the",
    "top",
    "bottom",
    "left",
    "right",
    "center",
    "and",
    "background",
];

/// The most words a prompt of the generator has (three fully described objects and a
/// background): `a small red circle in the top left, a ... and a ..., on a black background`.
pub const MAX_PROMPT_WORDS: usize = 29;

/// The most phrases a prompt may have (a 3x3 grid holds at most nine objects).
pub const MAX_PHRASES: usize = 9;

/// Why a prompt did not parse. Word positions count from 0 over the words of
/// [`words`] (punctuation excluded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty prompt")]
    Empty,
    #[error("unknown word {word:?} (word {position}); the known words are: {}", VOCABULARY.join(" "))]
    UnknownWord { word: String, position: usize },
    #[error("unexpected word {found:?} (word {position}); expected {expected}")]
    Unexpected { found: String, position: usize, expected: &'static str },
    #[error("prompt ends early; expected {expected}")]
    UnexpectedEnd { expected: &'static str },
    #[error("more than {MAX_PHRASES} object phrases")]
    TooManyPhrases,
}

/// How many objects a phrase asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Number {
    /// "a ...": at least one object fits (each "a" phrase needs an object of its own).
    A,
    /// "two ...": exactly two objects in the image fit.
    Two,
    /// "three ...": exactly three objects in the image fit.
    Three,
}

impl Number {
    /// The word: "a", "two" or "three".
    pub fn name(self) -> &'static str {
        match self {
            Number::A => "a",
            Number::Two => "two",
            Number::Three => "three",
        }
    }

    /// The exact count a counted phrase asks for; `None` for "a".
    pub fn count(self) -> Option<usize> {
        match self {
            Number::A => None,
            Number::Two => Some(2),
            Number::Three => Some(3),
        }
    }
}

/// One object phrase. `None` attributes are free (the prompt does not name them).
/// A `cell` with a counted [`Number`] cannot be written in the grammar: the text leaves
/// it out, and the checker ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Phrase {
    pub number: Number,
    pub size: Option<Size>,
    pub color: Option<Color>,
    pub shape: Option<Shape>,
    pub cell: Option<Cell>,
}

impl Phrase {
    /// A singular phrase naming every attribute of `o`.
    pub fn full(o: &Object) -> Phrase {
        Phrase {
            number: Number::A,
            size: Some(o.size),
            color: Some(o.color),
            shape: Some(o.shape),
            cell: Some(o.cell),
        }
    }

    /// Whether `o` has the size, colour and shape this phrase names (cell not considered).
    pub fn fits_kind(&self, o: &Object) -> bool {
        self.size.is_none_or(|s| s == o.size)
            && self.color.is_none_or(|c| c == o.color)
            && self.shape.is_none_or(|s| s == o.shape)
    }

    /// How many attributes the phrase names (size, colour, shape, cell, and the count of a
    /// counted phrase).
    pub fn richness(&self) -> usize {
        let counted = self.number != Number::A;
        let cell = self.cell.is_some() && !counted;
        [self.size.is_some(), self.color.is_some(), self.shape.is_some(), cell, counted]
            .iter()
            .filter(|&&b| b)
            .count()
    }
}

impl fmt::Display for Phrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counted = self.number != Number::A;
        f.write_str(self.number.name())?;
        if let Some(s) = self.size {
            write!(f, " {s}")?;
        }
        if let Some(c) = self.color {
            write!(f, " {c}")?;
        }
        let noun = match (self.shape, counted) {
            (Some(s), false) => s.name(),
            (Some(s), true) => s.plural(),
            (None, false) => "shape",
            (None, true) => "shapes",
        };
        write!(f, " {noun}")?;
        match self.cell {
            Some(c) if !counted => write!(f, " {}", c.phrase()),
            _ => Ok(()),
        }
    }
}

/// What a prompt asks for: object phrases and, optionally, the background colour.
/// `Display` writes the canonical prompt text, which [`Request::parse`] reads back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub phrases: Vec<Phrase>,
    pub background: Option<Color>,
}

impl Request {
    /// Parses a prompt of the grammar (see the [crate docs](crate)).
    pub fn parse(text: &str) -> Result<Request, ParseError> {
        Parser::new(text)?.prompt()
    }

    /// How many attributes the prompt names, over all phrases and the background: the
    /// prompt's richness (1 for "a circle", 13 for three fully described objects on a
    /// named background).
    pub fn richness(&self) -> usize {
        self.phrases.iter().map(Phrase::richness).sum::<usize>() + self.background.is_some() as usize
    }

    /// The request that names everything in `scene`: each object with size, colour, shape
    /// and cell, and the background.
    pub fn full(scene: &Scene) -> Request {
        Request {
            phrases: scene.objects.iter().map(Phrase::full).collect(),
            background: Some(scene.background),
        }
    }
}

impl FromStr for Request {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Request, ParseError> {
        Request::parse(s)
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.phrases.len();
        for (i, p) in self.phrases.iter().enumerate() {
            let sep = match i {
                0 => "",
                _ if i + 1 == n => " and ",
                _ => ", ",
            };
            write!(f, "{sep}{p}")?;
        }
        if let Some(bg) = self.background {
            let sep = match n {
                0 => "",
                1 => " ",
                _ => ", ",
            };
            write!(f, "{sep}on a {bg} background")?;
        }
        Ok(())
    }
}

/// A prompt: its text and the request it encodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prompt {
    pub text: String,
    pub request: Request,
}

impl Prompt {
    /// Parses `text`, keeping it as given.
    pub fn parse(text: &str) -> Result<Prompt, ParseError> {
        Ok(Prompt { text: text.to_string(), request: Request::parse(text)? })
    }

    /// Writes `scene` at the given level of detail (see [`Detail`]). The prompt is true
    /// of the scene.
    pub fn describe<R: Rng + ?Sized>(scene: &Scene, detail: Detail, rng: &mut R) -> Prompt {
        Prompt::from(describe(scene, detail, rng))
    }
}

impl From<Request> for Prompt {
    fn from(request: Request) -> Prompt {
        Prompt { text: request.to_string(), request }
    }
}

impl fmt::Display for Prompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How much of a scene a generated prompt names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detail {
    /// One object (shape and colour, or just one of them), or one count: "a red circle",
    /// "a circle", "a red shape", "two green circles", "three circles", "two red shapes".
    /// No size, position or background.
    Terse,
    /// Some of the objects, each attribute named or not at random (shape 0.8, colour 0.7,
    /// size 0.4, position 0.4), background with probability 0.3; objects sharing shape and
    /// colour may be counted.
    Partial,
    /// Every object with shape and colour, size and position each with probability 0.6,
    /// background with probability 0.7; objects sharing shape and colour may be counted.
    Rich,
    /// Everything: every object with size, colour, shape and position, and the background.
    Full,
}

impl Detail {
    /// All levels, terse to full.
    pub const ALL: [Detail; 4] = [Detail::Terse, Detail::Partial, Detail::Rich, Detail::Full];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Detail::Terse => "terse",
            Detail::Partial => "partial",
            Detail::Rich => "rich",
            Detail::Full => "full",
        }
    }
}

/// The counted phrase for the objects of `scene` with the given size, colour and shape,
/// if there are two or three of them.
fn count_phrase(
    scene: &Scene,
    size: Option<Size>,
    color: Option<Color>,
    shape: Option<Shape>,
) -> Option<Phrase> {
    let p = Phrase { number: Number::A, size, color, shape, cell: None };
    let number = match scene.objects.iter().filter(|q| p.fits_kind(q)).count() {
        2 => Number::Two,
        3 => Number::Three,
        _ => return None,
    };
    Some(Phrase { number, ..p })
}

fn describe<R: Rng + ?Sized>(scene: &Scene, detail: Detail, rng: &mut R) -> Request {
    let objs = &scene.objects;
    if objs.is_empty() {
        // Nothing to name but the background (the generator never makes such a scene).
        return Request { phrases: Vec::new(), background: Some(scene.background) };
    }
    let shares_kind =
        |o: &Object| objs.iter().filter(|q| q.shape == o.shape && q.color == o.color).count() > 1;
    if detail == Detail::Terse {
        let o = objs[rng.random_range(0..objs.len())];
        if rng.random_bool(0.4) {
            // Count the objects sharing o's shape and colour, or just one of the two.
            let (color, shape) = match rng.random_range(0..4) {
                0 | 1 => (Some(o.color), Some(o.shape)),
                2 => (None, Some(o.shape)),
                _ => (Some(o.color), None),
            };
            if let Some(p) = count_phrase(scene, None, color, shape) {
                return Request { phrases: vec![p], background: None };
            }
        }
        let (color, shape) = match rng.random_range(0..20) {
            0..14 => (Some(o.color), Some(o.shape)),
            14..17 => (None, Some(o.shape)),
            _ => (Some(o.color), None),
        };
        let p = Phrase { number: Number::A, size: None, color, shape, cell: None };
        return Request { phrases: vec![p], background: None };
    }

    // Which objects to mention, in a random order.
    let mut order: Vec<usize> = (0..objs.len()).collect();
    order.shuffle(rng);
    if detail == Detail::Partial {
        let k = rng.random_range(1..=objs.len());
        order.truncate(k);
    }
    // Objects sharing shape and colour are either all named by one counted phrase or
    // each by its own (never both: "a red circle and two red circles" reads as three).
    enum Group {
        Each,
        Count(Phrase),
        Said,
    }
    let mut groups: Vec<((Shape, Color), Group)> = Vec::new();
    if detail != Detail::Full {
        for o in objs {
            let kind = (o.shape, o.color);
            if shares_kind(o) && !groups.iter().any(|g| g.0 == kind) {
                let count = rng.random_bool(0.5);
                let same_size = objs.iter().filter(|q| (q.shape, q.color) == kind).all(|q| q.size == o.size);
                let with_size = same_size && rng.random_bool(0.5);
                let p = count_phrase(scene, with_size.then_some(o.size), Some(o.color), Some(o.shape));
                groups.push((kind, p.filter(|_| count).map_or(Group::Each, Group::Count)));
            }
        }
    }
    let mut phrases = Vec::new();
    for &i in &order {
        let o = objs[i];
        match groups.iter_mut().find(|g| g.0 == (o.shape, o.color)) {
            Some((_, g @ Group::Count(_))) => {
                // The counted phrase goes where the group is first mentioned.
                if let Group::Count(p) = std::mem::replace(g, Group::Said) {
                    phrases.push(p);
                }
                continue;
            }
            Some((_, Group::Said)) => continue,
            _ => {}
        }
        let p = match detail {
            Detail::Full => Phrase::full(&o),
            Detail::Rich => Phrase {
                number: Number::A,
                size: rng.random_bool(0.6).then_some(o.size),
                color: Some(o.color),
                shape: Some(o.shape),
                cell: rng.random_bool(0.6).then_some(o.cell),
            },
            _ => loop {
                let p = Phrase {
                    number: Number::A,
                    size: rng.random_bool(0.4).then_some(o.size),
                    color: rng.random_bool(0.7).then_some(o.color),
                    shape: rng.random_bool(0.8).then_some(o.shape),
                    cell: rng.random_bool(0.4).then_some(o.cell),
                };
                if p.richness() > 0 {
                    break p;
                }
            },
        };
        phrases.push(p);
    }
    let p_bg = match detail {
        Detail::Partial => 0.3,
        Detail::Rich => 0.7,
        _ => 1.0,
    };
    let background = rng.random_bool(p_bg).then_some(scene.background);
    Request { phrases, background }
}

/// Splits a prompt into vocabulary words: lower-cased, split at white space and commas, a
/// final full stop dropped. Fails on an empty prompt or a word outside [`VOCABULARY`].
pub fn words(text: &str) -> Result<Vec<&'static str>, ParseError> {
    let text = text.trim();
    let text = text.strip_suffix('.').unwrap_or(text);
    let mut out = Vec::new();
    for (position, raw) in
        text.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()).enumerate()
    {
        let w = raw.to_ascii_lowercase();
        match VOCABULARY.iter().find(|&&v| v == w) {
            Some(v) => out.push(*v),
            None => return Err(ParseError::UnknownWord { word: raw.to_string(), position }),
        }
    }
    if out.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(out)
}

/// The prompt's words as indices into [`VOCABULARY`] (see [`words`]).
pub fn token_ids(text: &str) -> Result<Vec<u32>, ParseError> {
    Ok(words(text)?
        .into_iter()
        .map(|w| VOCABULARY.iter().position(|&v| v == w).unwrap_or(0) as u32)
        .collect())
}

struct Parser {
    words: Vec<&'static str>,
    pos: usize,
}

const EXPECT_PHRASE: &str = "\"a\", \"two\", \"three\" or \"on a <colour> background\"";
const EXPECT_NOUN: &str = "a size, a colour or a shape noun";
const EXPECT_AFTER: &str = "\"and\", another phrase, \"on a <colour> background\" or the end";

impl Parser {
    fn new(text: &str) -> Result<Parser, ParseError> {
        Ok(Parser { words: words(text)?, pos: 0 })
    }

    fn peek(&self) -> Option<&'static str> {
        self.words.get(self.pos).copied()
    }

    fn peek2(&self) -> Option<&'static str> {
        self.words.get(self.pos + 1).copied()
    }

    fn next(&mut self, expected: &'static str) -> Result<&'static str, ParseError> {
        let w = self.words.get(self.pos).copied().ok_or(ParseError::UnexpectedEnd { expected })?;
        self.pos += 1;
        Ok(w)
    }

    fn unexpected(&self, expected: &'static str) -> ParseError {
        match self.peek() {
            Some(w) => ParseError::Unexpected { found: w.to_string(), position: self.pos, expected },
            None => ParseError::UnexpectedEnd { expected },
        }
    }

    fn expect(&mut self, word: &'static str, expected: &'static str) -> Result<(), ParseError> {
        if self.peek() == Some(word) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn prompt(mut self) -> Result<Request, ParseError> {
        let mut phrases = Vec::new();
        let mut background = None;
        if self.peek() == Some("on") {
            // A background alone.
            self.pos += 1;
            self.expect("a", "\"a\"")?;
            background = Some(self.background_color()?);
            return Ok(Request { phrases, background });
        }
        loop {
            if phrases.len() == MAX_PHRASES {
                return Err(ParseError::TooManyPhrases);
            }
            phrases.push(self.phrase()?);
            match (self.peek(), self.peek2()) {
                (None, _) => break,
                (Some("and"), _) => {
                    self.pos += 1;
                }
                (Some("on"), Some("a")) => {
                    self.pos += 2;
                    background = Some(self.background_color()?);
                    break;
                }
                (Some("a" | "two" | "three"), _) => {}
                _ => return Err(self.unexpected(EXPECT_AFTER)),
            }
        }
        Ok(Request { phrases, background })
    }

    /// `<colour> background` and the end of the prompt.
    fn background_color(&mut self) -> Result<Color, ParseError> {
        let c = self.next("a colour")?;
        let color = Color::from_str(c).map_err(|_| ParseError::Unexpected {
            found: c.to_string(),
            position: self.pos - 1,
            expected: "a colour",
        })?;
        self.expect("background", "\"background\"")?;
        if self.peek().is_some() {
            return Err(self.unexpected("the end of the prompt after the background"));
        }
        Ok(color)
    }

    fn phrase(&mut self) -> Result<Phrase, ParseError> {
        let number = match self.peek() {
            Some("a") => Number::A,
            Some("two") => Number::Two,
            Some("three") => Number::Three,
            _ => return Err(self.unexpected(EXPECT_PHRASE)),
        };
        self.pos += 1;
        let counted = number != Number::A;
        let mut size = None;
        if let Some(s) = self.peek().and_then(|w| Size::from_str(w).ok()) {
            size = Some(s);
            self.pos += 1;
        }
        let mut color = None;
        if let Some(c) = self.peek().and_then(|w| Color::from_str(w).ok()) {
            color = Some(c);
            self.pos += 1;
        }
        let nouns = if counted {
            ["circles", "squares", "triangles", "crosses", "shapes"]
        } else {
            ["circle", "square", "triangle", "cross", "shape"]
        };
        let expected = if counted {
            "a plural shape noun (circles, squares, triangles, crosses, shapes)"
        } else {
            "a shape noun (circle, square, triangle, cross, shape)"
        };
        let expected = if size.is_none() && color.is_none() { EXPECT_NOUN } else { expected };
        let shape = match self.peek().and_then(|w| nouns.iter().position(|&n| n == w)) {
            Some(4) => None,
            Some(k) => Some(Shape::ALL[k]),
            None => return Err(self.unexpected(expected)),
        };
        self.pos += 1;
        let mut cell = None;
        if !counted {
            match (self.peek(), self.peek2()) {
                (Some("in" | "at"), _) | (Some("on"), Some("the")) => cell = Some(self.location()?),
                _ => {}
            }
        }
        Ok(Phrase { number, size, color, shape, cell })
    }

    fn location(&mut self) -> Result<Cell, ParseError> {
        const WHERE: &str = "a location (\"in the top left\", \"at the top\", \"on the left\", ...)";
        let start = self.pos;
        let prep = self.next(WHERE)?;
        self.expect("the", "\"the\"")?;
        let first = self.next(WHERE)?;
        let second = match (first, self.peek()) {
            ("top" | "bottom", Some(w @ ("left" | "right"))) => {
                self.pos += 1;
                Some(w)
            }
            _ => None,
        };
        let cell = match (prep, first, second) {
            ("in", "top", Some("left")) => Cell::TopLeft,
            ("at", "top", None) => Cell::Top,
            ("in", "top", Some("right")) => Cell::TopRight,
            ("on", "left", None) => Cell::Left,
            ("in", "center", None) => Cell::Center,
            ("on", "right", None) => Cell::Right,
            ("in", "bottom", Some("left")) => Cell::BottomLeft,
            ("at", "bottom", None) => Cell::Bottom,
            ("in", "bottom", Some("right")) => Cell::BottomRight,
            _ => {
                return Err(ParseError::Unexpected {
                    found: self.words[start..self.pos].join(" "),
                    position: start,
                    expected: WHERE,
                })
            }
        };
        Ok(cell)
    }
}

/// Whether a prompt belongs to the held-out set: a fixed 1 in 16 of all prompt texts,
/// chosen by a stable hash (FNV-1a, 64 bit) of its words (lower case, single spaces, no
/// punctuation), so the split does not depend on any seed. Training samples
/// ([`crate::World::sample`]) never have a held-out prompt; the evaluation set
/// ([`crate::World::heldout_prompts`]) has only held-out prompts. Text that is not a
/// prompt of the grammar is not held out.
pub fn is_heldout(text: &str) -> bool {
    let Ok(ws) = words(text) else { return false };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, w) in ws.iter().enumerate() {
        let bytes = if i == 0 { &[][..] } else { &b" "[..] };
        for &b in bytes.iter().chain(w.as_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Mix the high bits down: FNV's low bits are weak on short inputs.
    (h ^ (h >> 29) ^ (h >> 47)).is_multiple_of(16)
}

/// Whether the request is held out in every order of its phrases. [`is_heldout`] splits
/// texts, and the generator names a scene's objects in a random order, so a held-out
/// prompt's request can reach training written in another order; this tells the prompts
/// whose request training never saw in any wording.
pub fn is_heldout_in_every_order(request: &Request) -> bool {
    fn every_order(phrases: &mut Vec<Phrase>, k: usize, request: &Request, held: &mut bool) {
        if !*held {
            return;
        }
        if k == phrases.len() {
            let text = Request { phrases: phrases.clone(), background: request.background }.to_string();
            *held = is_heldout(&text);
            return;
        }
        for i in k..phrases.len() {
            phrases.swap(k, i);
            every_order(phrases, k + 1, request, held);
            phrases.swap(k, i);
        }
    }
    let mut held = true;
    every_order(&mut request.phrases.clone(), 0, request, &mut held);
    held
}

/// Error reading a prompts file.
#[derive(Debug, thiserror::Error)]
pub enum PromptsFileError {
    // The causes are in the messages, not `#[source]`s: callers that print the chain would
    // show them twice.
    #[error("reading {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}:{line}: {error}")]
    Parse { path: String, line: usize, error: ParseError },
}

/// Parses prompts, one a line. Blank lines, lines starting with `#` and a leading byte-order
/// mark are skipped; `line` numbers in errors count from 1. The text of each prompt is the
/// trimmed line.
pub fn parse_prompts(text: &str) -> Result<Vec<Prompt>, (usize, ParseError)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(Prompt::parse(line).map_err(|e| (i + 1, e))?);
    }
    Ok(out)
}

/// Reads a prompts file (see [`parse_prompts`]).
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>, PromptsFileError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|error| PromptsFileError::Io { path: shown.clone(), error })?;
    parse_prompts(&text).map_err(|(line, error)| PromptsFileError::Parse { path: shown, line, error })
}

/// Writes prompts one a line (their `text`, newlines replaced by spaces), atomically:
/// to a temporary file beside `path`, then renamed over it.
pub fn write_prompts(path: &Path, prompts: &[Prompt]) -> std::io::Result<()> {
    let mut text = String::new();
    for p in prompts {
        text.push_str(&p.text.replace(['\n', '\r'], " "));
        text.push('\n');
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
