//! What SFT and DPO add to a run: the `--init` model, chat and preference JSONL turned into
//! training items, and DPO's reference pass.
//!
//! Bad records never stop a run: a line that does not parse or validate, a conversation
//! that fails to tokenize, a pair that does not fit `data.seq_len` or has no response token
//! is skipped and counted, and the first few reasons are shown with their line or record
//! number. Only a source with no usable record at all is an error.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use hymba::{Hymba, HymbaBackend, HymbaConfig};
use hymba_datasets::{
    DpoExample, DpoPair, MaskedTokens, PromptFormat, SftExample, Tokenizer, pack, read_jsonl,
};
use serde::{Deserialize, Serialize};

use crate::data::{ScoredPair, rows_to_batch};
use crate::dpo::response_logprobs;
use crate::error::TrainError;
use crate::model::LanguageModel;
use crate::run_config::{PromptStyle, RunConfig};

/// How many skip reasons a summary keeps (the count is always exact).
const SHOWN_SKIPS: usize = 5;

/// What reading a JSONL source kept and dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSummary {
    /// Records parsed and kept.
    pub records: usize,
    /// Records or lines skipped.
    pub skipped: usize,
    /// The first few reasons, `file: line N: why` or `file: record N: why`.
    pub reasons: Vec<String>,
    /// SFT: conversations longer than a sequence, cut to it.
    pub truncated: usize,
    /// SFT: conversations dropped because no assistant token was left after the cut.
    pub dropped: usize,
    /// Training items (packed sequences or pairs).
    pub train_items: usize,
    /// Validation items.
    pub valid_items: usize,
}

impl DataSummary {
    fn skip(&mut self, reason: String) {
        self.skipped += 1;
        if self.reasons.len() < SHOWN_SKIPS {
            self.reasons.push(reason);
        }
    }
}

impl std::fmt::Display for DataSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records kept, {} skipped; {} training and {} validation items",
            self.records, self.skipped, self.train_items, self.valid_items
        )?;
        if self.truncated > 0 {
            write!(
                f,
                "; {} conversations cut to data.seq_len, {} of them dropped (no assistant token left)",
                self.truncated, self.dropped
            )?;
        }
        for r in &self.reasons {
            write!(f, "\n  skipped {r}")?;
        }
        if self.skipped > self.reasons.len() {
            write!(f, "\n  … and {} more", self.skipped - self.reasons.len())?;
        }
        Ok(())
    }
}

/// Whether record `i` is held out: every k-th record with `k = round(1 / val_fraction)`,
/// so the split is the same for every seed and every stage reading the same file.
pub fn is_held_out(i: usize, val_fraction: f64) -> bool {
    if val_fraction <= 0.0 {
        return false;
    }
    let k = (1.0 / val_fraction).round().max(1.0) as usize;
    i % k == k - 1
}

/// A record and where it came from (`file:line`, for messages).
struct Located<T> {
    record: T,
    at: String,
}

/// Reads every record of the run's JSONL files (non-strict, up to `data.max_records`),
/// counting the lines skipped.
fn read_records<T>(
    run: &RunConfig,
    summary: &mut DataSummary,
) -> Result<Vec<Located<T>>, TrainError>
where
    T: serde::de::DeserializeOwned + hymba_datasets::Validate,
{
    let mut all = Vec::new();
    for path in &run.data.jsonl {
        if !path.is_file() {
            return Err(TrainError::Config(format!(
                "data.jsonl: {} does not exist",
                path.display()
            )));
        }
        let read = read_jsonl::<T>(path, false)?;
        for s in read.skipped {
            summary.skip(format!("{}: {s}", path.display()));
        }
        all.extend(
            read.records
                .into_iter()
                .zip(read.lines)
                .map(|(record, line)| Located {
                    record,
                    at: format!("{}: line {line}", path.display()),
                }),
        );
    }
    if run.data.max_records > 0 {
        all.truncate(run.data.max_records);
    }
    if all.is_empty() {
        return Err(TrainError::Config(format!(
            "data.jsonl: no usable record in {} ({} lines skipped)",
            files(run),
            summary.skipped
        )));
    }
    summary.records = all.len();
    Ok(all)
}

fn files(run: &RunConfig) -> String {
    let names: Vec<String> = run
        .data
        .jsonl
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    names.join(", ")
}

