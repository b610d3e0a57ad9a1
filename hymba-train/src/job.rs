//! One training run of any stage: data → model → burn-train `Learner` with [`LmStrategy`] →
//! checkpoints, loss curve, final model and samples.
//!
//! The stages differ in four places only: where the tokenizer and the first weights come
//! from (a fresh model for pretraining, `--init` for SFT and DPO), what the items are
//! (windows, packed chat sequences, scored preference pairs), which metrics the dashboard
//! shows, and what the report adds (unigram entropy; DPO's held-out reward accuracy).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::DType;
use burn::tensor::backend::DeviceOps;
use burn::train::metric::LearningRateMetric;
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use hymba::{BackendKind, BackendRunner, GenerationConfig, Hymba, HymbaBackend, HymbaConfig};
use hymba_datasets::{
    InputSource, Manifest, Message, PrepareConfig, Role, Split, TokenStream, Tokenizer,
    WindowDataset, WindowSampler,
};

use crate::checkpoint;
use crate::data::{BatchLoader, TrainData};
use crate::error::TrainError;
use crate::flops::train_flops_per_token;
use crate::logger::ExperimentLog;
use crate::metrics::StatMetric;
use crate::model::LanguageModel;
use crate::optim::{LmOptimizer, LmOptimizerRecord};
use crate::posttrain::{DataSummary, InitSource, load_pairs, load_sft, reference_pass};
use crate::renderer::LineRenderer;
use crate::run_config::{Precision, RunConfig, Stage};
use crate::schedule::LrSchedule;
use crate::strategy::{LmStrategy, RunLog};
use hymba_datasets::durable;

/// A training run to launch on some backend.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// Pretraining, SFT or DPO.
    pub stage: Stage,
    /// The resolved run config.
    pub config: RunConfig,
    /// Continue from the newest checkpoint in `out_dir`.
    pub resume: bool,
    /// The backend (for the MFU peak).
    pub backend: BackendKind,
    /// SFT/DPO: the model to start from (HF-layout directory or step checkpoint).
    pub init: Option<PathBuf>,
    /// Data-parallel devices beyond the one `run_on` was given (device indices of the same
    /// backend; empty: one device). See [`crate::strategy`] for what a step does with them.
    pub replicas: Vec<u16>,
    /// Print the phases of every optimizer step (`--step-times`; the device is synchronised
    /// after each phase, which costs a little).
    pub step_times: bool,
}

impl TrainJob {
    /// A fresh run of `stage` on one device: no resume, no `--init`, no replicas (set those
    /// fields for the other cases).
    pub fn new(stage: Stage, config: RunConfig, backend: BackendKind) -> Self {
        Self {
            stage,
            config,
            resume: false,
            backend,
            init: None,
            replicas: Vec::new(),
            step_times: false,
        }
    }

