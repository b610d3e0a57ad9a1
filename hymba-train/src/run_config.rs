//! The TOML run config of `hymba-train pretrain`, `sft` and `dpo`: every field documented
//! and defaulted, so `hymba-train pretrain` with no config at all is the README's main job
//! (a small Hymba on the embedded corpus, on the CPU, for a few minutes). The defaults
//! depend on the [`Stage`]: SFT and DPO start from the paper's post-training settings
//! (spec §7: cosine schedule, lr 5e-5 and 3e-6, one epoch).
//!
//! Unknown keys are errors (a typo must not silently train with a default), and
//! `key=value` overrides from the command line address fields by dotted path
//! (`optimizer.lr=1e-3`, `model.preset=hymba-125m`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Which architecture to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A preset (`tiny`, `hymba-125m`, `hymba-350m`, `hymba-1.5b`) or `"small-cpu"`: the main
    /// job's model (width 128, 4 layers, window 64, 16 meta tokens).
    pub preset: String,
    /// An HF `config.json` to use instead of the preset.
    pub config_json: Option<PathBuf>,
    /// Overrides the vocabulary size; by default the tokenizer's.
    pub vocab_size: Option<usize>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            preset: "small-cpu".into(),
            config_json: None,
            vocab_size: None,
        }
    }
}

/// Where the tokens come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Pretraining: a shard directory written by `hymba-datasets prepare`, or `"default"`:
    /// the embedded corpus, tokenized into `<out_dir>/data` on first use.
    pub shards: String,
    /// SFT and DPO: JSONL files, chat records (`{"messages": [{"role", "content"}…]}`) for
    /// SFT and preference pairs (`{"prompt", "chosen", "rejected"}`) for DPO.
    pub jsonl: Vec<PathBuf>,
    /// SFT and DPO: fraction of the records held out for validation (every k-th record,
    /// so the split does not depend on the seed).
    pub val_fraction: f64,
    /// SFT and DPO: read at most this many records (0 = all).
    pub max_records: usize,
    /// SFT and DPO: a `tokenizer.json`; by default the one beside the `--init` model.
    pub tokenizer: Option<PathBuf>,
    /// Tokens per training sequence (meta tokens come on top). SFT packs examples into
    /// sequences of this length; DPO drops pairs longer than it (counted in the log).
    pub seq_len: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            shards: "default".into(),
            jsonl: Vec::new(),
            val_fraction: 0.05,
            max_records: 0,
            tokenizer: None,
            seq_len: 64,
        }
    }
}

/// How a DPO prompt and response are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptStyle {
    /// Hymba's chat template (a user turn, then the response as the assistant's turn).
    Chat,
    /// `prompt + "\n" + response`, for models without SFT.
    Plain,
}

/// DPO settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSection {
    /// β: the strength of the implicit KL penalty (rewards are `β·(log π − log π_ref)`).
    pub beta: f64,
    /// How prompt and response are joined.
    pub prompt_format: PromptStyle,
}

impl Default for DpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            prompt_format: PromptStyle::Chat,
        }
    }
}

/// The training stage a run config is for; it picks the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Next-token pretraining on token shards.
    Pretrain,
    /// Supervised fine-tuning on chat JSONL, loss on assistant tokens only, packed.
    Sft,
    /// Direct preference optimisation on preference pairs.
    Dpo,
}

impl Stage {
    /// The subcommand's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pretrain => "pretrain",
            Self::Sft => "sft",
            Self::Dpo => "dpo",
        }
    }
}

/// AdamW settings. Weight decay skips norms, biases, `A_log`, `D` and the meta tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    /// Peak learning rate (paper: 3e-3 for pretraining).
    pub lr: f64,
    /// Final learning rate of the decay phase (paper: 1e-5).
    pub min_lr: f64,
    /// Adam β1.
    pub beta1: f32,
    /// Adam β2.
    pub beta2: f32,
    /// Adam ε.
    pub epsilon: f32,
    /// Decoupled weight decay of the matrices.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self {
            lr: 3e-3,
            min_lr: 1e-5,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}

/// Learning-rate schedule shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Warmup, stable at the peak, then linear decay to `min_lr` (the paper's WSD).
    Wsd,
    /// Warmup, then cosine decay to `min_lr`.
    Cosine,
    /// Warmup, then constant.
    Constant,
}

/// Learning-rate schedule, counted in optimizer steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// `wsd`, `cosine` or `constant`.
    pub kind: ScheduleKind,
    /// Fraction of the steps spent warming up linearly from 0 (paper: 1 %).
    pub warmup_frac: f64,
    /// WSD: fraction of the steps spent decaying at the end (paper: 20 %).
    pub decay_frac: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Wsd,
            warmup_frac: 0.01,
            decay_frac: 0.2,
        }
    }
}

