//! The one error type of the `hymba` library.

use thiserror::Error;

/// Everything that can go wrong in the model library, each variant naming what the user
/// has to fix (a config key, a tensor, a backend feature).
#[derive(Debug, Error)]
pub enum HymbaError {
    /// A config value is impossible; `key` is the HF `config.json` key to look at.
    #[error("invalid config: `{key}`: {reason}")]
    Config {
        /// The HF `config.json` key at fault.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `config.json` could not be parsed (missing key, wrong type, negative size, …).
    #[error("cannot parse config at `{key}`: {message}")]
    ConfigParse {
        /// Path of the offending key (`.` for the top level, e.g. for a missing key).
        key: String,
        /// The parser's message (it names a missing key).
        message: String,
    },
    /// A preset name that does not exist.
    #[error("unknown preset `{0}` (known: {known})", known = crate::config::PRESETS.join(", "))]
    UnknownPreset(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A backend named on the command line was not compiled into this binary.
    #[error("backend `{backend}` is not compiled in: rebuild with `--features {feature}`")]
    BackendNotCompiled {
        /// The backend asked for.
        backend: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// A backend name that does not exist.
    #[error("unknown backend `{0}` (expected ndarray, wgpu, cuda or cuda-raw)")]
    UnknownBackend(String),
    /// A checkpoint file cannot be used as a whole: not valid safetensors (e.g. truncated),
    /// a malformed `model.safetensors.index.json`, no weight file in the directory.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file (or directory) involved.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint's tensors do not fit the config; `problems` names every bad tensor
    /// (missing, unexpected, wrong shape or dtype), one line each.
    #[error(
        "checkpoint does not match its config ({} problem(s)):\n  {}",
        problems.len(),
        problems.join("\n  ")
    )]
    Weights {
        /// One line per bad tensor, naming it.
        problems: Vec<String>,
    },
    /// A model directory's `tokenizer_config.json` or `generation_config.json` is unreadable
    /// or names a token the model does not have.
    #[error(transparent)]
    HfFile(#[from] crate::hf::HfFileError),
    /// Bad input to generation or the forward pass (empty prompt, token id out of range, …).
    #[error("invalid input: {0}")]
    Input(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, HymbaError>;
