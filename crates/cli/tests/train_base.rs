//! `stride train-base` end to end: a run killed mid-way, interrupted (Ctrl-C), or stopped with
//! `--stop-at`, and resumed ends bit-identical to an uninterrupted one (tiny random
//! configuration, through the built binary).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{interrupt_once_started, stride, temp_dir};

const STEPS: u64 = 120;

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("train.json");
    let config = serde_json::json!({
        "model": {"vocab_size": 38, "max_tokens": 32, "text_dim": 32, "text_layers": 1, "text_heads": 2,
                  "dim": 32, "depth": 1, "heads": 2, "patch": 4, "image_size": 32, "channels": 3, "mlp_ratio": 2,
                      "arch": "unet", "levels": [8]},
        "steps": STEPS, "batch_size": 4, "lr": 1e-3, "warmup": 10, "weight_decay": 0.01,
        "ema_decay": 0.99, "cfg_dropout": 0.1, "seed": 3
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

fn checkpoint_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("checkpoint.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

#[test]
fn killed_interrupted_or_stopped_run_resumes_bit_identically() {
    let root = temp_dir("resume");
    let config = write_config(&root);
    let (straight, killed) = (root.join("straight"), root.join("killed"));
    let train = |out: &Path| {
        let mut cmd = stride();
        cmd.args(["train-base", "--quiet", "--checkpoint-minutes", "0", "--out"]).arg(out);
        cmd
    };

    let status = train(&straight).arg("--config").arg(&config).status().unwrap();
    assert!(status.success());
    assert_eq!(checkpoint_step(&straight), Some(STEPS));

    let mut child = train(&killed).arg("--config").arg(&config).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while checkpoint_step(&killed).is_none_or(|s| s < 5) {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint written");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stopped_at = checkpoint_step(&killed).unwrap();
    assert!(stopped_at < STEPS, "the run finished before it could be killed");

    let status = train(&killed).arg("--resume").status().unwrap();
    assert!(status.success());
    assert_eq!(checkpoint_step(&killed), Some(STEPS));
    let a = std::fs::read(straight.join("checkpoint.safetensors")).unwrap();
    let b = std::fs::read(killed.join("checkpoint.safetensors")).unwrap();
    assert!(a == b, "resumed run (killed at step {stopped_at}) differs from the uninterrupted one");

    // Ctrl-C: with no timed checkpoint due, the only one is written by the interrupt.
    let interrupted = root.join("interrupted");
    let mut command = stride();
    command.args(["train-base", "--quiet", "--checkpoint-minutes", "60", "--out"]).arg(&interrupted);
    // The handler is installed before this line is printed.
    let (status, rest) = interrupt_once_started(command.arg("--config").arg(&config), "training tiny-shapes");
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("--resume"), "the message says how to continue: {rest}");
    let stopped_at = checkpoint_step(&interrupted).expect("the interrupt wrote a checkpoint");
    assert!(stopped_at < STEPS, "the run finished before it could be interrupted");
    let status = train(&interrupted).arg("--resume").status().unwrap();
    assert!(status.success());
    let b = std::fs::read(interrupted.join("checkpoint.safetensors")).unwrap();
    assert!(a == b, "resumed run (interrupted at step {stopped_at}) differs from the uninterrupted one");

    // A chunk ended by --stop-at: the schedule still follows the full --steps.
    let chunked = root.join("chunked");
    let status = train(&chunked).arg("--config").arg(&config).args(["--stop-at", "40"]).status().unwrap();
    assert!(status.success());
    assert_eq!(checkpoint_step(&chunked), Some(40));
    let status = train(&chunked).arg("--resume").status().unwrap();
    assert!(status.success());
    let c = std::fs::read(chunked.join("checkpoint.safetensors")).unwrap();
    assert!(a == c, "a run stopped at step 40 and resumed differs from the uninterrupted one");
    let behind = train(&chunked).args(["--resume", "--stop-at", "10"]).output().unwrap();
    let err = String::from_utf8_lossy(&behind.stderr);
    assert!(!behind.status.success() && err.contains("already at step"), "{err}");
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let root = temp_dir("bad");
    let out = stride()
        .args(["train-base", "--quiet", "--resume", "--out"])
        .arg(root.join("none"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checkpoint.json") && !err.contains("panicked"), "{err}");

    std::fs::write(root.join("broken.json"), "{ not json").unwrap();
    let out = stride()
        .args(["train-base", "--quiet", "--out"])
        .arg(root.join("run"))
        .arg("--config")
        .arg(root.join("broken.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.json") && !err.contains("panicked"), "{err}");

    // A fresh run never overwrites another run's checkpoint; a negative or endless interval is
    // refused.
    let taken = root.join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("checkpoint.json"), "{}").unwrap();
    for (args, expected) in [
        (vec!["--out", taken.to_str().unwrap()], "already holds a training run"),
        (vec!["--out", root.join("new").to_str().unwrap(), "--checkpoint-minutes=-1"], ">= 0"),
        (vec!["--out", root.join("new").to_str().unwrap(), "--checkpoint-minutes=1e20"], ">= 0"),
        (vec!["--out", root.join("new").to_str().unwrap(), "--stop-at", "0"], "at least 1"),
    ] {
        let out = stride().args(["train-base", "--quiet"]).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(taken.join("checkpoint.json")).unwrap(), "{}");
}
