//! `hymba-eval bench cache`: bytes of the generation cache at a context length, by layer
//! kind — analytic from the config, and measured from a real cache after a prefill — next
//! to Transformer baselines: a same-width Llama-style model (Hymba's attention shape in
//! every layer, all global, no KV sharing, no SSM) and Llama-3.2-3B's published shape.
//!
//! Hymba's cache (this implementation, spec §4): a KV-owning global layer holds every
//! position (meta tokens included); a KV-owning SWA layer holds the meta tokens and the last
//! `sliding_window + 1` positions (a query sees itself and the `sliding_window` tokens
//! before it, as in training; the reference keeps one fewer, spec §4); a KV consumer holds
//! nothing; every layer holds its SSM state
//! `[d_inner, S]` and its conv history `[d_inner, d_conv − 1]`.
//!
//! The paper's 78.6 MB for Hymba-1.5B at 8K (Tab. 1/2) counts neither the meta tokens nor
//! the full conv width; `paper_reading_mb` reproduces that reading (spec §4) for reference.

use std::path::PathBuf;

use burn::prelude::*;
use hymba::config::KvRole;
use hymba::{BackendKind, BackendRunner, HymbaBackend, HymbaCache, HymbaConfig, run_on};
use serde::Serialize;

use crate::bench_scan::{BenchError, BenchTarget, write_json};

/// Arguments of `hymba-eval bench cache`.
#[derive(clap::Args, Debug)]
pub struct BenchCacheArgs {
    /// Backend, device and output file.
    #[command(flatten)]
    pub target: BenchTarget,
    /// Architecture preset.
    #[arg(long, default_value = "hymba-1.5b", conflicts_with = "config")]
    pub preset: String,
    /// An HF `config.json` instead of a preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Context lengths (text tokens), comma separated.
    #[arg(long, default_value = "1024,8192")]
    pub context: String,
    /// Bytes per cached value (2 for bf16/f16, as deployed; 4 for f32).
    #[arg(long, default_value_t = 2)]
    pub bytes: usize,
    /// Also prefill a random model of this preset at each context on the backend and
    /// measure its real cache (elements × `--bytes`); e.g. `tiny` on a CPU.
    #[arg(long)]
    pub measure_preset: Option<String>,
}

/// Cache bytes by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheBytes {
    /// K/V of KV-owning global layers.
    pub global_kv: usize,
    /// K/V of KV-owning SWA layers.
    pub swa_kv: usize,
    /// SSM states.
    pub ssm: usize,
    /// Conv histories.
    pub conv: usize,
}

impl CacheBytes {
    /// Everything.
    pub fn total(&self) -> usize {
        self.global_kv + self.swa_kv + self.ssm + self.conv
    }
}

/// Hymba's cache after `context` text tokens, `bytes` per value, batch 1.
pub fn hymba_cache_bytes(config: &HymbaConfig, context: usize, bytes: usize) -> CacheBytes {
    let per_pos = config.num_key_value_heads * (config.qk_head_dim() + config.v_head_dim());
    let meta = config.num_memory_tokens;
    let mut out = CacheBytes::default();
    for layer in 0..config.num_hidden_layers {
        if config.caches_kv(layer) {
            if config.is_global(layer) {
                out.global_kv += (meta + context) * per_pos * bytes;
            } else {
                out.swa_kv += (meta + context.min(config.sliding_window + 1)) * per_pos * bytes;
            }
        }
        if config.mixer_kind(layer).has_ssm() {
            out.ssm += config.d_inner() * config.mamba_d_state * bytes;
            out.conv += config.d_inner() * (config.mamba_d_conv - 1) * bytes;
        }
    }
    out
}

/// The paper's reading for Hymba (spec §4): no meta tokens, SWA layers hold `window`
/// positions, conv state `d_conv − 1` wide.
pub fn paper_reading_bytes(config: &HymbaConfig, context: usize, bytes: usize) -> usize {
    let per_pos = config.num_key_value_heads * (config.qk_head_dim() + config.v_head_dim());
    let kv: usize = (0..config.num_hidden_layers)
        .filter(|&l| config.kv_role(l) == KvRole::Owner)
        .map(|l| {
            if config.is_global(l) {
                context
            } else {
                context.min(config.sliding_window)
            }
        })
        .sum();
    let states = config.d_inner() * (config.mamba_d_state + config.mamba_d_conv - 1);
    (kv * per_pos + config.num_hidden_layers * states) * bytes
}

