//! `hymba-eval`: evaluation, benchmarks and generation for Hymba.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};
use hymba::weights::{CONFIG_FILE, SaveDtype, SaveOptions};
use hymba::{BackendKind, GenerationConfig, HymbaConfig, run_on};
use hymba_eval::checkpoint::{InitJob, ParamsJob};
use hymba_eval::generate::{GenerateJob, Weights, checkpoint_tokenizer, encode_prompts, parse_ids};

/// Evaluate, benchmark and sample Hymba models on CPU (ndarray), wgpu or CUDA.
#[derive(Parser, Debug)]
#[command(name = "hymba-eval", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate tokens from prompts and print them with tokens/s.
    Generate(GenerateArgs),
    /// Write a randomly initialised checkpoint (HF layout: config.json + model.safetensors).
    Init(InitArgs),
    /// Load a checkpoint directory and print its parameter count.
    Params(ParamsArgs),
    /// Compare a backend with the CPU: forward logits, and prefill + decode vs forward.
    Check(CheckArgs),
    /// Zero-shot multiple choice (lm-eval style acc and acc_norm) over JSONL task files.
    Tasks(TasksArgs),
    /// Token-weighted perplexity on held-out shards, with sliding windows.
    Ppl(PplArgs),
    /// In-context recall: synthetic phone-book lookup at given distances, or extractive QA
    /// (exact match / F1) on a recall JSONL file.
    Recall(RecallArgs),
    /// Benchmarks: `bench scan` times the selective-scan kernels, `bench matmul` the
    /// projections' matmul, `bench cache` sizes the generation cache, `bench generate`
    /// compares prefill/decode speed and cache with an equal-size attention-only model.
    #[command(subcommand)]
    Bench(hymba_eval::bench_scan::BenchCommand),
    /// The paper's design roadmap (Tab. 1) at tiny scale: attention-only, SSM-only,
    /// sequential and parallel hybrids, + SWA, + KV sharing, + meta tokens, trained on the
    /// same data and budget; plus attention-share and meta-token sweeps. Prints one table.
    Ablate(hymba_eval::ablate::AblateArgs),
}

/// Where the model runs.
#[derive(Args, Debug)]
struct BackendArgs {
    /// Backend: ndarray (CPU), wgpu or cuda. wgpu and cuda need the binary to be built with
    /// the feature of the same name.
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Device index (CUDA).
    #[arg(long, default_value_t = 0)]
    device: usize,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Architecture preset (random weights).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Sequences in the batch.
    #[arg(long, default_value_t = 3)]
    batch: usize,
    /// Tokens per sequence (use ≥ 3× the SWA window to exercise the SWA cache).
    #[arg(long, default_value_t = 56)]
    len: usize,
    /// Seed of weights and tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn check(args: CheckArgs) -> Result<()> {
    let config = HymbaConfig::preset(&args.preset)?;
    if args.batch == 0 || args.len < 2 {
        bail!("--batch must be positive and --len at least 2");
    }
    let kind: BackendKind = args.backend.backend.parse()?;
    let job = hymba_eval::check::CheckJob {
        config,
        batch: args.batch,
        len: args.len,
        seed: args.seed,
    };
    let r = run_on(kind, args.backend.device, job)??;
    println!(
        "{kind} vs ndarray ({}, batch {}, {} tokens): forward max |diff| = {:.3e}; prefill {} + decode vs forward max |diff| = {:.3e}",
        args.preset,
        args.batch,
        args.len,
        r.forward_vs_cpu,
        args.len / 2,
        r.decode_vs_forward
    );
    Ok(())
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("prompts").required(true).args(["prompt_ids", "prompt"])))]
struct GenerateArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Architecture preset: tiny, hymba-125m, hymba-350m or hymba-1.5b (random weights).
    #[arg(long, default_value = "tiny", conflicts_with_all = ["config", "model"])]
    preset: String,
    /// An HF `config.json` instead of a preset (random weights).
    #[arg(long, conflicts_with = "model")]
    config: Option<PathBuf>,
    /// A checkpoint directory (config.json + safetensors, e.g. nvidia/Hymba-1.5B-Base).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Prompt token ids, comma separated. Repeat the flag for a batch of prompts (lengths
    /// may differ).
    #[arg(long = "prompt-ids", value_name = "IDS")]
    prompt_ids: Vec<String>,
    /// A text prompt, encoded with the model directory's tokenizer.json. Repeat for a batch.
    #[arg(long, value_name = "TEXT", requires = "model")]
    prompt: Vec<String>,
    /// The tokenizer.json to use instead of the one in the model directory.
    #[arg(long, value_name = "FILE", requires = "prompt")]
    tokenizer: Option<PathBuf>,
    /// Wrap each text prompt in the chat template (instruct models).
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Keep generating after the tokenizer's EOS (text prompts stop at EOS by default).
    #[arg(long)]
    ignore_eos: bool,
    /// Tokens to generate per prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Stop a row after one of these ids (comma separated).
    #[arg(long, default_value = "")]
    stop_ids: String,
    /// Seed of the sampler and of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct InitArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Architecture preset: tiny, hymba-125m, hymba-350m or hymba-1.5b.
    #[arg(long, default_value = "tiny", conflicts_with = "config")]
    preset: String,
    /// An HF `config.json` instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the vocabulary size (e.g. to match --tokenizer).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// The checkpoint directory to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Weight dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// A tokenizer.json to copy into the directory.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Split the weights into shards of at most this many MB (default: one file).
    #[arg(long, value_name = "MB")]
    shard_mb: Option<u64>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct ParamsArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// The checkpoint directory.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
}

