//! The run's `experiment.log`, as burn-train writes it, without its cost on the hot path.
//!
//! burn-train's own installer (`FileApplicationLoggerInstaller`) filters events to INFO with
//! a per-layer `LevelFilter` wrapped in a closure filter that has no level hint. The closure
//! filter's missing hint leaves tracing's global maximum level at TRACE, and `log`'s with it:
//! every trace-level span and `log::trace!` on the hot path (burn-fusion's ops are
//! instrumented under its default `tracing` feature) then asks the subscriber at run time
//! whether it is enabled, on every call. [`ExperimentLog`] writes the same file with the same
//! filter (INFO and above; `wgpu`'s INFO chatter dropped), but says so in the filter's level
//! hint, so that those call sites are switched off once, when first seen. (On an H200 the
//! hymba-125m step time did not change measurably, 2026-12-04: the checks are cheap, but
//! they are not free and the hint is what tracing asks for.)

use std::path::{Path, PathBuf};

use burn::train::ApplicationLoggerInstaller;
use tracing_core::{Level, LevelFilter};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

/// Installs the subscriber that writes `experiment.log` (see the module docs).
#[derive(Debug, Clone)]
pub struct ExperimentLog {
    path: PathBuf,
}

impl ExperimentLog {
    /// A logger writing to `path` (created, or appended to, when installed).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
        }
    }
}

/// Whether an event or span at `level` from `module` goes to the log: INFO and above, less
/// `wgpu`'s INFO (it logs every adapter and pipeline), as burn-train's own filter.
fn keep(module: Option<&str>, level: &Level) -> bool {
    LevelFilter::INFO >= *level
        && !(module.is_some_and(|m| m.starts_with("wgpu")) && *level == Level::INFO)
}

impl ApplicationLoggerInstaller for ExperimentLog {
    fn install(&self) -> Result<(), String> {
        let (dir, file) = match (self.path.parent(), self.path.file_name()) {
            (Some(dir), Some(file)) => (dir, file),
            _ => return Err(format!("{}: not a file path", self.path.display())),
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let writer = tracing_appender::rolling::never(dir, file);
        let filter =
            filter_fn(|m| keep(m.module_path(), m.level())).with_max_level_hint(LevelFilter::INFO);
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(writer)
            .with_filter(filter);
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .map_err(|e| format!("experiment log: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_info_and_above_but_not_wgpu_info() {
        assert!(keep(Some("hymba_train::job"), &Level::INFO));
        assert!(keep(Some("hymba_train::job"), &Level::ERROR));
        assert!(keep(None, &Level::WARN));
        assert!(!keep(Some("burn_fusion::stream"), &Level::DEBUG));
        assert!(!keep(Some("cubecl_runtime::memory"), &Level::TRACE));
        assert!(!keep(Some("wgpu_core::device"), &Level::INFO));
        assert!(keep(Some("wgpu_core::device"), &Level::WARN));
    }
}
