//! `prepare`: corpus → token shards + `manifest.json`.
//!
//! Every document becomes `BOS, tokens…, EOS` (EOS separates documents; BOS is skipped when
//! the tokenizer's BOS equals its EOS) and goes, whole, to `train` or `val`: to `val` when a
//! seeded hash of its text falls below `val_fraction` (so duplicate documents share a split).
//! If that leaves `val` empty on a tiny corpus, the last training document moves to `val`.
//! Each split is cut into shards of at most `shard_tokens` tokens (`train-00000.bin`, …).
//! The output depends only on the inputs and the settings: no timestamps, no thread races.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::durable::{self, FileSum};
use crate::error::{DataError, Result};
use crate::input::{DocOptions, InputSource, expand_inputs, for_each_document};
use crate::jsonl::SkippedLines;
use crate::manifest::{
    MANIFEST_FILE, MANIFEST_VERSION, Manifest, ShardInfo, Split, SplitInfo, TOKENIZER_FILE,
    TokenizerInfo,
};
use crate::shard::{ShardWriter, TokenDtype};
use crate::tokenizer::{Tokenizer, fnv1a64};
use crate::windows::mix64;

/// Settings of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// Inputs, in order.
    pub inputs: Vec<InputSource>,
    /// Output folder (created if needed; `train-NNNNN.bin` / `val-NNNNN.bin` files already
    /// there are removed first, so no stale shard survives).
    pub out_dir: PathBuf,
    /// Fraction of documents held out for `val`, in `[0, 1)`.
    pub val_fraction: f64,
    /// Seed of the train/val assignment.
    pub seed: u64,
    /// How documents are read.
    pub docs: DocOptions,
    /// Maximum tokens per shard file.
    pub shard_tokens: u64,
    /// Where the tokenizer came from, recorded in the manifest.
    pub tokenizer_source: String,
}

impl PrepareConfig {
    /// Defaults: 1 % val, seed 0, paragraphs, `text` field, lenient JSONL, 100 M-token shards.
    pub fn new(inputs: Vec<InputSource>, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            inputs,
            out_dir: out_dir.into(),
            val_fraction: 0.01,
            seed: 0,
            docs: DocOptions::default(),
            shard_tokens: 100_000_000,
            tokenizer_source: String::new(),
        }
    }
}

/// Progress, reported after each batch of documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrepareProgress {
    /// Raw input bytes read so far (compressed bytes for `.gz`).
    pub bytes_read: u64,
    /// Raw input bytes in all.
    pub bytes_total: u64,
    /// Documents tokenized so far.
    pub documents: u64,
    /// Tokens written so far.
    pub tokens: u64,
}

/// What [`prepare`] did.
#[derive(Debug, Clone)]
pub struct PrepareReport {
    /// The manifest that was written.
    pub manifest: Manifest,
    /// Skipped JSONL lines, as `(file, line)`.
    pub skipped: SkippedLines,
}

/// Documents are tokenized in batches of about this many bytes (in parallel inside one batch).
const BATCH_BYTES: usize = 1 << 20;

/// Tokenizes `config.inputs` with `tok` into shards and a manifest in `config.out_dir`.
pub fn prepare(
    tok: &Tokenizer,
    config: &PrepareConfig,
    progress: &mut dyn FnMut(&PrepareProgress),
) -> Result<PrepareReport> {
    if !(0.0..1.0).contains(&config.val_fraction) {
        return Err(DataError::Invalid(format!(
            "val fraction {} is not in [0, 1)",
            config.val_fraction
        )));
    }
    if config.shard_tokens == 0 {
        return Err(DataError::Invalid(
            "shard size must be at least 1 token".into(),
        ));
    }
    let files = expand_inputs(&config.inputs)?;
    if files.is_empty() {
        return Err(DataError::Invalid(
            "no input files (folders are searched for .txt, .text, .jsonl, .ndjson and their .gz)"
                .into(),
        ));
    }
    let out = &config.out_dir;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    // The manifest is written last and is what makes the folder usable: remove the old one
    // first, so that a prepare that dies half way leaves a folder that says it is incomplete.
    let old_manifest = out.join(MANIFEST_FILE);
    if old_manifest.exists() {
        std::fs::remove_file(&old_manifest).map_err(|e| DataError::io(&old_manifest, e))?;
        durable::sync_dir(out)?;
    }
    remove_old_shards(out)?;

    let dtype = TokenDtype::for_vocab(tok.vocab_size());
    let mut state = Splitter {
        train: SplitWriter::new(out, Split::Train, dtype, tok.hash(), config.shard_tokens),
        val: SplitWriter::new(out, Split::Val, dtype, tok.hash(), config.shard_tokens),
        held: None,
        seed: config.seed,
        val_fraction: config.val_fraction,
    };
    let mut report = PrepareProgress {
        bytes_total: files.iter().map(|f| f.size).sum(),
        ..PrepareProgress::default()
    };
    let counter = Arc::new(AtomicU64::new(0));
    let mut skipped_all = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut flush =
        |batch: &mut Vec<String>, state: &mut Splitter, report: &mut PrepareProgress| {
            let texts: Vec<&str> = batch.iter().map(String::as_str).collect();
            let encoded = tok.encode_batch(&texts, false)?;
            for (text, ids) in batch.iter().zip(encoded) {
                let doc = document_tokens(tok, ids);
                report.tokens += doc.len() as u64;
                report.documents += 1;
                state.push(text, doc)?;
            }
            batch.clear();
            report.bytes_read = counter.load(Ordering::Relaxed);
            progress(report);
            Ok::<(), DataError>(())
        };
    for file in &files {
        let mut skipped = Vec::new();
        for_each_document(file, &config.docs, counter.clone(), &mut skipped, |doc| {
            batch_bytes += doc.len();
            batch.push(doc);
            if batch_bytes >= BATCH_BYTES {
                batch_bytes = 0;
                flush(&mut batch, &mut state, &mut report)?;
            }
            Ok(())
        })?;
        skipped_all.extend(skipped.into_iter().map(|s| (file.name(), s)));
    }
    flush(&mut batch, &mut state, &mut report)?;
    let (train, val) = state.finish()?;

    tok.save(out.join(TOKENIZER_FILE))?;
    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        tokenizer: TokenizerInfo {
            file: TOKENIZER_FILE.into(),
            source: config.tokenizer_source.clone(),
            hash: tok.hash(),
            vocab_size: tok.vocab_size(),
            bos_id: tok.bos_id(),
            eos_id: tok.eos_id(),
            pad_id: tok.pad_id(),
        },
        dtype,
        document_layout: if tok.bos_id() == tok.eos_id() {
            "tokens EOS".into()
        } else {
            "BOS tokens EOS".into()
        },
        doc_mode: config.docs.doc_mode,
        seed: config.seed,
        val_fraction: config.val_fraction,
        inputs: config.inputs.iter().map(ToString::to_string).collect(),
        skipped_lines: skipped_all.len() as u64,
        train,
        val,
    };
    manifest.save(out)?;
    Ok(PrepareReport {
        manifest,
        skipped: skipped_all,
    })
}