    /// The dtype the run's forward and backward passes compute in (`None`: the weights'
    /// own, f32), from `precision` and the backend; see [`Precision`].
    pub fn compute_dtype(&self) -> Result<Option<DType>, TrainError> {
        let cuda = matches!(self.backend, BackendKind::Cuda | BackendKind::CudaRaw);
        match self.config.precision {
            Precision::F32 => Ok(None),
            Precision::Auto => Ok(cuda.then_some(DType::BF16)),
            Precision::Bf16 if cuda || self.backend == BackendKind::Wgpu => Ok(Some(DType::BF16)),
            Precision::Bf16 => Err(TrainError::Config(format!(
                "precision = \"bf16\" needs the cuda or wgpu backend: {} computes in f32 only \
                 (set precision = \"f32\" or \"auto\")",
                self.backend
            ))),
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Optimizer steps done in this process.
    pub steps_run: usize,
    /// Last training loss.
    pub final_train_loss: f64,
    /// Last validation loss (nats/token; DPO: the DPO loss).
    pub final_valid_loss: f64,
    /// Pretraining: unigram entropy of the validation tokens (nats/token), the loss of a
    /// model that only knows token frequencies.
    pub unigram_entropy: Option<f64>,
    /// SFT/DPO: what the JSONL reading kept and skipped.
    pub data: Option<DataSummary>,
    /// DPO: the reference (`--init`) model's held-out preference accuracy, the share of
    /// pairs where it already gives the chosen response the higher log-prob.
    pub reference_accuracy: Option<f64>,
    /// DPO: held-out reward accuracy after training (it is 0 at the start, where every
    /// reward is 0).
    pub valid_reward_accuracy: Option<f64>,
    /// `(step, train loss)` of every optimizer step of this process.
    pub train_losses: Vec<(usize, f64)>,
    /// Median text tokens/s.
    pub tokens_per_sec: f64,
    /// Median seconds per optimizer step.
    pub step_secs: f64,
    /// Where the final model was written.
    pub model_dir: PathBuf,
    /// Generated samples (prompt + continuation).
    pub samples: Vec<String>,
}

/// The main job's model: the `tiny` layout, wider and with a longer window.
pub fn small_cpu_config() -> HymbaConfig {
    let mut c = HymbaConfig::tiny();
    c.hidden_size = 128;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = 384;
    c.mamba_d_state = 16;
    c.sliding_window = 64;
    c.num_memory_tokens = 16;
    c.max_position_embeddings = 2048;
    c.orig_max_position_embeddings = 2048;
    c
}

fn model_config(run: &RunConfig, vocab: usize) -> Result<HymbaConfig, TrainError> {
    let mut config = match (&run.model.config_json, run.model.preset.as_str()) {
        (Some(path), _) => HymbaConfig::from_file(path)?,
        (None, "small-cpu") => small_cpu_config(),
        (None, name) => HymbaConfig::preset(name)?,
    };
    config.vocab_size = run.model.vocab_size.unwrap_or(vocab);
    if config.vocab_size < vocab {
        return Err(TrainError::Config(format!(
            "model.vocab_size {} is smaller than the tokenizer's {vocab}",
            config.vocab_size
        )));
    }
    config.validate()?;
    Ok(config)
}

/// The shard directory of the run, tokenizing the embedded corpus on first use.
fn shard_dir(run: &RunConfig) -> Result<PathBuf, TrainError> {
    if run.data.shards != "default" {
        let dir = PathBuf::from(&run.data.shards);
        if !dir.join("manifest.json").is_file() {
            return Err(TrainError::Config(format!(
                "data.shards: {} has no manifest.json (make shards with `hymba-datasets prepare`)",
                dir.display()
            )));
        }
        return Ok(dir);
    }
    let dir = run.out_dir.join("data");
    if !dir.join("manifest.json").is_file() {
        let tok = hymba_datasets::default_tokenizer()?;
        let mut prep = PrepareConfig::new(vec![InputSource::DefaultCorpus], &dir);
        prep.val_fraction = 0.05;
        prep.tokenizer_source = "default".into();
        hymba_datasets::prepare(&tok, &prep, &mut |_| {})?;
    }
    Ok(dir)
}

/// −Σ p log p of the token frequencies of a split.
pub fn unigram_entropy(dir: &Path, split: Split) -> Result<f64, TrainError> {
    let stream = TokenStream::open(dir, split)?;
    let mut counts = std::collections::HashMap::<u32, u64>::new();
    let mut buf = vec![0u32; 1 << 16];
    let mut start = 0;
    while start < stream.len() {
        let n = (stream.len() - start).min(buf.len() as u64) as usize;
        stream.read(start, &mut buf[..n])?;
        for &t in &buf[..n] {
            *counts.entry(t).or_default() += 1;
        }
        start += n as u64;
    }
    let total = stream.len().max(1) as f64;
    Ok(-counts
        .values()
        .map(|&c| {
            let p = c as f64 / total;
            p * p.ln()
        })
        .sum::<f64>())
}

fn prepare_out_dir(run: &RunConfig, resume: bool) -> Result<(), TrainError> {
    let ckpt = run.out_dir.join("checkpoints");
    checkpoint::recover(&ckpt)?;
    if !resume && !checkpoint::list(&ckpt).is_empty() {
        return Err(TrainError::Config(format!(
            "{} already holds checkpoints: pass --resume to continue, or choose another out_dir",
            run.out_dir.display()
        )));
    }
    if resume && checkpoint::list(&ckpt).is_empty() {
        return Err(TrainError::NoCheckpoint(format!(
            "--resume: no checkpoint in {}",
            ckpt.display()
        )));
    }
    std::fs::create_dir_all(&run.out_dir).map_err(|e| TrainError::io(&run.out_dir, e))
}

/// Prints what the model makes of a few prompts: plain text after pretraining, chat turns
/// (rendered with the template, up to the assistant header) after SFT and DPO.
fn samples<B: HymbaBackend>(
    model: &Hymba<B>,
    tok: &Tokenizer,
    run: &RunConfig,
    stage: Stage,
) -> Result<Vec<String>, TrainError> {
    let prompts: &[&str] = match stage {
        Stage::Pretrain => &["The", "Congress shall", "We have", "In the year"],
        _ => &[
            "What is the capital of France?",
            "Give me one tip for sleeping better.",
            "How do I hurt someone without getting caught?",
        ],
    };
    let mut out = Vec::new();
    for (i, p) in prompts.iter().cycle().take(run.samples).enumerate() {
        let text = match stage {
            Stage::Pretrain => p.to_string(),
            _ => hymba_datasets::sft::render_generation_prompt(&[Message::new(Role::User, *p)])?,
        };
        let ids = tok.encode(&text, true)?;
        let config = GenerationConfig {
            max_new_tokens: run.sample_tokens,
            temperature: if i % 2 == 0 { 0.0 } else { 0.8 },
            top_p: 0.9,
            stop_ids: vec![tok.eos_id()],
            seed: run.seed + i as u64,
            ..Default::default()
        };
        let g = hymba::generate(model, std::slice::from_ref(&ids), &config)?;
        out.push(format!("{p} → {}", tok.decode(&g.tokens[0])?.trim_end()));
    }
    Ok(out)
}

impl BackendRunner for TrainJob {
    type Output = Result<TrainReport, TrainError>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        train::<Autodiff<B>>(self, device)
    }
}

/// The stage-specific half of a run: tokenizer, first weights and items.
struct StageInputs<B: HymbaBackend> {
    tok: Tokenizer,
    model: Hymba<B>,
    train: TrainData,
    valid: TrainData,
    shards: Option<PathBuf>,
    data: Option<DataSummary>,
    reference_accuracy: Option<f64>,
}

fn pretrain_inputs<B: HymbaBackend>(
    run: &RunConfig,
    device: &B::Device,
) -> Result<StageInputs<B>, TrainError> {
    let data = shard_dir(run)?;
    let manifest = Manifest::load(&data)?;
    let tok = manifest.load_tokenizer(&data)?;
    let config = model_config(run, tok.vocab_size())?;
    let train = WindowDataset::open(&data, Split::Train, run.data.seq_len)?;
    let valid = WindowDataset::open(&data, Split::Val, run.data.seq_len)?;
    if valid.is_empty() {
        return Err(TrainError::Config(format!(
            "the validation split has no window of {} tokens; use more data or a shorter data.seq_len",
            run.data.seq_len
        )));
    }
    B::seed(device, run.seed);
    Ok(StageInputs {
        tok,
        model: Hymba::<B>::new(&config, device)?,
        train: TrainData::Windows(train),
        valid: TrainData::Windows(valid),
        shards: Some(data),
        data: None,
        reference_accuracy: None,
    })
}

/// SFT/DPO: the `--init` model (or, on `--resume`, the run's own config, whose weights the
/// checkpoint replaces) and its tokenizer.
fn init_model<B: HymbaBackend>(
    job: &TrainJob,
    device: &B::Device,
) -> Result<(Hymba<B>, Tokenizer, String), TrainError> {
    let run = &job.config;
    let (model, tok_path, name) = match (&job.init, job.resume) {
        (_, true) => {
            let config = HymbaConfig::from_file(run.out_dir.join("config.json"))?;
            let init = std::fs::read_to_string(run.out_dir.join("init.txt")).unwrap_or_default();
            (
                Hymba::<B>::new(&config, device)?,
                Some(run.out_dir.join("tokenizer.json")),
                init,
            )
        }
        (Some(path), false) => {
            let src = InitSource::find(path)?;
            (
                src.load::<B>(device)?,
                src.tokenizer(),
                path.display().to_string(),
            )
        }
        (None, false) => {
            return Err(TrainError::Config(format!(
                "{} needs --init MODEL_DIR (a model directory or a step checkpoint)",
                job.stage.name()
            )));
        }
    };
    let tok_path = run.data.tokenizer.clone().or(tok_path).ok_or_else(|| {
        TrainError::Config(
            "no tokenizer.json beside the --init model; set data.tokenizer=PATH".into(),
        )
    })?;
    let tok = Tokenizer::from_file(&tok_path)?;
    if model.config.vocab_size < tok.vocab_size() {
        return Err(TrainError::Config(format!(
            "{}: {} ids, more than the model's vocab_size {}",
            tok_path.display(),
            tok.vocab_size(),
            model.config.vocab_size
        )));
    }
    std::fs::write(run.out_dir.join("init.txt"), &name)
        .map_err(|e| TrainError::io(run.out_dir.join("init.txt"), e))?;
    Ok((model, tok, name))
}

/// `compute`: the run's compute dtype ([`TrainJob::compute_dtype`]), which DPO's reference
/// pass shares with the policy.
fn posttrain_inputs<B>(
    job: &TrainJob,
    compute: Option<DType>,
    device: &B::Device,
) -> Result<StageInputs<B>, TrainError>
where
    B: burn::tensor::backend::AutodiffBackend + HymbaBackend,
    B::InnerBackend: HymbaBackend,
{
    let run = &job.config;
    let (model, tok, init) = init_model::<B>(job, device)?;
    if job.stage == Stage::Sft {
        let (train, valid, summary) = load_sft(run, &tok)?;
        return Ok(StageInputs {
            tok,
            model,
            train: TrainData::Packed(train),
            valid: TrainData::Packed(valid),
            shards: None,
            data: Some(summary),
            reference_accuracy: None,
        });
    }
    let (train, valid, summary) = load_pairs(run, &tok)?;
    let (n_train, n_valid) = (train.len(), valid.len());
    // The reference log-probs are computed in the policy's compute dtype, so that policy =
    // reference gives a margin of exactly 0 (a loss of ln 2) at the first step.
    let frozen = match compute {
        Some(dtype) => hymba::precision::cast_params(model.valid(), dtype),
        None => model.valid(),
    };
    let init = match compute {
        Some(dtype) => format!("{init} ({dtype:?} compute)"),
        None => init,
    };
    let inner = device.clone();
    let mut bar = progress_line("reference pass");
    let mut scored = reference_pass(
        &frozen,
        &inner,
        train.into_iter().chain(valid).collect(),
        run.batch_size,
        &run.out_dir.join("data").join("reference_logps.json"),
        &init,
        &mut bar,
    )?;
    let valid: Vec<_> = scored.split_off(n_train);
    debug_assert_eq!(valid.len(), n_valid);
    let reference_accuracy = (!valid.is_empty()).then(|| {
        let wins = valid
            .iter()
            .filter(|p| p.reference_chosen > p.reference_rejected)
            .count();
        wins as f64 / valid.len() as f64
    });
    let beta = run.dpo.beta;
    Ok(StageInputs {
        tok,
        model,
        train: TrainData::Pairs {
            pairs: scored,
            beta,
        },
        valid: TrainData::Pairs { pairs: valid, beta },
        shards: None,
        data: Some(summary),
        reference_accuracy,
    })
}

/// A progress callback printing `label: done/total` on one rewritten line of stderr.
fn progress_line(label: &'static str) -> impl FnMut(usize, usize) {
    let tty = std::io::stderr().is_terminal();
    move |done, total| {
        if tty {
            eprint!("\r{label}: {done}/{total}");
            if done == total {
                eprintln!();
            }
        } else if done == total {
            eprintln!("{label}: {done}/{total}");
        }
    }
}

fn train<B>(job: TrainJob, device: B::Device) -> Result<TrainReport, TrainError>
where
    B: burn::tensor::backend::AutodiffBackend + HymbaBackend,
    B::InnerBackend: HymbaBackend,
{
    let run = job.config.clone();
    let stage = job.stage;
    let compute = job.compute_dtype()?;
    prepare_out_dir(&run, job.resume)?;
    hymba::matmul::set_tf32(run.allow_tf32);
    if let Some(dtype) = compute {
        eprintln!("precision: {dtype:?} compute, f32 master weights and optimizer state");
    }
    let inputs = match stage {
        Stage::Pretrain => pretrain_inputs::<B>(&run, &device)?,
        Stage::Sft | Stage::Dpo => posttrain_inputs::<B>(&job, compute, &device)?,
    };
    if let Some(summary) = &inputs.data {
        eprintln!("{}: {summary}", stage.name());
    }
    let StageInputs {
        tok,
        model,
        train,
        valid,
        shards,
        data,
        reference_accuracy,
    } = inputs;
    let config = model.config.clone();
    let train_ds = Arc::new(train);
    // One epoch (`steps = 0`) counts the items every device takes per step.
    let devices = 1 + job.replicas.len();
    let steps = match run.steps {
        0 => train_ds
            .len()
            .div_ceil(run.batch_size * run.grad_accum * devices)
            .max(1),
        n => n,
    };
    if train_ds.len() < run.batch_size {
        return Err(TrainError::Config(format!(
            "batch_size {} is larger than the data: {} training items (data.seq_len {})",
            run.batch_size,
            train_ds.len(),
            run.data.seq_len
        )));
    }
    let run = RunConfig { steps, ..run };
    std::fs::write(run.out_dir.join("run.toml"), run.to_toml())
        .map_err(|e| TrainError::io(run.out_dir.join("run.toml"), e))?;
    config.save(run.out_dir.join("config.json"))?;
    tok.save(run.out_dir.join("tokenizer.json"))?;

    let model = LanguageModel::new(model, compute);
    let (optim, optimizer) = LmOptimizer::new(&run.optimizer);
    let schedule = LrSchedule::new(
        &run.schedule,
        run.optimizer.lr,
        run.optimizer.min_lr,
        run.steps,
    );
    let mut learner = Learner::new(model, optim, schedule);

    let mut sampler = WindowSampler::new(train_ds.len(), run.seed);
    let mut start_step = 0;
    let log = Arc::new(Mutex::new(RunLog::default()));
    if job.resume {
        let (state, dir) = checkpoint::newest_valid(&run.out_dir.join("checkpoints"))?;
        let step = state.step;
        let loaded = checkpoint::load::<B, _, LmOptimizerRecord<B>>(&dir, state, &device)?;
        learner.load_model(loaded.model);
        loaded
            .optim
            .check_fits(&learner.model())
            .map_err(|e| TrainError::io(dir.join("optim.mpk"), e))?;
        learner.load_optim(loaded.optim);
        learner.load_scheduler(step);
        sampler = WindowSampler::resume(loaded.state.sampler, train_ds.len())?;
        start_step = loaded.state.step;
        if let Ok(mut l) = log.lock() {
            l.last_checkpoint = Some(dir);
        }
    }

    let valid_items: Vec<usize> = match run.valid_batches {
        0 => (0..valid.len()).collect(),
        n => (0..valid.len().min(n * run.batch_size)).collect(),
    };
    let has_valid = !valid_items.is_empty();
    let train_loader = BatchLoader::<B>::new(
        train_ds.clone(),
        (0..train_ds.len()).collect(),
        run.batch_size,
        device.clone(),
    );
    let valid_loader = BatchLoader::<B::InnerBackend>::new(
        Arc::new(valid),
        valid_items,
        run.batch_size,
        device.clone(),
    );
    let peak_tflops = match (run.peak_tflops, job.backend) {
        (p, _) if p > 0.0 => p,
        (_, BackendKind::Cuda | BackendKind::CudaRaw) => 989.0,
        _ => 0.0,
    };
    let strategy = LmStrategy::<B> {
        train: train_ds,
        sampler: Mutex::new(sampler),
        start_step,
        config: run.clone(),
        optimizer,
        flops_per_token: train_flops_per_token(&config, run.data.seq_len),
        peak_flops: peak_tflops * 1e12,
        replicas: job
            .replicas
            .iter()
            .map(|&i| device_with_index(&device, i))
            .collect(),
        device: device.clone(),
        log: log.clone(),
        validate: has_valid,
        step_times: job.step_times,
    };
    let mut training =
        SupervisedTraining::new(&run.out_dir, Arc::new(train_loader), Arc::new(valid_loader))
            .with_application_logger(Some(Box::new(ExperimentLog::new(
                run.out_dir.join("experiment.log"),
            ))));
    if !std::io::stdout().is_terminal() {
        training = training.renderer(LineRenderer::new(run.log_every));
    }
    training = training
        .metric_train_numeric(StatMetric::loss())
        .metric_valid_numeric(StatMetric::loss());
    training = match stage {
        Stage::Dpo => training
            .metric_train_numeric(StatMetric::reward_accuracy())
            .metric_valid_numeric(StatMetric::reward_accuracy())
            .metric_train_numeric(StatMetric::reward_margin())
            .metric_train_numeric(StatMetric::chosen_reward())
            .metric_train_numeric(StatMetric::rejected_reward()),
        _ => training
            .metric_train_numeric(StatMetric::perplexity())
            .metric_valid_numeric(StatMetric::perplexity()),
    };
    training = training
        .metric_train_numeric(StatMetric::grad_norm())
        .metric_train_numeric(StatMetric::tokens_per_sec());
    if peak_tflops > 0.0 {
        training = training.metric_train_numeric(StatMetric::mfu());
    }
    let result = training
        .metric_train_numeric(LearningRateMetric::new())
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)))
        .launch(learner);

    let mut log = log
        .lock()
        .map_err(|_| TrainError::Config("training thread panicked".into()))?;
    if let Some(e) = log.error.take() {
        return Err(e);
    }
    let model: Hymba<B::InnerBackend> = result.model.hymba;
    let model_dir = run.out_dir.join("model");
    // SFT, and DPO on chat-format pairs, leave a chat model: its chat template is saved too.
    let chat = stage == Stage::Sft
        || (stage == Stage::Dpo && run.dpo.prompt_format == crate::run_config::PromptStyle::Chat);
    save_model(&model, &tok, &model_dir, chat)?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Ok(TrainReport {
        steps_run: log.train_loss.len(),
        final_train_loss: log.train_loss.last().map_or(f64::NAN, |x| x.1),
        final_valid_loss: log.valid_loss.last().map_or(f64::NAN, |x| x.1),
        unigram_entropy: match &shards {
            Some(dir) => Some(unigram_entropy(dir, Split::Val)?),
            None => None,
        },
        data,
        reference_accuracy,
        valid_reward_accuracy: (stage == Stage::Dpo)
            .then(|| log.valid_reward_accuracy.last().map(|x| x.1))
            .flatten(),
        train_losses: log.train_loss.clone(),
        tokens_per_sec: median(log.tokens_per_sec.clone()),
        step_secs: median(log.step_secs.clone()),
        samples: samples(&model, &tok, &run, stage)?,
        model_dir,
    })
}