/// A Llama-style Transformer: `layers` full-attention layers, each caching K and V of
/// `kv_heads × (k_dim + v_dim)` values per position.
pub fn transformer_cache_bytes(
    layers: usize,
    kv_heads: usize,
    k_dim: usize,
    v_dim: usize,
    context: usize,
    bytes: usize,
) -> usize {
    layers * kv_heads * (k_dim + v_dim) * context * bytes
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CacheRow {
    /// Text tokens.
    pub context: usize,
    /// Hymba, analytic, by kind.
    pub hymba: CacheBytes,
    /// Hymba, analytic, MB (10⁶ bytes).
    pub hymba_mb: f64,
    /// The paper's reading of Hymba's cache, MB.
    pub paper_reading_mb: f64,
    /// Same-width Llama-style Transformer (Hymba's attention shape, every layer global and
    /// owning its KV), MB.
    pub same_width_transformer_mb: f64,
    /// Llama-3.2-3B (28 layers, 8 KV heads × 128), MB.
    pub llama_3_2_3b_mb: f64,
    /// Llama-3.2-3B over Hymba.
    pub llama_over_hymba: f64,
    /// `--measure-preset`: analytic and measured bytes of that model (must agree).
    pub measured: Option<MeasuredRow>,
}

/// The analytic and the measured cache of a real prefill.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MeasuredRow {
    /// The formula's bytes for the measured model.
    pub analytic: CacheBytes,
    /// Bytes of the real cache's tensors (elements × `--bytes`).
    pub measured: CacheBytes,
}

/// Prefills random models and reads their caches.
struct MeasureJob {
    config: HymbaConfig,
    contexts: Vec<usize>,
    bytes: usize,
}

impl BackendRunner for MeasureJob {
    type Output = Result<Vec<CacheBytes>, hymba::HymbaError>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        B::seed(&device, 0);
        let model = hymba::Hymba::<B>::new(&self.config, &device)?;
        let mut out = Vec::new();
        for &context in &self.contexts {
            let ids: Vec<i64> = (0..context)
                .map(|i| 1 + (i % (self.config.vocab_size - 1)) as i64)
                .collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, context]), &device);
            let mut cache = HymbaCache::new(&self.config);
            // Prefill all but the last token, then decode it: the cache as generation holds
            // it (a prefill keeps every position; each decode step trims SWA layers).
            let _ = model.forward_last(ids.clone().narrow(1, 0, context - 1), &mut cache);
            let _ = model.forward_last(ids.narrow(1, context - 1, 1), &mut cache);
            out.push(measured_bytes(&cache, &self.config, self.bytes));
        }
        Ok(out)
    }
}