/// `BOS ids EOS` (no BOS when BOS == EOS): how a document sits in the stream.
pub fn document_tokens(tok: &Tokenizer, ids: Vec<u32>) -> Vec<u32> {
    let mut doc = Vec::with_capacity(ids.len() + 2);
    if tok.bos_id() != tok.eos_id() {
        doc.push(tok.bos_id());
    }
    doc.extend(ids);
    doc.push(tok.eos_id());
    doc
}

/// Whether a document goes to `val`: a seeded hash of its text, uniform in [0, 1).
pub fn is_val_document(text: &str, seed: u64, val_fraction: f64) -> bool {
    let h = mix64(fnv1a64(text.as_bytes()) ^ mix64(seed));
    ((h >> 11) as f64 / (1u64 << 53) as f64) < val_fraction
}

fn remove_old_shards(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let ours = name.is_some_and(|n| {
            ["train-", "val-"].iter().any(|p| {
                n.strip_prefix(p)
                    .map(|r| r.strip_suffix(".tmp").unwrap_or(r))
                    .and_then(|r| r.strip_suffix(".bin"))
                    .is_some_and(|d| d.len() == 5 && d.bytes().all(|b| b.is_ascii_digit()))
            })
        });
        if ours {
            std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Routes documents to the two splits, holding back the last training document so that it
/// can move to `val` if `val` would otherwise stay empty.
struct Splitter {
    train: SplitWriter,
    val: SplitWriter,
    held: Option<Vec<u32>>,
    seed: u64,
    val_fraction: f64,
}

impl Splitter {
    fn push(&mut self, text: &str, doc: Vec<u32>) -> Result<()> {
        if is_val_document(text, self.seed, self.val_fraction) {
            self.val.push(&doc)
        } else {
            if let Some(prev) = self.held.replace(doc) {
                self.train.push(&prev)?;
            }
            Ok(())
        }
    }

    fn finish(mut self) -> Result<(SplitInfo, SplitInfo)> {
        if let Some(last) = self.held.take() {
            let move_to_val = self.val_fraction > 0.0
                && self.val.info.documents == 0
                && self.train.info.documents > 0;
            if move_to_val {
                self.val.push(&last)?;
            } else {
                self.train.push(&last)?;
            }
        }
        Ok((self.train.finish()?, self.val.finish()?))
    }
}

/// Writes one split as a sequence of shards.
struct SplitWriter {
    dir: PathBuf,
    split: Split,
    dtype: TokenDtype,
    hash: u64,
    shard_tokens: u64,
    current: Option<ShardWriter>,
    info: SplitInfo,
}

impl SplitWriter {
    fn new(dir: &Path, split: Split, dtype: TokenDtype, hash: u64, shard_tokens: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            split,
            dtype,
            hash,
            shard_tokens,
            current: None,
            info: SplitInfo::default(),
        }
    }

    fn push(&mut self, mut doc: &[u32]) -> Result<()> {
        self.info.documents += 1;
        while !doc.is_empty() {
            let writer = match &mut self.current {
                Some(w) => w,
                None => {
                    let file = format!("{}-{:05}.bin", self.split.name(), self.info.shards.len());
                    let w = ShardWriter::create(self.dir.join(&file), self.dtype, self.hash)?;
                    self.info.shards.push(ShardInfo {
                        file,
                        tokens: 0,
                        checksum: None,
                    });
                    self.current.insert(w)
                }
            };
            let room = (self.shard_tokens - writer.count()) as usize;
            let take = room.min(doc.len());
            writer.write(&doc[..take])?;
            doc = &doc[take..];
            self.info.tokens += take as u64;
            if writer.count() == self.shard_tokens {
                self.close_shard()?;
            }
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            let n = w.finish()?;
            if let Some(last) = self.info.shards.last_mut() {
                last.tokens = n;
                last.checksum = Some(FileSum::of(&self.dir.join(&last.file))?);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<SplitInfo> {
        self.close_shard()?;
        Ok(self.info)
    }
}