/// SFT items: chat records rendered with Hymba's template (loss on assistant tokens only),
/// split into training and held-out records, each side packed into sequences of
/// `data.seq_len + 1` tokens.
pub fn load_sft(
    run: &RunConfig,
    tok: &Tokenizer,
) -> Result<(Vec<MaskedTokens>, Vec<MaskedTokens>, DataSummary), TrainError> {
    let mut summary = DataSummary::default();
    let records: Vec<Located<SftExample>> = read_records(run, &mut summary)?;
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, r) in records.iter().enumerate() {
        match r.record.tokenize(tok) {
            Ok(t) if is_held_out(i, run.data.val_fraction) => valid.push(t),
            Ok(t) => train.push(t),
            Err(e) => summary.skip(format!("{}: {e}", r.at)),
        }
    }
    let pad = tok.pad_id();
    let train = pack(train, run.data.seq_len, pad)?;
    let valid = pack(valid, run.data.seq_len, pad)?;
    summary.truncated = train.truncated + valid.truncated;
    summary.dropped = train.dropped + valid.dropped;
    summary.train_items = train.sequences.len();
    summary.valid_items = valid.sequences.len();
    if train.sequences.is_empty() {
        return Err(TrainError::Config(format!(
            "sft: no training sequence left from {}",
            files(run)
        )));
    }
    Ok((train.sequences, valid.sequences, summary))
}

/// DPO pairs, tokenized and split: a pair whose longer side exceeds `data.seq_len + 1`
/// tokens (a prompt too long for the model) or whose response has no token is skipped.
pub fn load_pairs(
    run: &RunConfig,
    tok: &Tokenizer,
) -> Result<(Vec<DpoPair>, Vec<DpoPair>, DataSummary), TrainError> {
    let mut summary = DataSummary::default();
    let records: Vec<Located<DpoExample>> = read_records(run, &mut summary)?;
    let format = match run.dpo.prompt_format {
        PromptStyle::Chat => PromptFormat::Chat,
        PromptStyle::Plain => PromptFormat::Plain,
    };
    let max = run.data.seq_len + 1;
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, r) in records.iter().enumerate() {
        let pair = match r.record.tokenize(tok, format) {
            Ok(p) => p,
            Err(e) => {
                summary.skip(format!("{}: {e}", r.at));
                continue;
            }
        };
        let longest = pair.chosen.len().max(pair.rejected.len());
        if longest > max {
            summary.skip(format!(
                "{}: {longest} tokens, longer than data.seq_len + 1 = {max}",
                r.at
            ));
            continue;
        }
        if pair.chosen.target_count() <= 1 || pair.rejected.target_count() <= 1 {
            summary.skip(format!("{}: a response has no token", r.at));
            continue;
        }
        if is_held_out(i, run.data.val_fraction) {
            valid.push(pair);
        } else {
            train.push(pair);
        }
    }
    summary.train_items = train.len();
    summary.valid_items = valid.len();
    if train.is_empty() {
        return Err(TrainError::Config(format!(
            "dpo: no training pair left from {} (data.seq_len = {})",
            files(run),
            run.data.seq_len
        )));
    }
    Ok((train, valid, summary))
}

/// The reference log-probs of a set of pairs, as stored beside the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReferenceFile {
    /// The `--init` model they were computed with.
    init: String,
    /// A hash of the tokenized pairs, so a changed data file is never matched with stale
    /// values.
    data_hash: u64,
    /// `(chosen, rejected)` per pair, in order.
    values: Vec<(f64, f64)>,
}

fn pairs_hash(pairs: &[DpoPair]) -> u64 {
    let mut bytes = Vec::new();
    for p in pairs {
        for side in [&p.chosen, &p.rejected] {
            bytes.extend(side.ids.iter().flat_map(|i| i.to_le_bytes()));
            bytes.extend_from_slice(&side.mask);
            bytes.push(0xff);
        }
    }
    hymba_datasets::tokenizer::fnv1a64(&bytes)
}