/// What to do when the loss is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Stop, naming the step and the last good checkpoint.
    Stop,
    /// Skip the optimizer step of that batch and go on.
    Skip,
}

/// The dtype of the forward and backward passes.
///
/// The weights the optimizer updates, its AdamW state, the gradients it sees and the
/// checkpoints stay f32 in every mode. With `bf16`, each micro-batch runs on a bf16 cast of
/// the weights ([`hymba::precision::cast_params`]) with bf16 activations; norms, softmax, the
/// selective scan and the loss still compute in f32, and the gradients flow back through the
/// cast to the f32 master weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on CUDA, f32 elsewhere (the CPU backend has no bf16; wgpu's is not portable).
    Auto,
    /// f32 everywhere.
    F32,
    /// bf16 compute with f32 master weights (CUDA, wgpu).
    Bf16,
}

/// How CUDA tensor memory is allocated during the training loop (other backends ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CudaMemory {
    /// cubecl's exact-size buffers ([`hymba::FixedShapeMemory`]) where every batch has one
    /// shape (pretraining, packed SFT), its default allocator where shapes vary (DPO): about
    /// 1.7× the tokens/s of `pooled` on hymba-125m pretraining, at more peak memory.
    Exact,
    /// cubecl's default allocator (large pages split and merged) for every run: less peak
    /// memory.
    Pooled,
}

/// A whole pretraining run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Where checkpoints, logs, the loss curve and the final model go.
    pub out_dir: PathBuf,
    /// The architecture.
    pub model: ModelSection,
    /// The data.
    pub data: DataSection,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradients are averaged).
    pub grad_accum: usize,
    /// Optimizer steps to train for. SFT and DPO: 0 = one epoch over the training records
    /// (the paper's setting).
    pub steps: usize,
    /// Optimizer settings.
    pub optimizer: OptimizerSection,
    /// Learning-rate schedule.
    pub schedule: ScheduleSection,
    /// Save a checkpoint every this many optimizer steps (and at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept (oldest deleted first).
    pub keep_checkpoints: usize,
    /// Run validation every this many steps (0 = only at the end).
    pub valid_every: usize,
    /// Validation batches per validation run (0 = the whole validation split).
    pub valid_batches: usize,
    /// Seed of the weights and of the data order.
    pub seed: u64,
    /// What to do on a NaN/inf loss.
    pub on_nan: NanPolicy,
    /// Compute dtype of the forward and backward passes; see [`Precision`].
    pub precision: Precision,
    /// Let CUDA multiply f32 products as TF32 (10-bit mantissa, f32 accumulation) on cuBLAS,
    /// as burn's own CUDA matmul does; false keeps them exact f32. bf16 compute is
    /// unaffected ([`hymba::matmul::set_tf32`]).
    pub allow_tf32: bool,
    /// CUDA tensor memory during the training loop; see [`CudaMemory`].
    pub cuda_memory: CudaMemory,
    /// Peak dense TFLOP/s of one device, for MFU; 0 = pick by backend (H100 bf16: 989 on
    /// CUDA; unknown elsewhere, MFU then shows 0).
    pub peak_tflops: f64,
    /// Samples printed at the end (each `sample_tokens` long, greedy and sampled).
    pub samples: usize,
    /// Tokens per printed sample.
    pub sample_tokens: usize,
    /// Print a log line every this many steps when stdout is not a terminal (a terminal
    /// gets burn's live dashboard instead).
    pub log_every: usize,
    /// DPO settings (ignored by the other stages).
    pub dpo: DpoSection,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            out_dir: PathBuf::from("runs/default"),
            model: ModelSection::default(),
            data: DataSection::default(),
            batch_size: 8,
            grad_accum: 1,
            steps: 300,
            optimizer: OptimizerSection::default(),
            schedule: ScheduleSection::default(),
            checkpoint_every: 100,
            keep_checkpoints: 2,
            valid_every: 50,
            valid_batches: 8,
            seed: 42,
            on_nan: NanPolicy::Stop,
            precision: Precision::Auto,
            allow_tf32: false,
            cuda_memory: CudaMemory::Exact,
            peak_tflops: 0.0,
            samples: 3,
            sample_tokens: 48,
            log_every: 10,
            dpo: DpoSection::default(),
        }
    }
}

