//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading tokenizers, corpora, shards and JSONL files.
///
/// Each variant names the file (and line, where there is one) so the binary can print a
/// single line that tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error on a named file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The `tokenizers` crate refused to load, train, encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tokenizer lacks a special token this crate needs (BOS or EOS).
    #[error("tokenizer has no {what} token (looked for {candidates})")]
    MissingSpecialToken {
        /// `"BOS"` or `"EOS"`.
        what: &'static str,
        /// The token strings that were looked for.
        candidates: String,
    },
    /// A shard file does not start with the shard magic bytes.
    #[error("{}: not a hymba token shard (magic {found:?}, expected {expected:?})", path.display())]
    BadMagic {
        /// The shard file.
        path: PathBuf,
        /// The first bytes found.
        found: [u8; 8],
        /// The magic this build writes.
        expected: [u8; 8],
    },
    /// A shard was written by a newer (or unknown) format version.
    #[error("{}: shard format version {found} is not supported (this build reads version {expected})", path.display())]
    BadVersion {
        /// The shard file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// A shard's dtype code is unknown, or differs from the one expected.
    #[error("{}: shard dtype {found} where {expected} was expected", path.display())]
    BadDtype {
        /// The shard file.
        path: PathBuf,
        /// What the header says (a code, or a dtype name).
        found: String,
        /// What was expected.
        expected: String,
    },
    /// A shard (or prepared data set) was made with a different tokenizer.
    #[error(
        "{}: tokenizer hash {found:016x} does not match the expected tokenizer {expected:016x} (data tokenized with another tokenizer?)",
        path.display()
    )]
    TokenizerMismatch {
        /// The shard file or manifest.
        path: PathBuf,
        /// The hash in the file.
        found: u64,
        /// The hash of the tokenizer in use.
        expected: u64,
    },
    /// A shard's length disagrees with the token count in its header.
    #[error("{}: shard header says {expected} tokens but the file holds {found}", path.display())]
    Truncated {
        /// The shard file.
        path: PathBuf,
        /// Token count from the header (or manifest).
        expected: u64,
        /// Token count the file's size allows.
        found: u64,
    },
    /// A file differs from the size or checksum recorded when it was written.
    #[error("{} is damaged: {reason}", path.display())]
    Damaged {
        /// The damaged file (or the checksum list that cannot be read).
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A token id does not fit the shard's dtype.
    #[error("token id {id} does not fit in a {dtype} shard")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The shard dtype name.
        dtype: &'static str,
    },
    /// A malformed or invalid JSONL record (only returned in strict mode).
    #[error("{source_name}:{line}: {message}")]
    Jsonl {
        /// File name (or another label) of the JSONL source.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A `manifest.json` is missing, unreadable or inconsistent.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An argument or record is invalid (e.g. `seq_len` 0, a chat with no assistant turn).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// Wraps an [`std::io::Error`] with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps an error from the `tokenizers` crate, with some context.
    pub(crate) fn tokenizer(context: &str, err: impl std::fmt::Display) -> Self {
        DataError::Tokenizer(format!("{context}: {err}"))
    }
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;
