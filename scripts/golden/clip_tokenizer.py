"""Reference data for stride's CLIP tokenizer built from a diffusers folder's vocab.json and
merges.txt (what Stable Diffusion repositories ship in tokenizer/ instead of tokenizer.json).

A small CLIP vocabulary is cut from OpenAI's BPE file (as packaged by open_clip) the way the
CLIP tokenizer builds its own: the 256 byte symbols, each with "</w>", the first MERGES merges,
then <|startoftext|> and <|endoftext|>. transformers' CLIPTokenizer (what diffusers loads)
encodes PROMPTS with those files; its ids are the expected values.

    pip install transformers==5.24.0 tokenizers==0.23.3
    pip download --no-deps open_clip_torch==3.3.0   # the wheel holds bpe_simple_vocab_16e6.txt.gz
    python3 scripts/golden/clip_tokenizer.py open_clip_torch-3.3.0-py3-none-any.whl

writes tests/golden/clip_toy/{vocab.json,merges.txt,expected.json}.
"""

import gzip
import json
import os
import sys
import zipfile

import transformers

MERGES = 3000
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden", "clip_toy")
PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A RED Circle,   above a blue square!!",
    "it's the cat's toy, isn't it? we'll see",
    "42 lighthouses at dusk, 1990s film photo",
    "caf\u00e9 na\u00efve \u2014 \u201cquoted\u201d \u00e9t\u00e9",
    "\u6771\u4eac\u306e\u591c \U0001f303 neon",
    "tabs\tand\nnewlines  between   words",
    "<|endoftext|> inside a prompt",
    "",
]


def bytes_to_unicode():
    """GPT-2's byte-to-symbol table, as CLIP's tokenizer uses it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
    bs += list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main(wheel):
    with zipfile.ZipFile(wheel) as z:
        text = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8")
    merges = [tuple(line.split()) for line in text.split("\n")[1 : MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(OUT, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = transformers.CLIPTokenizer(os.path.join(OUT, "vocab.json"), os.path.join(OUT, "merges.txt"))
    cases = [{"prompt": p, "ids": tok(p)["input_ids"]} for p in PROMPTS]
    expected = {
        "reference": f"transformers {transformers.__version__} CLIPTokenizer",
        "merges": MERGES,
        "cases": cases,
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    for c in cases:
        print(len(c["ids"]), c["prompt"][:40])


if __name__ == "__main__":
    main(sys.argv[1])
