//! `hymba-eval bench generate`: prefill and decode throughput and cache size of a Hymba
//! config against a pure-attention Transformer with the same number of parameters, built
//! from the same code ([`hymba::roadmap::attention_baseline`]: every layer global, no SSM
//! heads, no meta tokens, no KV sharing). The paper's Tab. 2 compares against Llama-3.2-3B
//! instead; an equal-size baseline isolates what the architecture buys.
//!
//! Decode is greedy and stays on the device (argmax → next input), so the figure is the
//! model's, not the host loop's: the only synchronisation is after the last step.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use hymba::{BackendKind, BackendRunner, Hymba, HymbaBackend, HymbaConfig, run_on};
use serde::Serialize;

use crate::bench_scan::{BenchError, BenchTarget, gpu_name, write_json};

/// Arguments of `hymba-eval bench generate`.
#[derive(clap::Args, Debug)]
pub struct BenchGenerateArgs {
    /// Backend, device and output file.
    #[command(flatten)]
    pub target: BenchTarget,
    /// The Hymba config to compare: a preset (tiny, hymba-125m, hymba-350m, hymba-1.5b).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// A `config.json` to use instead of the preset.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sequences generated together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Prompt length in text tokens (the prefill; the meta tokens' state is computed once
    /// per model before it, untimed).
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Tokens decoded after the prefill.
    #[arg(long, default_value_t = 32)]
    pub decode: usize,
    /// Timed rounds (the median is reported), after one untimed warm-up.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Float dtype of weights and activations: f32, or bf16 / f16 (GPU backends); `auto`
    /// is bf16 on CUDA (how the model is served) and f32 elsewhere.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

/// One model's figures.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateRow {
    /// `hymba` or `attention_baseline`.
    pub model: String,
    /// Parameters.
    pub params: usize,
    /// Prompt tokens per second (batch × context over the prefill time).
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second over all rows.
    pub decode_tokens_per_s: f64,
    /// Cache bytes per sequence after prefill + decode, MB (10⁶ bytes), measured from the
    /// cache's tensors.
    pub cache_mb_per_seq: f64,
}

/// The whole report (what `--out` writes).
#[derive(Debug, Clone, Serialize)]
pub struct GenerateBenchReport {
    /// Backend flag.
    pub backend: String,
    /// burn's backend name and, on CUDA, the GPU's name.
    pub device: String,
    /// Float dtype.
    pub dtype: String,
    /// The Hymba config's name.
    pub preset: String,
    /// Sequences per batch.
    pub batch: usize,
    /// Prompt tokens.
    pub context: usize,
    /// Decoded tokens per sequence.
    pub decode_tokens: usize,
    /// Hymba, then the baseline.
    pub rows: Vec<GenerateRow>,
    /// Hymba's decode tokens/s over the baseline's.
    pub decode_speedup: f64,
    /// The baseline's cache bytes over Hymba's.
    pub cache_ratio: f64,
}

/// The benchmark as a [`BackendRunner`].
#[derive(Debug, Clone)]
pub struct GenerateBenchJob {
    /// `(name, config)` pairs to measure, in order.
    pub models: Vec<(String, HymbaConfig)>,
    /// Batch, context, decode tokens, rounds.
    pub batch: usize,
    /// Prompt tokens.
    pub context: usize,
    /// Decoded tokens.
    pub decode: usize,
    /// Timed rounds.
    pub rounds: usize,
    /// Default float dtype to set on the device before any tensor exists.
    pub dtype: DType,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Prefill then greedy decode through a fresh cache: (prefill s, decode s, cache bytes).
pub(crate) fn generate_once<B: HymbaBackend>(
    model: &Hymba<B>,
    ids: Tensor<B, 2, Int>,
    decode: usize,
) -> Result<(f64, f64, usize), BenchError> {
    let device = ids.device();
    let [batch, _] = ids.dims();
    let sync = |d: &B::Device| {
        B::sync(d).map_err(|e| BenchError::Arg(format!("device synchronisation failed: {e:?}")))
    };
    // The meta tokens' state is the model's, computed once before any prompt (the paper's
    // learned cache initialization): the timed prefill runs only the prompt, and only the
    // last position goes through the LM head (the whole [batch, context, vocab] logits
    // would be 33 GB in f32 for the 1.5B model at batch 32 and 8K context).
    let mut cache = model.meta_cache(batch);
    sync(&device)?;
    let start = Instant::now();
    let mut next = model
        .forward_last(ids, &mut cache)
        .argmax(1)
        .reshape([batch, 1]);
    sync(&device)?;
    let prefilled = Instant::now();
    for _ in 0..decode {
        next = model
            .forward_cached(next, &mut cache)
            .argmax(2)
            .reshape([batch, 1]);
    }
    sync(&device)?;
    let done = Instant::now();
    let (kv, ssm, conv) = cache.bytes();
    Ok((
        (prefilled - start).as_secs_f64(),
        (done - prefilled).as_secs_f64(),
        kv + ssm + conv,
    ))
}

impl BackendRunner for GenerateBenchJob {
    type Output = Result<(String, Vec<GenerateRow>), BenchError>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        if self.dtype != DType::F32 {
            burn::tensor::set_default_dtypes::<B>(&device, self.dtype, DType::I32).map_err(
                |e| BenchError::Arg(format!("--dtype {:?} on this backend: {e:?}", self.dtype)),
            )?;
        }
        let mut rows = Vec::new();
        for (name, config) in &self.models {
            B::seed(&device, 0);
            let model = Hymba::<B>::new(config, &device)?;
            let ids = Tensor::<B, 2, Int>::random(
                [self.batch, self.context],
                Distribution::Uniform(3.0, config.vocab_size as f64),
                &device,
            );
            // Warm-up: compiles and autotunes the kernels of both phases.
            let warm = ids.clone().narrow(1, 0, self.context.min(16));
            generate_once(&model, warm, 2)?;
            let (mut prefill, mut decode, mut bytes) = (Vec::new(), Vec::new(), 0);
            for _ in 0..self.rounds.max(1) {
                let (p, d, b) = generate_once(&model, ids.clone(), self.decode)?;
                prefill.push(p);
                decode.push(d);
                bytes = b;
            }
            let tokens = (self.batch * self.context) as f64;
            rows.push(GenerateRow {
                model: name.clone(),
                params: model.num_params(),
                prefill_tokens_per_s: tokens / median(prefill),
                decode_tokens_per_s: (self.batch * self.decode) as f64 / median(decode),
                cache_mb_per_seq: bytes as f64 / self.batch as f64 / 1e6,
            });
        }
        Ok((B::name(&device), rows))
    }
}

