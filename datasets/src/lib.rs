//! Data for Hymba: tokenizers, corpus → token shards, and the SFT / DPO / eval formats.
//!
//! - [`Tokenizer`]: any Hugging Face `tokenizer.json` (LLaMA-2's for Hymba), or a byte-level
//!   BPE from [`train_bpe`]; its [`Tokenizer::hash`] is stamped into every shard.
//! - [`prepare()`]: text / JSONL (optionally `.gz`) → `train-*.bin` / `val-*.bin` shards
//!   (`u16` or `u32` ids after a 32-byte header, see [`shard`]) + `manifest.json`.
//! - [`WindowDataset`] serves `seq_len + 1`-token windows from memory-mapped shards;
//!   [`WindowSampler`] gives a seeded shuffled order whose [`SamplerState`] resumes exactly.
//! - [`sft`], [`dpo`], [`multiple_choice`], [`recall`]: record types for [`read_jsonl`],
//!   Hymba's chat template with an assistant-only loss mask, and packing.
//! - [`default_corpus_text`] / [`default_tokenizer`]: a CC0 corpus and its tokenizer
//!   shipped in the crate, so tiny runs need no download.

#![warn(missing_docs)]

pub mod assets;
pub mod dpo;
pub mod durable;
pub mod error;
pub mod input;
pub mod jsonl;
pub mod manifest;
pub mod multiple_choice;
pub mod prepare;
pub mod recall;
pub mod sft;
pub mod shard;
pub mod tokenizer;
pub mod windows;

pub use assets::{default_corpus_text, default_tokenizer, load_tokenizer};
pub use dpo::{DpoExample, DpoPair, PromptFormat};
pub use error::{DataError, Result};
pub use input::{DocOptions, InputSource};
pub use jsonl::{JsonlRecords, SkippedLine, Validate, parse_jsonl, read_jsonl};
pub use manifest::{DocMode, Manifest, Split};
pub use multiple_choice::{McExample, ScoredSequence, continuation_tokens};
pub use prepare::{PrepareConfig, PrepareProgress, PrepareReport, prepare};
pub use recall::RecallExample;
pub use sft::{
    CHAT_TEMPLATE_JINJA, MaskedTokens, Message, Packed, Role, SftExample, pack, render_chat,
    tokenize_chat,
};
pub use shard::{Shard, ShardHeader, ShardWriter, TokenDtype};
pub use tokenizer::{BpeConfig, Tokenizer, train_bpe};
pub use windows::{SamplerState, TokenStream, WindowDataset, WindowSampler};
