//! Fault injection for the crash tests: `HYMBA_FAULT=POINT@STEP` makes the trainer fail at a
//! named point of step `STEP`, so that tests can crash it exactly where a real crash would
//! hurt most (between two files of a checkpoint, between two renames) instead of hoping a
//! timed `kill` lands there.
//!
//! Points ([`Fault`]): the checkpoint writer's stages (the process kills itself with
//! `SIGKILL`, as `kill -9` would) and `nan-loss` (the step's loss is replaced by NaN, to test
//! `on_nan`). Unset — the normal case — nothing happens, and release builds ignore it. A test
//! hook only, documented in `docs/reliability.md`; it is not a way to configure a run.

use std::sync::OnceLock;

/// The environment variable read once per process.
pub const FAULT_ENV: &str = "HYMBA_FAULT";

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A checkpoint stage, by the name [`crate::checkpoint`] gives it (`model-written`, …).
    Kill(&'static str),
    /// The step's loss becomes NaN.
    NanLoss,
}

/// `(point, step)` from `HYMBA_FAULT`, parsed once; `None` when unset or malformed.
fn armed() -> Option<&'static (String, usize)> {
    static ARMED: OnceLock<Option<(String, usize)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            // Only in builds with debug assertions (the test builds): a release binary, what
            // users run, ignores the variable.
            if !cfg!(debug_assertions) {
                return None;
            }
            let spec = std::env::var(FAULT_ENV).ok()?;
            let (point, step) = spec.split_once('@')?;
            Some((point.to_string(), step.parse().ok()?))
        })
        .as_ref()
}

/// Whether `fault` is armed for `step`.
pub fn hit(fault: Fault, step: usize) -> bool {
    let name = match fault {
        Fault::Kill(point) => point,
        Fault::NanLoss => "nan-loss",
    };
    armed().is_some_and(|(p, s)| p == name && *s == step)
}

/// Kills this process with `SIGKILL` if the checkpoint stage `point` of `step` is armed:
/// no destructor, no flush, exactly what `kill -9` (or a lost node) leaves behind.
pub fn kill_point(point: &'static str, step: usize) {
    if hit(Fault::Kill(point), step) {
        // SAFETY: sending a signal to this process touches no memory.
        #[cfg(unix)]
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // Elsewhere there is no SIGKILL: abort, which also skips destructors and flushing.
        #[cfg(not(unix))]
        std::process::abort();
        // The signal may take a moment to land: never continue past the point.
        #[allow(unreachable_code)]
        loop {
            std::thread::park();
        }
    }
}