/// Runs `hymba-eval bench generate`: prints a table, writes JSON with `--out`.
pub fn run(args: BenchGenerateArgs) -> Result<GenerateBenchReport, BenchError> {
    if args.batch == 0 || args.context == 0 || args.decode == 0 {
        return Err(BenchError::Arg(
            "--batch, --context and --decode must be positive".into(),
        ));
    }
    let kind: BackendKind = args.target.backend.parse()?;
    let dtype = match args.dtype.as_str() {
        "auto" => match kind {
            BackendKind::Cuda | BackendKind::CudaRaw => DType::BF16,
            _ => DType::F32,
        },
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => {
            return Err(BenchError::Arg(format!(
                "--dtype {other}: expected auto, f32, bf16 or f16"
            )));
        }
    };
    let hymba = match &args.config {
        Some(path) => HymbaConfig::from_file(path)?,
        None => HymbaConfig::preset(&args.preset)?,
    };
    let needed = hymba.num_memory_tokens + args.context + args.decode;
    if needed > hymba.max_position_embeddings {
        eprintln!(
            "note: {needed} positions exceed max_position_embeddings {} (RoPE extrapolates)",
            hymba.max_position_embeddings
        );
    }
    let baseline = hymba::roadmap::attention_baseline(&hymba);
    let job = GenerateBenchJob {
        models: vec![
            ("hymba".to_string(), hymba),
            ("attention_baseline".to_string(), baseline),
        ],
        batch: args.batch,
        context: args.context,
        decode: args.decode,
        rounds: args.rounds,
        dtype,
    };
    let (backend_name, rows) = run_on(kind, args.target.device, job)??;
    let device = match (kind, gpu_name(args.target.device)) {
        (BackendKind::Cuda | BackendKind::CudaRaw, Some(gpu)) => format!("{backend_name} ({gpu})"),
        _ => backend_name,
    };
    let (h, b) = (&rows[0], &rows[1]);
    let report = GenerateBenchReport {
        backend: args.target.backend.clone(),
        device,
        dtype: match dtype {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            _ => "f32",
        }
        .to_string(),
        preset: args
            .config
            .as_ref()
            .map_or(args.preset.clone(), |p| p.display().to_string()),
        batch: args.batch,
        context: args.context,
        decode_tokens: args.decode,
        decode_speedup: h.decode_tokens_per_s / b.decode_tokens_per_s,
        cache_ratio: b.cache_mb_per_seq / h.cache_mb_per_seq,
        rows,
    };
    println!(
        "{} · {} · batch {} · context {} · decode {} tokens",
        report.device, report.dtype, report.batch, report.context, report.decode_tokens
    );
    println!(
        "{:<20} {:>14} {:>16} {:>15} {:>14}",
        "model", "params", "prefill tok/s", "decode tok/s", "cache MB/seq"
    );
    for r in &report.rows {
        println!(
            "{:<20} {:>14} {:>16.1} {:>15.1} {:>14.2}",
            r.model, r.params, r.prefill_tokens_per_s, r.decode_tokens_per_s, r.cache_mb_per_seq
        );
    }
    println!(
        "Hymba vs baseline: decode {:.2}× faster, cache {:.2}× smaller (paper, vs Llama-3.2-3B: 3.49× and 11.67×)",
        report.decode_speedup, report.cache_ratio
    );
    if let Some(path) = &args.target.out {
        write_json(path, &report)?;
    }
    Ok(report)
}
