//! The Hugging Face side files of a model directory, beside `config.json` and the weights
//! (see [`crate::weights`]):
//!
//! ```text
//! dir/
//!   tokenizer_config.json     special tokens by text, model_max_length, tokenizer_class,
//!                             chat_template (after SFT)
//!   generation_config.json    bos/eos/pad token ids, max_length, do_sample
//! ```
//!
//! Both are optional: a directory without them loads as before, and one with them (ours or
//! NVIDIA's) loads too; keys this module does not model are kept verbatim in `extra`. The
//! training crate fills them from its tokenizer (`hymba_train::hf_files`); this module only
//! defines the files, reads, writes and checks them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The tokenizer's settings for `AutoTokenizer.from_pretrained`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Generation defaults for `model.generate` (`GenerationConfig.from_pretrained`).
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// What can go wrong with a side file; each variant names the file.
#[derive(Debug, Error)]
pub enum HfFileError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape (the parser names the key).
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A token id of the file does not exist in the model's vocabulary.
    #[error("{}: `{key}` = {id} is not below the model's vocab_size {vocab_size}", path.display())]
    TokenOutOfRange {
        /// The file.
        path: PathBuf,
        /// The key holding the id.
        key: &'static str,
        /// The id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
}

/// A special token in `tokenizer_config.json`: a plain string (what we write), or the
/// `AddedToken` object some HF versions write (`{"content": "<s>", "lstrip": false, ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenText {
    /// `"<s>"`.
    Plain(String),
    /// `{"content": "<s>", ...}`.
    Added {
        /// The token's text.
        content: String,
        /// The other flags (`lstrip`, `normalized`, ...), kept verbatim.
        #[serde(flatten)]
        flags: BTreeMap<String, serde_json::Value>,
    },
}

impl TokenText {
    /// The token's text, whichever form the file used.
    pub fn content(&self) -> &str {
        match self {
            Self::Plain(s) | Self::Added { content: s, .. } => s,
        }
    }
}

/// `tokenizer_config.json`: the keys we write, and every other key kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizerConfig {
    /// The `transformers` class, e.g. `LlamaTokenizerFast` (or the generic
    /// `PreTrainedTokenizerFast`, which only reads `tokenizer.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_class: Option<String>,
    /// Beginning of sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token: Option<TokenText>,
    /// End of sequence (also where generation stops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<TokenText>,
    /// Padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token: Option<TokenText>,
    /// Unknown token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unk_token: Option<TokenText>,
    /// Whether encoding adds BOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_bos_token: Option<bool>,
    /// Whether encoding adds EOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_eos_token: Option<bool>,
    /// Longest input in tokens. A number, not an integer: HF writes `1e30` for "no limit".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_max_length: Option<serde_json::Number>,
    /// The chat template (Jinja), or HF's list of named templates, kept as found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<serde_json::Value>,
    /// Every other key of the file, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json`; `Ok(None)` when the file does not exist.
    pub fn read(dir: impl AsRef<Path>) -> Result<Option<Self>, HfFileError> {
        read_json(&dir.as_ref().join(TOKENIZER_CONFIG_FILE))
    }

    /// Writes `dir/tokenizer_config.json` (pretty JSON, keys in a fixed order).
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<(), HfFileError> {
        write_json(&dir.as_ref().join(TOKENIZER_CONFIG_FILE), self)
    }

    /// The chat template when it is one Jinja string (not HF's list of named templates).
    pub fn chat_template_str(&self) -> Option<&str> {
        self.chat_template.as_ref().and_then(|v| v.as_str())
    }
}

/// One id or several, as HF allows for `eos_token_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// `2`.
    One(u32),
    /// `[2, 32001]`.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// `generation_config.json`: the keys we write, and every other key kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HfGenerationConfig {
    /// Beginning of sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// Generation stops after one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// Padding of batched prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    /// Prompt plus generated tokens at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Sample (`true`) or decode greedily (`false`, this project's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    /// Every other key of the file (`temperature`, `transformers_version`, ...), verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl HfGenerationConfig {
    /// Reads `dir/generation_config.json`; `Ok(None)` when the file does not exist.
    pub fn read(dir: impl AsRef<Path>) -> Result<Option<Self>, HfFileError> {
        read_json(&dir.as_ref().join(GENERATION_CONFIG_FILE))
    }

    /// Writes `dir/generation_config.json` (pretty JSON, keys in a fixed order).
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<(), HfFileError> {
        write_json(&dir.as_ref().join(GENERATION_CONFIG_FILE), self)
    }

    /// Checks that every token id is below `vocab_size`; `path` names the file in the error.
    pub fn check_ids(&self, vocab_size: usize, path: &Path) -> Result<(), HfFileError> {
        let eos = self.eos_token_id.as_ref().map(TokenIds::to_vec);
        let ids = [
            ("bos_token_id", self.bos_token_id.map(|id| vec![id])),
            ("eos_token_id", eos),
            ("pad_token_id", self.pad_token_id.map(|id| vec![id])),
        ];
        for (key, ids) in ids {
            for id in ids.unwrap_or_default() {
                if id as usize >= vocab_size {
                    return Err(HfFileError::TokenOutOfRange {
                        path: path.to_path_buf(),
                        key,
                        id,
                        vocab_size,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Both side files of a model directory, each `None` when absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideFiles {
    /// `tokenizer_config.json`.
    pub tokenizer: Option<TokenizerConfig>,
    /// `generation_config.json`.
    pub generation: Option<HfGenerationConfig>,
}

impl SideFiles {
    /// Reads both files of `dir` (either may be missing) and checks the generation config's
    /// ids against `vocab_size`.
    pub fn read(dir: impl AsRef<Path>, vocab_size: usize) -> Result<Self, HfFileError> {
        let dir = dir.as_ref();
        let generation = HfGenerationConfig::read(dir)?;
        if let Some(g) = &generation {
            g.check_ids(vocab_size, &dir.join(GENERATION_CONFIG_FILE))?;
        }
        Ok(Self {
            tokenizer: TokenizerConfig::read(dir)?,
            generation,
        })
    }

    /// Writes the files that are present into `dir` (which must exist).
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<(), HfFileError> {
        let dir = dir.as_ref();
        if let Some(t) = &self.tokenizer {
            t.write(dir)?;
        }
        if let Some(g) = &self.generation {
            g.write(dir)?;
        }
        Ok(())
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, HfFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HfFileError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| HfFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), HfFileError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| HfFileError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| HfFileError::Io {
        path: path.to_path_buf(),
        source,
    })
}