impl RunConfig {
    /// The defaults of `stage`: pretraining as [`Default`]; SFT and DPO as the paper's
    /// post-training (cosine schedule, lr 5e-5 and 3e-6, one epoch, spec §7), with a
    /// longer sequence for chat records and no weight decay.
    pub fn defaults(stage: Stage) -> Self {
        let mut c = Self::default();
        if stage == Stage::Pretrain {
            return c;
        }
        c.steps = 0;
        c.data.seq_len = 256;
        c.optimizer.weight_decay = 0.0;
        c.optimizer.min_lr = 0.0;
        c.schedule.kind = ScheduleKind::Cosine;
        c.schedule.warmup_frac = 0.03;
        c.valid_every = 0;
        c.valid_batches = 0;
        c.samples = 0;
        match stage {
            Stage::Sft => {
                c.out_dir = PathBuf::from("runs/sft");
                c.optimizer.lr = 5e-5;
            }
            _ => {
                c.out_dir = PathBuf::from("runs/dpo");
                c.optimizer.lr = 3e-6;
                c.batch_size = 4;
                c.data.val_fraction = 0.2;
                c.schedule.warmup_frac = 0.1;
            }
        }
        c
    }

    /// Reads `path` over the defaults of `stage`, applies `key=value` overrides, validates.
    pub fn load(
        stage: Stage,
        path: Option<&Path>,
        overrides: &[String],
    ) -> Result<Self, TrainError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| TrainError::Config(format!("{}: {e}", p.display())))?,
            ),
            None => None,
        };
        let file = text.as_deref().zip(path);
        Self::from_toml_str(stage, file, overrides)
    }

    /// Like [`RunConfig::load`], with the file's text given (and its path, for messages).
    pub fn from_toml_str(
        stage: Stage,
        file: Option<(&str, &Path)>,
        overrides: &[String],
    ) -> Result<Self, TrainError> {
        let mut value = toml::Value::try_from(Self::defaults(stage))
            .map_err(|e| TrainError::Config(e.to_string()))?;
        if let Some((text, p)) = file {
            let file = toml::from_str::<toml::Value>(text)
                .map_err(|e| TrainError::Config(format!("{}: {e}", p.display())))?;
            merge(&mut value, file);
        }
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let config: RunConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| TrainError::Config(e.message().to_string()))?;
        config.validate(stage)?;
        Ok(config)
    }

    /// Rejects settings that cannot train.
    pub fn validate(&self, stage: Stage) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.batch_size == 0 {
            return bad("batch_size must be positive");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum must be positive");
        }
        if self.steps == 0 && stage == Stage::Pretrain {
            return bad("steps must be positive");
        }
        if stage != Stage::Pretrain && self.data.jsonl.is_empty() {
            return bad(&format!(
                "{}: data.jsonl is empty; name the JSONL file(s) to train on",
                stage.name()
            ));
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return bad("data.val_fraction must be in [0, 1)");
        }
        if self.dpo.beta.is_nan() || self.dpo.beta <= 0.0 {
            return bad("dpo.beta must be positive");
        }
        if self.data.seq_len < 2 {
            return bad("data.seq_len must be at least 2");
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every must be positive");
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints must be at least 1");
        }
        if self.optimizer.lr.is_nan() || self.optimizer.lr <= 0.0 || self.optimizer.min_lr < 0.0 {
            return bad("optimizer.lr must be positive and optimizer.min_lr non-negative");
        }
        let s = &self.schedule;
        if !(0.0..=1.0).contains(&s.warmup_frac) || !(0.0..=1.0).contains(&s.decay_frac) {
            return bad("schedule.warmup_frac and schedule.decay_frac must be in [0, 1]");
        }
        Ok(())
    }

    /// The resolved config as TOML (saved beside the checkpoints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Lays the tables of `over` onto `base`, key by key (a file only names what it changes).
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Applies one `a.b.c=value` override; the value is parsed as TOML (number, bool, array…)
/// and taken as a string when that fails.
fn apply_override(root: &mut toml::Value, text: &str) -> Result<(), TrainError> {
    let Some((path, raw)) = text.split_once('=') else {
        return Err(TrainError::Config(format!(
            "override `{text}` is not of the form key=value"
        )));
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let keys: Vec<&str> = path.trim().split('.').collect();
    let mut node = root;
    for key in &keys[..keys.len() - 1] {
        let table = node.as_table_mut().ok_or_else(|| {
            TrainError::Config(format!("override `{path}`: `{key}` is not a table"))
        })?;
        node = table
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = node
        .as_table_mut()
        .ok_or_else(|| TrainError::Config(format!("override `{path}` does not name a field")))?;
    table.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}
