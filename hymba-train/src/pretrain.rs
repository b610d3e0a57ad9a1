//! `hymba-train pretrain`: data → model → burn-train `Learner` with [`LmStrategy`] →
//! checkpoints, loss curve, final model and samples.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::backend::Autodiff;
use burn::train::metric::LearningRateMetric;
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use hymba::{BackendKind, BackendRunner, GenerationConfig, Hymba, HymbaBackend, HymbaConfig};
use hymba_datasets::{
    InputSource, Manifest, PrepareConfig, Split, TokenStream, Tokenizer, WindowDataset,
    WindowSampler,
};

use std::io::IsTerminal;

use crate::checkpoint;
use crate::data::WindowLoader;
use crate::error::TrainError;
use crate::flops::train_flops_per_token;
use crate::metrics::StatMetric;
use crate::model::LanguageModel;
use crate::optim::LmOptimizer;
use crate::renderer::LineRenderer;
use crate::run_config::RunConfig;
use crate::schedule::LrSchedule;
use crate::strategy::{LmStrategy, RunLog};

/// A pretraining run to launch on some backend.
#[derive(Debug, Clone)]
pub struct PretrainJob {
    /// The resolved run config.
    pub config: RunConfig,
    /// Continue from the newest checkpoint in `out_dir`.
    pub resume: bool,
    /// The backend (for the MFU peak).
    pub backend: BackendKind,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct PretrainReport {
    /// Optimizer steps done in this process.
    pub steps_run: usize,
    /// Last training loss.
    pub final_train_loss: f64,
    /// Last validation loss (nats/token).
    pub final_valid_loss: f64,
    /// Unigram entropy of the training tokens (nats/token): the loss of a model that only
    /// knows token frequencies.
    pub unigram_entropy: f64,
    /// Median text tokens/s.
    pub tokens_per_sec: f64,
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
    if !resume && !checkpoint::list(&ckpt).is_empty() {
        return Err(TrainError::Config(format!(
            "{} already holds checkpoints: pass --resume to continue, or choose another out_dir",
            run.out_dir.display()
        )));
    }
    if resume && checkpoint::list(&ckpt).is_empty() {
        return Err(TrainError::Config(format!(
            "--resume: no checkpoint in {}",
            ckpt.display()
        )));
    }
    std::fs::create_dir_all(&run.out_dir).map_err(|e| TrainError::io(&run.out_dir, e))
}

fn samples<B: HymbaBackend>(
    model: &Hymba<B>,
    tok: &Tokenizer,
    run: &RunConfig,
) -> Result<Vec<String>, TrainError> {
    let prompts = ["The", "Congress shall", "We have", "In the year"];
    let mut out = Vec::new();
    for (i, p) in prompts.iter().cycle().take(run.samples).enumerate() {
        let ids = tok.encode(p, true)?;
        let config = GenerationConfig {
            max_new_tokens: run.sample_tokens,
            temperature: if i % 2 == 0 { 0.0 } else { 0.8 },
            top_p: 0.9,
            stop_ids: vec![tok.eos_id()],
            seed: run.seed + i as u64,
            ..Default::default()
        };
        let g = hymba::generate(model, std::slice::from_ref(&ids), &config)?;
        out.push(format!("{p}{}", tok.decode(&g.tokens[0])?));
    }
    Ok(out)
}

impl BackendRunner for PretrainJob {
    type Output = Result<PretrainReport, TrainError>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        train::<Autodiff<B>>(self, device)
    }
}