fn generate(args: GenerateArgs) -> Result<()> {
    let config = match (&args.model, &args.config) {
        (Some(dir), _) => HymbaConfig::from_file(dir.join(CONFIG_FILE))?,
        (None, Some(path)) => HymbaConfig::from_file(path)?,
        (None, None) => HymbaConfig::preset(&args.preset)?,
    };
    let mut stop_ids = parse_ids(&args.stop_ids)
        .map_err(anyhow::Error::msg)
        .context("--stop-ids")?;
    let mut tokenizer = None;
    let mut prompts = args
        .prompt_ids
        .iter()
        .map(|p| parse_ids(p).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()
        .context("--prompt-ids")?;
    if let Some(dir) = args.model.as_deref().filter(|_| !args.prompt.is_empty()) {
        let tok = checkpoint_tokenizer(dir, args.tokenizer.as_deref())?;
        let system = args.system.as_deref();
        prompts.extend(encode_prompts(
            &tok,
            &args.prompt,
            args.chat,
            system,
            config.vocab_size,
        )?);
        if !args.ignore_eos {
            stop_ids.push(tok.eos_id());
        }
        tokenizer = Some(tok);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    let kind: BackendKind = args.backend.backend.parse()?;
    let generation = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        stop_ids,
        seed: args.seed,
    };
    let weights = match args.model {
        Some(dir) => Weights::Pretrained(dir),
        None => Weights::Random {
            config: Box::new(config),
            seed: args.seed,
        },
    };
    let job = GenerateJob {
        weights,
        prompts,
        generation,
    };
    let report = run_on(kind, args.backend.device, job)??;
    let texts = args
        .prompt_ids
        .iter()
        .map(|_| None)
        .chain(args.prompt.iter().map(Some));
    for (i, (tokens, prompt)) in report.tokens.iter().zip(texts).enumerate() {
        match (&tokenizer, prompt) {
            // A base model continues the prompt; an instruct model answers it.
            (Some(tok), Some(prompt)) if args.chat => {
                println!("[{i}] {prompt}\n  → {}", tok.decode(tokens)?);
            }
            (Some(tok), Some(prompt)) => println!("[{i}] {prompt}{}", tok.decode(tokens)?),
            _ => {
                let ids: Vec<String> = tokens.iter().map(u32::to_string).collect();
                println!("[{i}] {}", ids.join(","));
            }
        }
    }
    println!(
        "backend {kind}: model ready in {:.1} s, prefill {:.1} tokens/s, decode {:.1} tokens/s \
         ({} steps × {} rows)",
        report.load_secs,
        report.prefill_tokens_per_sec,
        report.decode_tokens_per_sec,
        report.decode_steps,
        report.tokens.len()
    );
    Ok(())
}

fn init(args: InitArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => HymbaConfig::from_file(path)?,
        None => HymbaConfig::preset(&args.preset)?,
    };
    if let Some(v) = args.vocab_size {
        config.vocab_size = v;
        config.validate()?;
    }
    let dtype: SaveDtype = args.dtype.parse()?;
    let kind: BackendKind = args.backend.backend.parse()?;
    let job = InitJob {
        config,
        seed: args.seed,
        out: args.out.clone(),
        options: SaveOptions {
            dtype,
            tokenizer: args.tokenizer,
            max_shard_bytes: args.shard_mb.map(|mb| mb * 1_000_000),
        },
    };
    let report = run_on(kind, args.backend.device, job)??;
    println!(
        "wrote {}: {} parameters as {dtype} in {:.1} s",
        args.out.display(),
        thousands(report.params),
        report.secs
    );
    Ok(())
}

