"""Recount the held-out split of the shapes world independently of the Rust code.

crates/shapes/tests/grammar.rs asserts that of the multi-phrase prompts in
models/tiny-shapes/heldout_prompts.txt, a given number reach training written in another
phrase order. This script re-implements the split (`stride_shapes::is_heldout`: FNV-1a over
the lower-cased words joined by single spaces, high bits mixed down, 1 in 16 held out) and the
canonical prompt text (`Request`'s Display), and prints the two counts.

    python3 scripts/golden/heldout_split.py    # prints: multi-phrase 340, seen in another order 314
"""

import itertools
import re
from pathlib import Path

MASK = (1 << 64) - 1


def words(text):
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    return [w.lower() for w in re.split(r"[\s,]+", text) if w]


def is_heldout(text):
    h = 0xCBF29CE484222325
    for i, w in enumerate(words(text)):
        for b in (b"" if i == 0 else b" ") + w.encode():
            h ^= b
            h = (h * 0x100000001B3) & MASK
    return (h ^ (h >> 29) ^ (h >> 47)) % 16 == 0


def split(text):
    """The object phrases and the background colour of a canonical prompt."""
    background = None
    m = re.search(r"(?:^|,? )on a (\w+) background$", text)
    if m:
        background, text = m.group(1), text[: m.start()]
    phrases = [p for p in re.split(r", | and ", text) if p] if text else []
    return phrases, background


def render(phrases, background):
    n = len(phrases)
    out = ""
    for i, p in enumerate(phrases):
        out += ("" if i == 0 else " and " if i + 1 == n else ", ") + p
    if background is not None:
        out += ("" if n == 0 else " " if n == 1 else ", ") + f"on a {background} background"
    return out


def main():
    path = Path(__file__).resolve().parents[2] / "models/tiny-shapes/heldout_prompts.txt"
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    multi = seen = 0
    for text in prompts:
        phrases, background = split(text)
        assert render(phrases, background) == text, text
        assert is_heldout(text), text
        if len(phrases) < 2:
            continue
        multi += 1
        if not all(is_heldout(render(list(p), background)) for p in itertools.permutations(phrases)):
            seen += 1
    print(f"multi-phrase {multi}, seen in another order {seen}")


if __name__ == "__main__":
    main()
