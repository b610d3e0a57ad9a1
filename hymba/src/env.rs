//! The process environment variables the project reads, and the functions that read them.
//!
//! Every choice of a run — backend, device, precision, TF32, memory mode, matmul, profiling —
//! is a command-line flag or a run-config field, so that a run is described by what was
//! typed and what its config file says. The environment is left for settings of the
//! machine rather than of a run:
//!
//! | variable | read by | effect |
//! |---|---|---|
//! | `HYMBA_KERNEL_CACHE` | [`kernel_cache`] | `DIR` moves the persistent cache of compiled CUDA kernels, `off` (or `0`, or empty) disables it; unset: the user's cache directory |
//! | `HYMBA_FAULT` | `hymba_train::fault` | test hook of the crash tests: `POINT@STEP` kills the trainer at a checkpoint stage, or makes a step's loss NaN (docs/reliability.md); builds with debug assertions only, release binaries ignore it |
//! | `XDG_CACHE_HOME`, `HOME` | [`user_cache_dir`] | where the user's cache directory is (`$XDG_CACHE_HOME`, else `~/.cache`) |
//!
//! The libraries underneath read their own (`CUBECL_*` for cubecl's configuration, the CUDA
//! driver's `CUDA_VISIBLE_DEVICES`, …); nothing here changes that.

use std::path::PathBuf;

/// The variable that moves or disables the CUDA kernel cache
/// (`crate::backend::kernel_cache`).
pub const KERNEL_CACHE: &str = "HYMBA_KERNEL_CACHE";

/// What [`KERNEL_CACHE`] asks of the CUDA kernel cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelCache {
    /// Unset: the cache lives in the default place.
    Default,
    /// `off`, `0` or empty: no cache.
    Off,
    /// Any other value: the cache lives in this directory.
    Dir(PathBuf),
}

/// Reads [`KERNEL_CACHE`].
pub fn kernel_cache() -> KernelCache {
    match std::env::var_os(KERNEL_CACHE) {
        None => KernelCache::Default,
        Some(v) if matches!(v.to_str(), Some("off" | "0" | "")) => KernelCache::Off,
        Some(v) => KernelCache::Dir(PathBuf::from(v)),
    }
}

/// The user's cache directory: `$XDG_CACHE_HOME`, else `~/.cache`; `None` when neither is
/// known.
pub fn user_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::home_dir().map(|h| h.join(".cache")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variable is read as documented (one test, as it sets the process environment).
    #[test]
    fn kernel_cache_reads_off_dir_and_unset() {
        let before = std::env::var_os(KERNEL_CACHE);
        let read = |value: Option<&str>| {
            // SAFETY: no other test of this crate reads or writes this variable.
            unsafe {
                match value {
                    Some(v) => std::env::set_var(KERNEL_CACHE, v),
                    None => std::env::remove_var(KERNEL_CACHE),
                }
            }
            kernel_cache()
        };
        assert_eq!(read(None), KernelCache::Default);
        for off in ["off", "0", ""] {
            assert_eq!(read(Some(off)), KernelCache::Off);
        }
        assert_eq!(
            read(Some("/tmp/kernels")),
            KernelCache::Dir(PathBuf::from("/tmp/kernels"))
        );
        // SAFETY: as above.
        unsafe {
            match before {
                Some(v) => std::env::set_var(KERNEL_CACHE, v),
                None => std::env::remove_var(KERNEL_CACHE),
            }
        }
    }
}