fn params(args: ParamsArgs) -> Result<()> {
    let kind: BackendKind = args.backend.backend.parse()?;
    let job = ParamsJob {
        dir: args.model.clone(),
    };
    let report = run_on(kind, args.backend.device, job)??;
    println!(
        "{}: {} parameters in {} tensors, {} layers (config count {}); loaded on {kind} in {:.1} s",
        args.model.display(),
        thousands(report.params),
        report.tensors,
        report.layers,
        thousands(report.config_params),
        report.load_secs
    );
    Ok(())
}

/// `1522797824` → `1,522,797,824`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Args, Debug)]
struct TasksArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    weights: EvalModelArgs,
    /// JSONL files in the multiple-choice format (`{"context", "choices", "gold"}`), e.g.
    /// ../shared/data/eval/*.jsonl.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Score at most this many questions per task.
    #[arg(long)]
    limit: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Fail on the first malformed line instead of skipping and reporting it.
    #[arg(long)]
    strict: bool,
    /// Write the scores as JSON to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Which model an evaluation runs, and its tokenizer.
#[derive(Args, Debug)]
struct EvalModelArgs {
    /// A checkpoint directory (config.json + safetensors + tokenizer.json).
    #[arg(long, value_name = "DIR", required_unless_present = "preset")]
    model: Option<PathBuf>,
    /// Random weights of this preset instead (needs --tokenizer); for smoke tests.
    #[arg(long, conflicts_with = "model", requires = "tokenizer")]
    preset: Option<String>,
    /// The tokenizer.json to use instead of the checkpoint's.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Seed of the random weights (--preset), and of synthetic data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl EvalModelArgs {
    /// The model and tokenizer of `--model DIR` (its tokenizer.json unless `--tokenizer`),
    /// or random weights of `--preset` with `--tokenizer` (the vocabulary grown to fit it).
    fn load(&self) -> Result<(Weights, hymba_datasets::Tokenizer)> {
        Ok(match (&self.model, &self.preset) {
            (Some(dir), _) => (
                Weights::Pretrained(dir.clone()),
                checkpoint_tokenizer(dir, self.tokenizer.as_deref())?,
            ),
            (None, Some(preset)) => {
                let path = self
                    .tokenizer
                    .as_deref()
                    .context("--preset needs --tokenizer")?;
                let tok = hymba_datasets::Tokenizer::from_file(path)?;
                let mut config = HymbaConfig::preset(preset)?;
                config.vocab_size = config.vocab_size.max(tok.vocab_size());
                let config = Box::new(config);
                (
                    Weights::Random {
                        config,
                        seed: self.seed,
                    },
                    tok,
                )
            }
            (None, None) => bail!("give --model DIR or --preset NAME"),
        })
    }
}