/// DPO's reference pass: the frozen `--init` model's summed response log-probs of every
/// pair, computed once before training and stored in `file` (reused when the data and the
/// model are the same), so training holds one model only.
pub fn reference_pass<B: HymbaBackend>(
    model: &Hymba<B>,
    device: &B::Device,
    pairs: Vec<DpoPair>,
    batch_size: usize,
    file: &Path,
    init: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<ScoredPair>, TrainError> {
    let hash = pairs_hash(&pairs);
    let stored = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str::<ReferenceFile>(&t).ok())
        .filter(|r| r.data_hash == hash && r.init == init && r.values.len() == pairs.len());
    let values = match stored {
        Some(r) => r.values,
        None => {
            let mut values = Vec::with_capacity(pairs.len());
            for (n, chunk) in pairs.chunks(batch_size.max(1)).enumerate() {
                let rows: Vec<&MaskedTokens> = chunk
                    .iter()
                    .map(|p| &p.chosen)
                    .chain(chunk.iter().map(|p| &p.rejected))
                    .collect();
                let batch = rows_to_batch::<B>(&rows, device);
                let [n_rows, t] = batch.ids.dims();
                let mask = batch
                    .loss_mask
                    .unwrap_or_else(|| Tensor::ones([n_rows, t - 1], device));
                let lp = response_logprobs(model, batch.ids, mask)
                    .into_data()
                    .convert::<f64>()
                    .to_vec::<f64>()
                    .unwrap_or_default();
                let k = chunk.len();
                values.extend((0..k).map(|i| (lp[i], lp[k + i])));
                progress((n * batch_size + k).min(pairs.len()), pairs.len());
            }
            let record = ReferenceFile {
                init: init.to_string(),
                data_hash: hash,
                values: values.clone(),
            };
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
            }
            let text = serde_json::to_string(&record).unwrap_or_default();
            std::fs::write(file, text).map_err(|e| TrainError::io(file, e))?;
            values
        }
    };
    Ok(pairs
        .into_iter()
        .zip(values)
        .map(|(pair, (c, r))| ScoredPair {
            pair,
            reference_chosen: c,
            reference_rejected: r,
        })
        .collect())
}

/// Where an `--init` model lives: an HF-layout directory (`config.json` + safetensors; ours
/// or NVIDIA's), or one of our step checkpoints (`…/checkpoints/step-N`, whose config and
/// tokenizer are in the run directory two levels up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitSource {
    /// `config.json` + `*.safetensors`.
    Pretrained(PathBuf),
    /// A step checkpoint directory and its run directory.
    Checkpoint {
        /// `…/checkpoints/step-N`.
        dir: PathBuf,
        /// The run's `out_dir`.
        run_dir: PathBuf,
    },
}

impl InitSource {
    /// Classifies `path`, or says what is missing.
    pub fn find(path: &Path) -> Result<Self, TrainError> {
        if path.join("state.json").is_file() && path.join("model.mpk").is_file() {
            let run_dir = path
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if !run_dir.join("config.json").is_file() {
                return Err(TrainError::Config(format!(
                    "--init {}: a checkpoint, but its run directory has no config.json",
                    path.display()
                )));
            }
            return Ok(Self::Checkpoint {
                dir: path.to_path_buf(),
                run_dir,
            });
        }
        if path.join("config.json").is_file() {
            return Ok(Self::Pretrained(path.to_path_buf()));
        }
        Err(TrainError::Config(format!(
            "--init {}: neither a model directory (config.json + safetensors) nor a step checkpoint",
            path.display()
        )))
    }

    /// The `tokenizer.json` that belongs to this model, if there is one.
    pub fn tokenizer(&self) -> Option<PathBuf> {
        let p = match self {
            Self::Pretrained(dir) => dir.join("tokenizer.json"),
            Self::Checkpoint { run_dir, .. } => run_dir.join("tokenizer.json"),
        };
        p.is_file().then_some(p)
    }

    /// Loads the model onto `device`.
    pub fn load<B: HymbaBackend>(&self, device: &B::Device) -> Result<Hymba<B>, TrainError> {
        match self {
            Self::Pretrained(dir) => Ok(hymba::load_pretrained::<B>(dir, device)?),
            Self::Checkpoint { dir, run_dir } => {
                crate::checkpoint::verify(dir)?;
                let config = HymbaConfig::from_file(run_dir.join("config.json"))?;
                let model = LanguageModel::new(Hymba::<B>::new(&config, device)?, None);
                let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
                    .load(dir.join("model"), device)
                    .map_err(|e| TrainError::io(dir.join("model.mpk"), e))?;
                Ok(model.load_record(record).hymba)
            }
        }
    }
}
