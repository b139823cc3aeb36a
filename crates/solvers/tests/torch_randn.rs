//! `TorchGenerator` must reproduce `torch.manual_seed(seed); torch.randn(..)`
//! on CPU bit for bit.
//!
//! Expected values come from `tests/golden/randn.json`, written by
//! `scripts/golden/randn.py` from PyTorch's own CPU generator. The tolerance
//! is zero: every value is compared by its IEEE bit pattern. Large tensors are
//! stored as head, tail and an FNV-1a hash of all bit patterns (see the
//! script), which this test recomputes, so every value is still checked.

use serde_json::Value;
use stride_solvers::rng::TorchGenerator;

fn golden() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/randn.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("randn.json is not valid JSON")
}

/// Draws `numel` values of `dtype` and returns their bit patterns together
/// with the byte width of one value.
fn draw(rng: &mut TorchGenerator, numel: usize, dtype: &str) -> (Vec<u64>, usize) {
    match dtype {
        "float32" => {
            let values = rng.randn(numel);
            (values.iter().map(|v| u64::from(v.to_bits())).collect(), 4)
        }
        "float64" => {
            let values = rng.randn_f64(numel);
            (values.iter().map(|v| v.to_bits()).collect(), 8)
        }
        other => panic!("unknown dtype {other}"),
    }
}

/// 64-bit FNV-1a over the little-endian bytes of each bit pattern, as in
/// `scripts/golden/randn.py`.
fn fnv1a64(bits: &[u64], width: usize) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for v in bits {
        for byte in &v.to_le_bytes()[..width] {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn u64_array(v: &Value, key: &str) -> Vec<u64> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("missing array {key}"))
        .iter()
        .map(|x| x.as_u64().expect("bit pattern is not a u64"))
        .collect()
}

/// Compares drawn bit patterns with one golden entry; returns a description
/// of the first difference, if any.
fn compare(expected: &Value, got: &[u64], width: usize) -> Option<String> {
    let numel = expected["numel"].as_u64().expect("numel") as usize;
    if got.len() != numel {
        return Some(format!("length {} != {numel}", got.len()));
    }
    let first_diff = |want: &[u64], have: &[u64], offset: usize| {
        want.iter()
            .zip(have)
            .position(|(w, h)| w != h)
            .map(|i| format!("index {}: expected bits {:#x}, got {:#x}", offset + i, want[i], have[i]))
    };
    if expected.get("bits").is_some() {
        return first_diff(&u64_array(expected, "bits"), got, 0);
    }
    let head = u64_array(expected, "head");
    let tail = u64_array(expected, "tail");
    if let Some(d) = first_diff(&head, &got[..head.len()], 0) {
        return Some(d);
    }
    let tail_start = numel - tail.len();
    if let Some(d) = first_diff(&tail, &got[tail_start..], tail_start) {
        return Some(d);
    }
    let want_hash = expected["fnv1a64"].as_str().expect("fnv1a64");
    let got_hash = fnv1a64(got, width);
    (want_hash != got_hash).then(|| format!("fnv1a64 {got_hash} != {want_hash}"))
}

#[test]
fn randn_matches_torch_bit_for_bit() {
    let golden = golden();
    let cases = golden["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let seed = case["seed"].as_u64().expect("seed");
        let dtype = case["dtype"].as_str().expect("dtype");
        let numel = case["numel"].as_u64().expect("numel") as usize;
        let mut rng = TorchGenerator::new(seed);
        let (got, width) = draw(&mut rng, numel, dtype);
        if let Some(diff) = compare(case, &got, width) {
            failures.push(format!("seed {seed}, shape {}, {dtype}: {diff}", case["shape"]));
        }
    }
    assert!(failures.is_empty(), "{} case(s) differ from torch:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn successive_randn_calls_continue_torch_stream() {
    let golden = golden();
    let sequences = golden["sequences"].as_array().expect("sequences");
    assert!(!sequences.is_empty());
    let mut failures = Vec::new();
    for seq in sequences {
        let seed = seq["seed"].as_u64().expect("seed");
        // One generator for the whole sequence, like torch's default one.
        let mut rng = TorchGenerator::new(seed);
        for (i, call) in seq["calls"].as_array().expect("calls").iter().enumerate() {
            let dtype = call["dtype"].as_str().expect("dtype");
            let numel = call["numel"].as_u64().expect("numel") as usize;
            let (got, width) = draw(&mut rng, numel, dtype);
            if let Some(diff) = compare(call, &got, width) {
                failures.push(format!("seed {seed}, call {i} (randn({numel}), {dtype}): {diff}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} call(s) differ from torch:\n{}", failures.len(), failures.join("\n"));
}