fn train<B>(job: PretrainJob, device: B::Device) -> Result<PretrainReport, TrainError>
where
    B: burn::tensor::backend::AutodiffBackend + HymbaBackend,
    B::InnerBackend: HymbaBackend,
{
    let run = job.config;
    prepare_out_dir(&run, job.resume)?;
    let data = shard_dir(&run)?;
    let manifest = Manifest::load(&data)?;
    let tok = manifest.load_tokenizer(&data)?;
    let config = model_config(&run, tok.vocab_size())?;

    let train_ds = Arc::new(WindowDataset::open(&data, Split::Train, run.data.seq_len)?);
    let valid_ds = Arc::new(WindowDataset::open(&data, Split::Val, run.data.seq_len)?);
    if train_ds.len() < run.batch_size {
        return Err(TrainError::Config(format!(
            "batch_size {} is larger than the data: the training split has {} windows of {} tokens",
            run.batch_size,
            train_ds.len(),
            run.data.seq_len
        )));
    }
    if valid_ds.is_empty() {
        return Err(TrainError::Config(format!(
            "the validation split has no window of {} tokens; use more data or a shorter data.seq_len",
            run.data.seq_len
        )));
    }
    std::fs::write(run.out_dir.join("run.toml"), run.to_toml())
        .map_err(|e| TrainError::io(run.out_dir.join("run.toml"), e))?;
    config.save(run.out_dir.join("config.json"))?;

    B::seed(&device, run.seed);
    let model = LanguageModel {
        hymba: Hymba::<B>::new(&config, &device)?,
    };
    let (optim, snapshot) = LmOptimizer::new(&run.optimizer);
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
        let (step, dir) = checkpoint::list(&run.out_dir.join("checkpoints"))
            .pop()
            .ok_or_else(|| TrainError::Config("--resume: no checkpoint".into()))?;
        let loaded = checkpoint::load::<B, _, _>(&dir, &device)?;
        learner.load_model(loaded.model);
        learner.load_optim(loaded.optim);
        learner.load_scheduler(step);
        sampler = WindowSampler::resume(loaded.state.sampler, train_ds.len())?;
        start_step = loaded.state.step;
        if let Ok(mut l) = log.lock() {
            l.last_checkpoint = Some(dir);
        }
    }

    let valid_windows: Vec<usize> = match run.valid_batches {
        0 => (0..valid_ds.len()).collect(),
        n => (0..valid_ds.len().min(n * run.batch_size)).collect(),
    };
    let train_loader = WindowLoader::<B>::new(
        train_ds.clone(),
        (0..train_ds.len()).collect(),
        run.batch_size,
        device.clone(),
    );
    let valid_loader = WindowLoader::<B::InnerBackend>::new(
        valid_ds,
        valid_windows,
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
        snapshot,
        flops_per_token: train_flops_per_token(&config, run.data.seq_len),
        peak_flops: peak_tflops * 1e12,
        device: device.clone(),
        log: log.clone(),
    };
    let mut training =
        SupervisedTraining::new(&run.out_dir, Arc::new(train_loader), Arc::new(valid_loader));
    if !std::io::stdout().is_terminal() {
        training = training.renderer(LineRenderer::new(run.log_every));
    }
    let result = training
        .metric_train_numeric(StatMetric::loss())
        .metric_valid_numeric(StatMetric::loss())
        .metric_train_numeric(StatMetric::perplexity())
        .metric_valid_numeric(StatMetric::perplexity())
        .metric_train_numeric(StatMetric::grad_norm())
        .metric_train_numeric(StatMetric::tokens_per_sec())
        .metric_train_numeric(StatMetric::mfu())
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
    save_model(&model, &tok, &model_dir)?;
    let mut tps = log.tokens_per_sec.clone();
    tps.sort_by(f64::total_cmp);
    Ok(PretrainReport {
        steps_run: log.train_loss.len(),
        final_train_loss: log.train_loss.last().map_or(f64::NAN, |x| x.1),
        final_valid_loss: log.valid_loss.last().map_or(f64::NAN, |x| x.1),
        unigram_entropy: unigram_entropy(&data, Split::Val)?,
        tokens_per_sec: tps.get(tps.len() / 2).copied().unwrap_or(0.0),
        samples: samples(&model, &tok, &run)?,
        model_dir,
    })
}

/// Writes the trained model in the HF layout (`config.json`, `model.safetensors`,
/// `tokenizer.json`), loadable by `hymba-eval generate --model DIR` and by the reference
/// Python code.
fn save_model<B: HymbaBackend>(
    model: &Hymba<B>,
    tok: &Tokenizer,
    dir: &Path,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    hymba::save_pretrained(model, dir, &hymba::SaveOptions::default())?;
    tok.save(dir.join("tokenizer.json"))?;
    Ok(())
}
