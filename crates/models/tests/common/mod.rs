//! Helpers shared by the tests that read golden reference files.

use serde_json::Value;

/// Parses `tests/golden/<name>` at the workspace root.
pub fn load_golden(name: &str) -> Value {
    let path = format!("{}/../../tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("golden file")).expect("valid JSON")
}

/// Every number in a (nested) JSON array, in order.
pub fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("expected numbers, got {other}"),
    }
}
