//! `stride train-policy` and `generate --steps auto` end to end on a tiny random model: the
//! reward-table job shards and merges to the same policy as one run, resumes without redoing
//! finished blocks, refits from any folder holding the table's weights, the policy file is
//! validated on load, and --steps auto records its choice.

mod common;

use std::path::Path;

use common::{model, stride, temp_dir};

/// `stride train-policy` on the tiny model: 3 prompts x 2 seeds at 3 options, blocks of 2.
fn train_policy(out: &Path, extra: &[&str]) -> std::process::Output {
    stride()
        .args(["train-policy", "--quiet", "--model"])
        .arg(model())
        .args(["--prompt-count", "3", "--seeds", "2", "--options", "2,3,4", "--batch", "2"])
        .args(["--updates", "30", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string() + &stderr
}

#[test]
fn shards_merge_to_the_single_run_policy_and_resume_skips_done_blocks() {
    let root = temp_dir("policy-shards");
    let (single, sharded) = (root.join("single"), root.join("sharded"));
    let text = ok(train_policy(&single, &[]));
    assert!(text.contains("mean quality") && text.contains("policy:"), "{text}");
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(single.join("policy.json")).unwrap()).unwrap();
    assert_eq!(sidecar["config"]["options"], serde_json::json!([2, 3, 4]));
    assert_eq!(sidecar["prompts"], 3);

    let first = ok(train_policy(&sharded, &["--shard", "0/2"]));
    assert!(first.contains("stride train-policy merge"), "a shard says how to merge: {first}");
    assert!(!sharded.join("policy.json").exists(), "no policy before every block is done");
    let early = stride().args(["train-policy", "merge", "--out"]).arg(&sharded).output().unwrap();
    assert!(!early.status.success() && String::from_utf8_lossy(&early.stderr).contains("not done yet"));
    ok(train_policy(&sharded, &["--shard", "1/2"]));
    let weights = |dir: &Path| std::fs::read(dir.join("policy.safetensors")).unwrap();
    assert_eq!(weights(&single), weights(&sharded), "shards + merge = one run, bit for bit");

    // The table names its model by hash, not folder: it refits from a copy of the model
    // folder, and a folder with other weights (the bundled model, merge's default) is refused.
    let copy = root.join("model-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(model().join(file), copy.join(file)).unwrap();
    }
    let merge = |extra: &[&Path]| {
        let mut command = stride();
        command.args(["train-policy", "merge", "--updates", "30", "--out"]).arg(&sharded);
        for path in extra {
            command.arg("--model").arg(path);
        }
        command.output().unwrap()
    };
    let other = merge(&[]);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && stderr.contains("pass the --model it was made for"), "{stderr}");
    ok(merge(&[&copy]));
    assert_eq!(weights(&single), weights(&sharded), "refitted from the copied model folder");

    // Run again: every block is done, the policy is retrained from the cached table.
    let again = ok(train_policy(&single, &[]));
    assert!(again.contains("3 done, 0 to do"), "{again}");
    assert_eq!(weights(&single), weights(&sharded));
    // Changing a table setting is refused, naming it; a training setting is not.
    let refused = train_policy(&single, &["--cfg-scale", "2"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("other settings (cfg_scale)"));
    ok(train_policy(&single, &["--lambda", "2"]));

    // A record edited to claim another prompt is refused, naming the work folder.
    let records = single.join("work").join("records-0-of-1.jsonl");
    let text = std::fs::read_to_string(&records).unwrap();
    std::fs::write(&records, text.replacen("\"prompt\":0", "\"prompt\":2", 1)).unwrap();
    let edited = stride().args(["train-policy", "merge", "--out"]).arg(&single).output().unwrap();
    let stderr = String::from_utf8_lossy(&edited.stderr);
    assert!(!edited.status.success() && stderr.contains("does not fit the job"), "{stderr}");
}

#[test]
fn steps_auto_uses_the_policy_and_bad_policies_are_clear_errors() {
    let root = temp_dir("policy-auto");
    let policy = root.join("policy");
    // Trained at cfg 2: --steps auto then generates at cfg 2 unless told otherwise.
    ok(train_policy(&policy, &["--cfg-scale", "2"]));
    let generate = |policy: &Path, extra: &[&str]| {
        stride()
            .args(["generate", "a red circle", "--steps", "auto", "--seed", "1", "--model"])
            .arg(model())
            .arg("--policy")
            .arg(policy)
            .arg("-o")
            .arg(root.join("auto.png"))
            .args(extra)
            .output()
            .unwrap()
    };
    let text = ok(generate(&policy, &[]));
    let options = ["2", "3", "4"];
    let chosen = options.iter().find(|n| text.contains(&format!("step policy: {n} steps"))).expect(&text);
    let info = ok(stride().arg("info").arg(root.join("auto.png")).output().unwrap());
    assert!(info.contains(&format!("Steps: {chosen}")) && info.contains("Step policy"), "{info}");
    assert!(info.contains("CFG scale: 2,"), "the policy's guidance: {info}");
    let other = ok(generate(&policy, &["--cfg-scale", "4"]));
    assert!(other.contains("the step policy chose for dpmpp_2m + uniform at cfg 2"), "{other}");

    // A policy made for another model, with options its weights do not have, or with corrupt
    // weights: one-line errors.
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let sidecar = std::fs::read_to_string(policy.join("policy.json")).unwrap();
    let weights = std::fs::read(policy.join("policy.safetensors")).unwrap();
    let cases: [(&str, String, Vec<u8>, &str); 3] = [
        ("wrong model", sidecar.replace("\"sha256:", "\"sha256:0"), weights.clone(), "was trained for model"),
        (
            "wrong options",
            sidecar.replacen("\"options\": [\n      2,", "\"options\": [", 1),
            weights.clone(),
            "do not fit",
        ),
        (
            "corrupt weights",
            sidecar.clone(),
            weights[..weights.len() / 2].to_vec(),
            "not the weights policy.json was saved with",
        ),
    ];
    for (name, sidecar, weights, expected) in cases {
        std::fs::write(broken.join("policy.json"), sidecar).unwrap();
        std::fs::write(broken.join("policy.safetensors"), weights).unwrap();
        let out = generate(&broken, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{name}: {stderr}");
    }
    let missing = generate(&root.join("nowhere"), &[]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("stride train-policy"));
}

#[test]
fn bad_options_are_clear_errors() {
    let root = temp_dir("policy-errors");
    for (args, expected) in [
        (vec!["--options", "5"], "at least two"),
        (vec!["--reward", "best"], "linear or adadiff"),
        (vec!["--objective", "greedy"], "max-entropy"),
        (vec!["--seeds", "0"], "at least 1"),
        (vec!["--reward", "adadiff", "--top-k", "12"], "fewer than the 12 options"),
    ] {
        let out = stride()
            .args(["train-policy", "--quiet", "--model"])
            .arg(model())
            .args(["--prompt-count", "1", "--out"])
            .arg(root.join("out"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A distilled schedule made for other weights (here the bundled model's) is refused.
    let copy = root.join("model-with-stale-schedule");
    std::fs::create_dir_all(copy.join("schedules")).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(model().join(file), copy.join(file)).unwrap();
    }
    let bundled =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-shapes/schedules/dpmpp_2m-5.json");
    std::fs::copy(bundled, copy.join("schedules/dpmpp_2m-3.json")).unwrap();
    let out = stride()
        .args(["train-policy", "--quiet", "--model"])
        .arg(&copy)
        .args(["--prompt-count", "1", "--options", "2,3", "--scheduler", "distilled", "--out"])
        .arg(root.join("stale"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("was distilled for model"), "{stderr}");
}

/// `stride eval policy`: the rules built from the policy's own step counts spend exactly its
/// mean steps, the fixed count at the reference is the reference (PSNR capped at 60 dB), and
/// --write stores the table in policy.json.
#[test]
fn eval_policy_compares_rules_at_the_policys_budget() {
    let root = temp_dir("policy-eval");
    let policy = root.join("policy");
    ok(train_policy(&policy, &[]));
    let prompts = root.join("heldout.txt");
    std::fs::write(&prompts, "a red circle\na small blue square on a white background\ntwo crosses\n")
        .unwrap();
    let text = ok(stride()
        .args(["eval", "policy", "--model-dir"])
        .arg(model())
        .arg("--policy")
        .arg(&policy)
        .arg("--prompts")
        .arg(&prompts)
        .args(["--reference-steps", "4", "--write", "--plot"])
        .arg(root.join("plot.svg"))
        .output()
        .unwrap());
    let row = |prefix: &str| -> Vec<f64> {
        let line =
            text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}: {text}"));
        line.split_whitespace().rev().take(3).map(|v| v.parse().unwrap()).collect::<Vec<_>>()
    };
    // Columns, read from the right: PSNR, pass rate, mean steps.
    let policy_steps = row("(a) policy")[2];
    assert_eq!(row("(d) word count")[2], policy_steps, "{text}");
    assert_eq!(row("(e) random")[2], policy_steps, "{text}");
    assert_eq!(row("(c) fixed")[2], policy_steps.round(), "{text}");
    assert_eq!(row("(b) fixed 4")[0], 60.0, "the reference against itself: {text}");
    for prefix in ["(a)", "(b) fixed 2", "(b) fixed 3", "(c)", "(d)", "(e)"] {
        assert!((0.0..=1.0).contains(&row(prefix)[1]), "{prefix}: {text}");
    }
    assert!(std::fs::read_to_string(root.join("plot.svg")).unwrap().contains("<polyline"));
    let tradeoff = std::fs::read_to_string(root.join("plot_tradeoff.svg")).unwrap();
    assert!(tradeoff.contains("(a) policy") && tradeoff.contains("<circle"), "{tradeoff}");
    assert!(text.contains("targets, against fixed 4 (reference)"), "{text}");
    let sidecar = std::fs::read_to_string(policy.join("policy.json")).unwrap();
    assert!(sidecar.contains("\"heldout\"") && sidecar.contains("(e) random, same steps"), "{sidecar}");
}
