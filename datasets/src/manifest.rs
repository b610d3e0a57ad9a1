//! `manifest.json`: what a prepared data folder holds (splits, shards, token counts, the
//! tokenizer), written by `prepare` and read by every consumer of the shards.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::{self, FileSum};
use crate::error::{DataError, Result};
use crate::shard::TokenDtype;
use crate::tokenizer::Tokenizer;

/// File name of the manifest inside a prepared data folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the tokenizer copy inside a prepared data folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Version of the manifest layout.
pub const MANIFEST_VERSION: u32 = 1;

/// A split of a prepared data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training tokens.
    Train,
    /// Held-out tokens (whole documents, chosen by a seeded hash of their text).
    Val,
}

impl Split {
    /// `"train"` or `"val"` (also the shard file prefix).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How plain-text inputs are cut into documents (JSONL inputs: one line, one document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocMode {
    /// Blocks of non-blank lines separated by blank lines.
    #[default]
    Paragraph,
    /// Every non-blank line.
    Line,
    /// The whole file.
    File,
}

/// The tokenizer a data set was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// The tokenizer copy, relative to the manifest's folder.
    pub file: String,
    /// Where it came from (the `--tokenizer` argument).
    pub source: String,
    /// [`Tokenizer::hash`], as 16 hex digits.
    #[serde(with = "hex_u64")]
    pub hash: u64,
    /// [`Tokenizer::vocab_size`].
    pub vocab_size: usize,
    /// BOS id.
    pub bos_id: u32,
    /// EOS id (the document separator).
    pub eos_id: u32,
    /// PAD id.
    pub pad_id: u32,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name, relative to the manifest's folder.
    pub file: String,
    /// Tokens in the shard.
    pub tokens: u64,
    /// The file's size and checksum, checked when the shard is opened (absent in manifests
    /// written before checksums were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<FileSum>,
}

/// One split: its shards in stream order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Documents in the split.
    pub documents: u64,
    /// Tokens in the split (sum over shards).
    pub tokens: u64,
    /// Shards, in the order their tokens are concatenated.
    pub shards: Vec<ShardInfo>,
}

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub format_version: u32,
    /// The tokenizer.
    pub tokenizer: TokenizerInfo,
    /// Token storage type of every shard.
    pub dtype: TokenDtype,
    /// How each document is laid out in the stream.
    pub document_layout: String,
    /// How plain-text inputs were cut into documents.
    pub doc_mode: DocMode,
    /// Seed of the train/val assignment.
    pub seed: u64,
    /// Requested fraction of documents in `val`.
    pub val_fraction: f64,
    /// The inputs, as given.
    pub inputs: Vec<String>,
    /// Malformed JSONL lines skipped (non-strict mode).
    pub skipped_lines: u64,
    /// The training split.
    pub train: SplitInfo,
    /// The validation split.
    pub val: SplitInfo,
}

impl Manifest {
    /// Reads `manifest.json` from a folder (or from the file itself).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = manifest_path(path.as_ref());
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses and checks manifest text (`path` labels errors).
    pub fn from_json_str(text: &str, path: PathBuf) -> Result<Self> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| DataError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if manifest.format_version != MANIFEST_VERSION {
            return Err(DataError::Manifest {
                path,
                message: format!(
                    "format_version {} is not supported (expected {MANIFEST_VERSION})",
                    manifest.format_version
                ),
            });
        }
        Ok(manifest)
    }

    /// Writes `manifest.json` into `dir` durably ([`durable::write_atomic`]).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let path = dir.as_ref().join(MANIFEST_FILE);
        let mut text = serde_json::to_string_pretty(self).map_err(|e| DataError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        text.push('\n');
        durable::write_atomic(&path, text.as_bytes())
    }

    /// One split's entry.
    pub fn split(&self, split: Split) -> &SplitInfo {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Loads the tokenizer copy stored beside the manifest in `dir`, checking its hash.
    pub fn load_tokenizer(&self, dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = dir.as_ref().join(&self.tokenizer.file);
        let tok = Tokenizer::from_file(&path)?;
        self.check_tokenizer(&tok, &path)?;
        Ok(tok)
    }

    /// Fails with [`DataError::TokenizerMismatch`] unless `tok` is the data's tokenizer.
    pub fn check_tokenizer(&self, tok: &Tokenizer, path: &Path) -> Result<()> {
        if tok.hash() != self.tokenizer.hash {
            return Err(DataError::TokenizerMismatch {
                path: path.to_owned(),
                found: self.tokenizer.hash,
                expected: tok.hash(),
            });
        }
        Ok(())
    }
}

/// `dir/manifest.json` for a folder, the path itself otherwise.
pub fn manifest_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else {
        path.to_owned()
    }
}

/// Serialises a `u64` as 16 hex digits (JSON numbers lose precision past 2^53 in many readers).
pub(crate) mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}