fn tasks(args: TasksArgs) -> Result<()> {
    use hymba_eval::tasks;
    tasks::check_files(&args.files).map_err(anyhow::Error::msg)?;
    if args.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let (weights, tok) = args.weights.load()?;
    let mut loaded = Vec::new();
    for file in &args.files {
        let task = tasks::load_task(file, &tok, args.limit, args.strict)
            .with_context(|| format!("task file {}", file.display()))?;
        for s in &task.skipped {
            eprintln!("warning: {}: skipped {s}", file.display());
        }
        loaded.push(task);
    }
    let kind: BackendKind = args.backend.backend.parse()?;
    let job = tasks::TasksJob {
        weights,
        tasks: loaded,
        batch_size: args.batch_size,
        pad_id: 0,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let scores = run_on(kind, args.backend.device, job)??;
    tasks::print_table(&scores);
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&scores)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
struct PplArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// A checkpoint directory (config.json + safetensors).
    #[arg(long, value_name = "DIR", required_unless_present = "preset")]
    model: Option<PathBuf>,
    /// Random weights of this preset instead; for smoke tests.
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    /// A shard folder written by `hymba-datasets prepare` (or by `hymba-train`'s default
    /// corpus, `<out_dir>/data`).
    #[arg(long, value_name = "DIR")]
    shards: PathBuf,
    /// Which split: val (held-out) or train.
    #[arg(long, default_value = "val")]
    split: String,
    /// Window length, tokens.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Window step (default: half the window, so every token past the first window has at
    /// least seq_len/2 tokens of context).
    #[arg(long)]
    stride: Option<usize>,
    /// Score at most this many tokens.
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Seed of the random weights (--preset).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn ppl(args: PplArgs) -> Result<()> {
    let split = match args.split.as_str() {
        "val" => hymba_datasets::Split::Val,
        "train" => hymba_datasets::Split::Train,
        other => bail!("--split {other}: expected val or train"),
    };
    let stride = args.stride.unwrap_or(args.seq_len / 2).max(1);
    if args.seq_len < 2 || stride > args.seq_len || args.batch_size == 0 {
        bail!("need --seq-len ≥ 2, 1 ≤ --stride ≤ --seq-len and --batch-size ≥ 1");
    }
    let weights = match (&args.model, &args.preset) {
        (Some(dir), _) => Weights::Pretrained(dir.clone()),
        (None, Some(preset)) => Weights::Random {
            config: Box::new(HymbaConfig::preset(preset)?),
            seed: args.seed,
        },
        (None, None) => bail!("give --model DIR or --preset NAME"),
    };
    let stream = hymba_datasets::TokenStream::open(&args.shards, split)
        .with_context(|| format!("shards in {}", args.shards.display()))?;
    let kind: BackendKind = args.backend.backend.parse()?;
    let job = hymba_eval::ppl::PplJob {
        weights,
        stream,
        seq_len: args.seq_len,
        stride,
        max_tokens: args.max_tokens,
        batch_size: args.batch_size,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let r = run_on(kind, args.backend.device, job)??;
    println!(
        "{} tokens ({}, seq_len {}, stride {}): nll {:.4} nats/token, perplexity {:.3}",
        r.tokens, args.split, r.seq_len, r.stride, r.nll, r.perplexity
    );
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("mode").required(true).args(["file", "phonebook"])))]
struct RecallArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    weights: EvalModelArgs,
    /// Extractive QA on this JSONL (`{"context", "question", "answers"}`).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Synthetic phone-book lookup instead.
    #[arg(long)]
    phonebook: bool,
    /// Phone-book entries per prompt (at most 24).
    #[arg(long, default_value_t = 20)]
    entries: usize,
    /// Distances (lines between the queried entry and the question), comma separated.
    #[arg(long, default_value = "1,5,10,20")]
    distances: String,
    /// Phone-book queries per distance, or QA questions at most.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Tokens to generate per answer.
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// Prompts per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Write the scores as JSON to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

