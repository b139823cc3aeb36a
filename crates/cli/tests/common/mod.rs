//! What the end-to-end tests share: the built binary, scratch folders and a tiny random
//! tiny-shapes model exported by `stride train-base` (the committed weights are not needed).

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

pub fn stride() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stride"))
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stride-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `command` with its stderr piped and sends it SIGINT (Ctrl-C) once a line of its stderr
/// starts with `started`; the exit status and the rest of its stderr.
pub fn interrupt_once_started(command: &mut Command, started: &str) -> (ExitStatus, String) {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with(started) {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the job ended before `{started}`");
    }
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    (status, rest)
}

/// A tiny model folder, made once per test binary.
pub fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let root = temp_dir("model");
        let config = root.join("train.json");
        let json = serde_json::json!({
            "model": {"vocab_size": 38, "max_tokens": 32, "text_dim": 32, "text_layers": 1, "text_heads": 2,
                      "dim": 32, "depth": 1, "heads": 2, "patch": 4, "image_size": 32, "channels": 3, "mlp_ratio": 2,
                      "arch": "unet", "levels": [8]},
            "steps": 2, "batch_size": 2, "lr": 1e-3, "warmup": 1, "weight_decay": 0.01,
            "ema_decay": 0.5, "cfg_dropout": 0.1, "seed": 1
        });
        std::fs::write(&config, json.to_string()).unwrap();
        let out = stride()
            .args(["train-base", "--quiet", "--out"])
            .arg(root.join("run"))
            .arg("--config")
            .arg(&config)
            .arg("--export")
            .arg(root.join("model"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        root.join("model")
    })
}