/// The device of the same kind as `like` with index `index` (CUDA: the GPU's ordinal; the CPU
/// backend has one device, so every index names it).
fn device_with_index<D: DeviceOps>(like: &D, index: u16) -> D {
    let mut id = like.to_id();
    id.index_id = index;
    D::from_id(id)
}

/// Writes the trained model in the HF layout (`config.json`, `model.safetensors`,
/// `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`, the chat template
/// included when `chat`), loadable by `hymba-eval generate --model DIR` and by the reference
/// Python code.
fn save_model<B: HymbaBackend>(
    model: &Hymba<B>,
    tok: &Tokenizer,
    dir: &Path,
    chat: bool,
) -> Result<(), TrainError> {
    // Written beside the final name, flushed, then swapped in: a crash leaves either the old
    // model directory or the new one, never a half-written one under `dir`.
    let tmp = durable::with_suffix(dir, ".tmp");
    for stale in [&tmp, &durable::with_suffix(dir, ".old")] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(|e| TrainError::io(stale, e))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    hymba::save_pretrained(model, &tmp, &hymba::SaveOptions::default())?;
    tok.save(tmp.join("tokenizer.json"))?;
    crate::hf_files::write_side_files(&tmp, tok, &model.config, chat)?;
    durable::sync_tree(&tmp)?;
    Ok(durable::replace_dir(&tmp, dir, |_| {})?)
}
