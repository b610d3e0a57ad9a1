//! Errors of the training library.

use thiserror::Error;

/// What can stop a training run, each with the thing the user has to fix.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The run config (file or override) is invalid.
    #[error("run config: {0}")]
    Config(String),
    /// No checkpoint can be resumed (none there, or none intact: the message says why).
    #[error("{0}")]
    NoCheckpoint(String),
    /// The model library refused (bad model config, bad input…).
    #[error(transparent)]
    Model(#[from] hymba::HymbaError),
    /// The data library refused (missing shards, wrong tokenizer…).
    #[error(transparent)]
    Data(#[from] hymba_datasets::DataError),
    /// Reading or writing a run file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error("loss is {loss} at step {step}; last good checkpoint: {last_checkpoint}")]
    NonFiniteLoss {
        /// The optimizer step.
        step: usize,
        /// The value.
        loss: f64,
        /// The newest checkpoint directory, or "none".
        last_checkpoint: String,
    },
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            message: e.to_string(),
        }
    }
}