fn recall(args: RecallArgs) -> Result<()> {
    use hymba_eval::recall::{self as rc, PhonebookRow};
    if args.batch_size == 0 || args.limit == 0 {
        bail!("--batch-size and --limit must be positive");
    }
    let (weights, tok) = args.weights.load()?;
    let kind: BackendKind = args.backend.backend.parse()?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let generate = |prompts: &[String]| -> Result<Vec<String>> {
        let ids = prompts
            .iter()
            .map(|p| tok.encode(p, true))
            .collect::<Result<Vec<_>, _>>()?;
        let job = rc::RecallJob {
            weights: weights.clone(),
            prompts: ids,
            max_new_tokens: args.max_new_tokens,
            stop_ids: vec![tok.eos_id()],
            batch_size: args.batch_size,
            progress,
        };
        let out = run_on(kind, args.backend.device, job)??;
        out.iter()
            .map(|t| Ok(rc::first_line(&tok.decode(t)?)))
            .collect()
    };
    let json = if let Some(file) = &args.file {
        let records = hymba_datasets::read_jsonl::<hymba_datasets::RecallExample>(file, false)
            .with_context(|| format!("recall file {}", file.display()))?;
        for s in &records.skipped {
            eprintln!("warning: {}: skipped {s}", file.display());
        }
        let examples: Vec<_> = records.records.into_iter().take(args.limit).collect();
        if examples.is_empty() {
            bail!("{}: no usable questions", file.display());
        }
        let prompts: Vec<String> = examples.iter().map(|e| e.prompt()).collect();
        let predictions = generate(&prompts)?;
        let (em, f1) = rc::qa_scores(&examples, &predictions);
        println!(
            "{} questions: exact match {em:.4}, F1 {f1:.4}",
            examples.len()
        );
        serde_json::json!({"file": file, "n": examples.len(), "exact_match": em, "f1": f1})
    } else {
        let distances = args
            .distances
            .split(',')
            .map(|d| d.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .context("--distances")?;
        let mut rows = Vec::new();
        for &distance in &distances {
            let items = (0..args.limit as u64)
                .map(|q| rc::phonebook(args.entries, distance, args.weights.seed * 1_000_003 + q))
                .collect::<Option<Vec<_>>>()
                .with_context(|| {
                    format!("distance {distance} needs 1 ≤ distance ≤ --entries ≤ 24")
                })?;
            let prompts: Vec<String> = items.iter().map(|i| i.prompt.clone()).collect();
            let predictions = generate(&prompts)?;
            let right = items
                .iter()
                .zip(&predictions)
                .filter(|(i, p)| i.answer.trim() == p.as_str())
                .count();
            rows.push(PhonebookRow {
                distance,
                n: items.len(),
                accuracy: right as f64 / items.len() as f64,
            });
        }
        println!("{:>9} {:>5} {:>9}", "distance", "n", "accuracy");
        for r in &rows {
            println!("{:>9} {:>5} {:>9.3}", r.distance, r.n, r.accuracy);
        }
        serde_json::json!({"entries": args.entries, "rows": rows})
    };
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Init(args) => init(args),
        Command::Params(args) => params(args),
        Command::Check(args) => check(args),
        Command::Tasks(args) => tasks(args),
        Command::Ppl(args) => ppl(args),
        Command::Recall(args) => recall(args),
        Command::Ablate(args) => hymba_eval::ablate::run(args).map(drop),
        Command::Bench(hymba_eval::bench_scan::BenchCommand::Scan(args)) => {
            hymba_eval::bench_scan::run(args)
                .map(drop)
                .map_err(Into::into)
        }
        Command::Bench(hymba_eval::bench_scan::BenchCommand::Matmul(args)) => {
            hymba_eval::bench_matmul::run(args)
                .map(drop)
                .map_err(Into::into)
        }
        Command::Bench(hymba_eval::bench_scan::BenchCommand::Cache(args)) => {
            hymba_eval::bench_cache::run(args)
                .map(drop)
                .map_err(Into::into)
        }
        Command::Bench(hymba_eval::bench_scan::BenchCommand::Generate(args)) => {
            hymba_eval::bench_generate::run(args)
                .map(drop)
                .map_err(Into::into)
        }
        Command::Bench(hymba_eval::bench_scan::BenchCommand::Step(args)) => {
            hymba_eval::bench_step::run(args)
                .map(drop)
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