/// Bytes of a real cache, by kind, counting `bytes` per element.
pub fn measured_bytes<B: Backend>(
    cache: &HymbaCache<B>,
    config: &HymbaConfig,
    bytes: usize,
) -> CacheBytes {
    let mut out = CacheBytes::default();
    for (i, layer) in cache.layers.iter().enumerate() {
        if let Some(kv) = &layer.kv
            && layer.owns_kv
        {
            let n = kv.k.dims().iter().product::<usize>() + kv.v.dims().iter().product::<usize>();
            if config.is_global(i) {
                out.global_kv += n * bytes;
            } else {
                out.swa_kv += n * bytes;
            }
        }
        if let Some(s) = &layer.ssm {
            out.ssm += s.ssm.dims().iter().product::<usize>() * bytes;
            out.conv += s.conv.dims().iter().product::<usize>() * bytes;
        }
    }
    out
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

/// Runs `hymba-eval bench cache`: prints a table, writes JSON with `--out`.
pub fn run(args: BenchCacheArgs) -> Result<Vec<CacheRow>, BenchError> {
    let config = match &args.config {
        Some(path) => HymbaConfig::from_file(path)?,
        None => HymbaConfig::preset(&args.preset)?,
    };
    let contexts = args
        .context
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::Arg(format!("--context {}: {e}", args.context)))?;
    if contexts.is_empty() || contexts.contains(&0) || args.bytes == 0 {
        return Err(BenchError::Arg(
            "--context and --bytes must be positive".into(),
        ));
    }
    // The measurement prefills `context − 1` tokens and decodes the last one.
    if args.measure_preset.is_some() && contexts.contains(&1) {
        return Err(BenchError::Arg(
            "--measure-preset needs every --context to be at least 2".into(),
        ));
    }
    let measured = match &args.measure_preset {
        None => None,
        Some(preset) => {
            let mconfig = HymbaConfig::preset(preset)?;
            let kind: BackendKind = args.target.backend.parse()?;
            let job = MeasureJob {
                config: mconfig.clone(),
                contexts: contexts.clone(),
                bytes: args.bytes,
            };
            Some((mconfig, run_on(kind, args.target.device, job)??))
        }
    };
    let attn_layers = config.num_hidden_layers;
    let rows: Vec<CacheRow> = contexts
        .iter()
        .enumerate()
        .map(|(i, &context)| {
            let hymba = hymba_cache_bytes(&config, context, args.bytes);
            let llama = transformer_cache_bytes(28, 8, 128, 128, context, args.bytes);
            CacheRow {
                context,
                hymba,
                hymba_mb: mb(hymba.total()),
                paper_reading_mb: mb(paper_reading_bytes(&config, context, args.bytes)),
                same_width_transformer_mb: mb(transformer_cache_bytes(
                    attn_layers,
                    config.num_key_value_heads,
                    config.qk_head_dim(),
                    config.v_head_dim(),
                    context,
                    args.bytes,
                )),
                llama_3_2_3b_mb: mb(llama),
                llama_over_hymba: llama as f64 / hymba.total() as f64,
                measured: measured.as_ref().map(|(mc, m)| MeasuredRow {
                    analytic: hymba_cache_bytes(mc, context, args.bytes),
                    measured: m[i],
                }),
            }
        })
        .collect();
    println!(
        "cache at batch 1, {} bytes per value, MB = 10^6 bytes ({} layers, {} KV-owning, {} global)",
        args.bytes,
        config.num_hidden_layers,
        config.num_kv_owning_layers(),
        config.global_attn_idx.len()
    );
    println!(
        "{:>8} | {:>9} {:>9} {:>8} {:>8} {:>9} | {:>11} | {:>12} {:>12} {:>8}",
        "context",
        "global KV",
        "SWA KV",
        "SSM",
        "conv",
        "Hymba",
        "paper read.",
        "same-width T",
        "Llama-3.2-3B",
        "ratio"
    );
    for r in &rows {
        println!(
            "{:>8} | {:>9.2} {:>9.2} {:>8.2} {:>8.2} {:>9.2} | {:>11.2} | {:>12.2} {:>12.2} {:>7.2}x",
            r.context,
            mb(r.hymba.global_kv),
            mb(r.hymba.swa_kv),
            mb(r.hymba.ssm),
            mb(r.hymba.conv),
            r.hymba_mb,
            r.paper_reading_mb,
            r.same_width_transformer_mb,
            r.llama_3_2_3b_mb,
            r.llama_over_hymba
        );
        if let Some(m) = &r.measured {
            println!(
                "{:>8} | measured {}: {:.4} MB (analytic {:.4} MB; global {} / {}, SWA {} / {}, SSM {} / {}, conv {} / {})",
                "",
                args.measure_preset.as_deref().unwrap_or(""),
                mb(m.measured.total()),
                mb(m.analytic.total()),
                m.measured.global_kv,
                m.analytic.global_kv,
                m.measured.swa_kv,
                m.analytic.swa_kv,
                m.measured.ssm,
                m.analytic.ssm,
                m.measured.conv,
                m.analytic.conv
            );
        }
    }
    if let Some(path) = &args.target.out {
        write_json(path, &rows)?;
    }
    Ok(rows)
}
