#!/usr/bin/env python3
"""Write tests/golden/randn.json: reference outputs of torch.randn on CPU.

The Rust `TorchGenerator` (crates/solvers/src/rng.rs) must reproduce these
bit for bit; crates/solvers/tests/torch_randn.rs checks it.

Every value is stored as its IEEE bit pattern (u32 for float32, u64 for
float64), never as a decimal, so the comparison is exact.

Small tensors are stored in full. For large ones (numel > 128) only the first
64 and last 64 bit patterns are stored, plus `fnv1a64`: the 64-bit FNV-1a hash
(offset basis 0xcbf29ce484222325, prime 0x100000001b3) of the little-endian
bytes of every bit pattern in order (4 bytes per float32, 8 per float64),
written as a 16-digit lower-case hex string. The test recomputes that hash, so
every value is still checked.

torch's float32 path for numel >= 16 depends on the CPU kernel it dispatches
to; the goldens are for the AVX2 kernel, which torch also uses on AVX512 CPUs.
The script refuses to run elsewhere rather than write goldens the Rust code is
not meant to match.

Usage (from the repository root): python3 scripts/golden/randn.py
"""

import json
import os

import torch

SEEDS = [0, 1, 42, 1234567]
SHAPES = [(1,), (7,), (16,), (17,), (4, 64, 64)]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
FULL_LIMIT = 128
EDGE = 64

# Successive calls on one seeded generator. The scalar path (numel < 16)
# caches a second Box-Muller sample in the generator; these sequences check
# that the cache carries across calls, across dtypes, and past an intervening
# numel >= 16 call (which does not touch it).
SEQUENCES = [
    {"seed": 0, "calls": [(7, "float32"), (17, "float32")]},
    {"seed": 42, "calls": [(1, "float32"), (16, "float32"), (1, "float32"),
                           (5, "float32"), (33, "float32"), (3, "float32")]},
    {"seed": 1, "calls": [(3, "float32"), (3, "float64"), (20, "float32"),
                          (1, "float64"), (1, "float32")]},
    {"seed": 1234567, "calls": [(7, "float64"), (17, "float64"), (3, "float64")]},
]

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def bit_patterns(t):
    """IEEE bit patterns of a flattened tensor, as Python ints."""
    flat = t.contiguous().view(-1)
    if t.dtype == torch.float32:
        return [v & 0xFFFFFFFF for v in flat.view(torch.int32).tolist()]
    if t.dtype == torch.float64:
        return [v & 0xFFFFFFFFFFFFFFFF for v in flat.view(torch.int64).tolist()]
    raise ValueError(t.dtype)


def fnv1a64(bits, width):
    h = FNV_OFFSET
    for v in bits:
        for byte in v.to_bytes(width, "little"):
            h ^= byte
            h = (h * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def encode(t):
    bits = bit_patterns(t)
    if len(bits) <= FULL_LIMIT:
        return {"bits": bits}
    width = 4 if t.dtype == torch.float32 else 8
    return {"head": bits[:EDGE], "tail": bits[-EDGE:], "fnv1a64": fnv1a64(bits, width)}


def main():
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        raise SystemExit(f"CPU capability {capability}: torch would not use its AVX2 "
                         "normal kernel here; refusing to write goldens")

    cases = []
    for dtype_name, dtype in DTYPES.items():
        for seed in SEEDS:
            for shape in SHAPES:
                torch.manual_seed(seed)
                t = torch.randn(shape, dtype=dtype)
                case = {"seed": seed, "shape": list(shape), "dtype": dtype_name,
                        "numel": t.numel()}
                case.update(encode(t))
                cases.append(case)

    sequences = []
    for seq in SEQUENCES:
        torch.manual_seed(seq["seed"])
        calls = []
        for numel, dtype_name in seq["calls"]:
            t = torch.randn(numel, dtype=DTYPES[dtype_name])
            call = {"numel": numel, "dtype": dtype_name}
            call.update(encode(t))
            calls.append(call)
        sequences.append({"seed": seq["seed"], "calls": calls})

    doc = {
        "about": "torch.manual_seed(seed); torch.randn(...) on CPU, as IEEE bit patterns. "
                 "Written by scripts/golden/randn.py; see it for the format.",
        "torch_version": torch.__version__,
        "cpu_capability": capability,
        "cases": cases,
        "sequences": sequences,
    }

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "tests", "golden", "randn.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        # One case per line keeps the file small yet diffable.
        f.write("{\n")
        for key in ("about", "torch_version", "cpu_capability"):
            f.write(f"  {json.dumps(key)}: {json.dumps(doc[key])},\n")
        for key in ("cases", "sequences"):
            f.write(f"  {json.dumps(key)}: [\n")
            items = doc[key]
            for i, item in enumerate(items):
                sep = "," if i + 1 < len(items) else ""
                f.write(f"    {json.dumps(item, separators=(',', ':'))}{sep}\n")
            f.write("  ]" + ("," if key == "cases" else "") + "\n")
        f.write("}\n")
    json.load(open(path))  # sanity: the hand-assembled layout is valid JSON
    print(f"wrote {path}: {len(cases)} cases, {len(sequences)} sequences")


if __name__ == "__main__":
    main()
