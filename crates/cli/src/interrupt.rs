//! Ctrl-C, or the SIGTERM a batch scheduler sends before it kills a job, asks a long job to stop
//! where nothing is lost: `train-base` writes its checkpoint after the step in flight, the block
//! jobs (`distill`, `train-policy`) stop after the block in flight. A second signal quits at
//! once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The exit status of a job stopped by a signal (128 + SIGINT, as shells report it).
pub const EXIT_STATUS: i32 = 130;

/// Routes the signals to [`requested`]; the commands that can stop cleanly call it first.
pub fn install(what_is_kept: &'static str) {
    let handler = move || {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            std::process::exit(EXIT_STATUS);
        }
        eprintln!("\ninterrupted: stopping after {what_is_kept} (interrupt again to quit at once)");
    };
    // Fails only when a handler is already set, which is then this one.
    let _ = ctrlc::set_handler(handler);
}

/// Whether a stop was asked for since [`install`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// A job stopped on request; `main` prints it without "error:" and exits with [`EXIT_STATUS`].
#[derive(Debug)]
pub struct Stopped(pub String);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stopped {}
