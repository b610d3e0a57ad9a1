//! `hymba-eval bench step`: where a training step's time goes, on one backend.
//!
//! Timed with the device synchronised, each figure the median of `--rounds` after
//! `--warmup` untimed rounds:
//! - `step`: what hymba-train does per micro-batch when it also steps the optimizer: the
//!   batch sent to the device, forward, loss, backward (`TrainStep` of the trainer's
//!   `LanguageModel`) and the trainer's AdamW update, at `batch × seq` plus the meta tokens,
//!   f32 weights (computing on their bf16 copy with `--precision bf16`);
//! - `data`: building the `[batch, seq + 1]` token-id tensor on the device from host memory;
//! - `forward + backward`: the step without data and optimizer; `optimizer` is the rest;
//! - `matmul`: every projection product of one step (per layer in_proj, out_proj, FFN gate,
//!   up and down; the LM head once), forward and both gradients, through the model's matmul;
//! - `scan`: the selective scan forward and backward at each SSM layer's shape, on inputs
//!   laid out as the model passes them (transposed views, channels innermost);
//! - `attention`: scores, mask, softmax and values, forward and backward, at each attention
//!   layer's shape and mask (global or SWA with meta tokens);
//! - `other`: forward + backward minus those three — embeddings, norms, convolution, gates,
//!   RoPE, the loss, autodiff bookkeeping and kernel launches.
//!
//! The parts are timed in isolation, so they miss what the real step overlaps or fuses:
//! `other` can come out small or even negative, and the report says so rather than hide it.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::tensor::{DType, Distribution, TensorData};
use burn::train::TrainStep;
use hymba::attention::{KeySpan, hymba_mask, scaled_dot_product};
use hymba::scan::{selective_scan, selective_scan_backward};
use hymba::{BackendKind, BackendRunner, Hymba, HymbaBackend, HymbaConfig, run_on};
use hymba_train::model::{LanguageModel, LmBatch};
use hymba_train::optim::LmOptimizer;
use hymba_train::run_config::OptimizerSection;
use serde::Serialize;

use crate::bench_matmul::{MatmulShape, operand, projection};
use crate::bench_scan::{BenchError, BenchTarget, ScanShape, inputs, time_ms, write_json};

/// Arguments of `hymba-eval bench step`.
#[derive(clap::Args, Debug)]
pub struct BenchStepArgs {
    /// Backend, device and output file.
    #[command(flatten)]
    pub target: BenchTarget,
    /// Model preset (tiny, hymba-125m, hymba-350m, hymba-1.5b).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// A `config.json` instead of a preset.
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Text tokens per sequence (the meta tokens come on top).
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Timed rounds per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Untimed warm-up rounds per figure (the first CUDA round compiles kernels).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Compute dtype of the step, as hymba-train's `precision`: `f32`, or `bf16` (a bf16
    /// cast of the f32 master weights per micro-batch; the isolated parts then run on bf16
    /// operands too).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub precision: String,
}

/// One part of the step.
#[derive(Debug, Clone, Serialize)]
pub struct StepPart {
    /// `data`, `matmul`, `scan`, `attention`, `other` or `optimizer`.
    pub name: String,
    /// Milliseconds per micro-batch step.
    pub ms: f64,
    /// Share of `step_ms`, in percent.
    pub pct_of_step: f64,
    /// What was timed.
    pub detail: String,
}

/// What `bench step` prints and writes.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Backend name.
    pub backend: String,
    /// Device (GPU name where known).
    pub device: String,
    /// Preset or config file.
    pub model: String,
    /// Parameters.
    pub params: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Text tokens per sequence.
    pub seq: usize,
    /// Meta tokens prepended to each sequence.
    pub meta_tokens: usize,
    /// Compute dtype (`f32` or `bf16`; weights and optimizer state are f32 in both).
    pub precision: String,
    /// The whole step (data, forward, backward, optimizer), ms.
    pub step_ms: f64,
    /// Forward + backward alone, ms.
    pub fwd_bwd_ms: f64,
    /// Text tokens per second at `step_ms`.
    pub tokens_per_s: f64,
    /// The breakdown; see the module docs.
    pub parts: Vec<StepPart>,
}

struct StepBenchJob {
    config: HymbaConfig,
    model_name: String,
    batch: usize,
    seq: usize,
    rounds: usize,
    warmup: usize,
    device_index: usize,
    /// The compute dtype (f32 or bf16).
    compute: DType,
}

/// Every projection product of one step, grouped by shape: `(product, how many per step)`.
fn step_products(c: &HymbaConfig, tokens: usize, text_tokens: usize) -> Vec<(MatmulShape, usize)> {
    let mut counted: Vec<(MatmulShape, usize)> = Vec::new();
    let mut add = |name: &str, rows: usize, d_in: usize, d_out: usize| {
        for p in projection(name, rows, d_in, d_out) {
            match counted.iter_mut().find(|(q, _)| {
                (q.m, q.n, q.k, q.lhs_transposed, q.rhs_transposed)
                    == (p.m, p.n, p.k, p.lhs_transposed, p.rhs_transposed)
            }) {
                Some((_, n)) => *n += 1,
                None => counted.push((p, 1)),
            }
        }
    };
    let d = c.hidden_size;
    for layer in 0..c.num_hidden_layers {
        add("in_proj", tokens, d, c.in_proj_rows(layer));
        add("out_proj", tokens, c.d_inner(), d);
        if c.intermediate_size > 0 {
            add("ffn gate", tokens, d, c.intermediate_size);
            add("ffn up", tokens, d, c.intermediate_size);
            add("ffn down", tokens, c.intermediate_size, d);
        }
    }
    add("lm_head", text_tokens, d, c.vocab_size);
    counted
}

impl StepBenchJob {
    fn matmul_ms<B: HymbaBackend>(&self, device: &B::Device) -> (f64, String) {
        let (b, t) = (self.batch, self.seq);
        let n = t + self.config.num_memory_tokens;
        let products = step_products(&self.config, b * n, b * t);
        let mut total = 0.0;
        let mut count = 0;
        for (shape, times) in &products {
            let dt = self.compute;
            let lhs = operand::<B>(shape.m, shape.k, shape.lhs_transposed, dt, device);
            let rhs = operand::<B>(shape.k, shape.n, shape.rhs_transposed, dt, device);
            let ms = time_ms::<B, _>(device, self.warmup, self.rounds, || {
                hymba::matmul::matmul(lhs.clone(), rhs.clone())
            });
            total += ms * *times as f64;
            count += times;
        }
        (
            total,
            format!("{count} products of {} shapes", products.len()),
        )
    }

    fn scan_ms<B: HymbaBackend>(&self, device: &B::Device) -> (f64, String) {
        let c = &self.config;
        let layers = (0..c.num_hidden_layers)
            .filter(|&l| c.mixer_kind(l).has_ssm())
            .count();
        if layers == 0 {
            return (0.0, "no SSM layer".into());
        }
        let (b, d, s) = (self.batch, c.d_inner(), c.mamba_d_state);
        let t = self.seq + c.num_memory_tokens;
        let (input, dy) = inputs::<B>(ScanShape::new(b, d, t, s), self.compute, true, device);
        let ms = time_ms::<B, _>(device, self.warmup, self.rounds, || {
            let out = selective_scan(input.clone());
            (
                out,
                selective_scan_backward(input.clone(), dy.clone(), None),
            )
        });
        (
            ms * layers as f64,
            format!("{layers} layers × [{b}, {d}, {t}], state {s}"),
        )
    }

    fn attention_ms<B: HymbaBackend>(&self, device: &B::Device) -> (f64, String) {
        type Ad<B> = Autodiff<B>;
        let c = &self.config;
        let m = c.num_memory_tokens;
        let n = self.seq + m;
        let (b, h) = (self.batch, c.num_attention_heads);
        let keys = KeySpan {
            meta: m,
            text: m..n,
        };
        let normal = Distribution::Normal(0.0, 1.0);
        let leaf = |dim: usize| {
            Tensor::<Ad<B>, 4>::random([b, h, n, dim], normal, device)
                .cast(self.compute)
                .require_grad()
        };
        let (q, k, v) = (
            leaf(c.qk_head_dim()),
            leaf(c.qk_head_dim()),
            leaf(c.v_head_dim()),
        );
        let mut total = 0.0;
        let (mut global, mut swa) = (0, 0);
        let mut timed: Vec<(bool, f64)> = Vec::new();
        for layer in (0..c.num_hidden_layers).filter(|&l| c.mixer_kind(l).has_attention()) {
            let is_global = c.is_global(layer);
            if is_global {
                global += 1;
            } else {
                swa += 1;
            }
            if let Some(&(_, ms)) = timed.iter().find(|(g, _)| *g == is_global) {
                total += ms;
                continue;
            }
            let window = (!is_global).then_some(c.sliding_window);
            let mask = hymba_mask::<Ad<B>>(0..n, &keys, window, m, device);
            let ms = time_ms::<Ad<B>, _>(device, self.warmup, self.rounds, || {
                scaled_dot_product(q.clone(), k.clone(), v.clone(), &mask)
                    .sum()
                    .backward()
            });
            timed.push((is_global, ms));
            total += ms;
        }
        (
            total,
            format!(
                "{global} global + {swa} SWA layers × [{b}, {h}, {n}, {}]",
                c.qk_head_dim()
            ),
        )
    }
}

impl BackendRunner for StepBenchJob {
    type Output = Result<StepReport, BenchError>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        type Ad<B> = Autodiff<B>;
        B::seed(&device, 0);
        let c = self.config.clone();
        let (b, t) = (self.batch, self.seq);
        let compute = (self.compute != DType::F32).then_some(self.compute);
        let model = LanguageModel::new(Hymba::<Ad<B>>::new(&c, &device)?, compute);
        let host_ids: Vec<i64> = {
            let mut rng_state = 0x9e37_79b9_u64;
            (0..b * (t + 1))
                .map(|_| {
                    rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((rng_state >> 33) % c.vocab_size as u64) as i64
                })
                .collect()
        };
        let batch = |device: &B::Device| LmBatch::<Ad<B>> {
            ids: Tensor::from_data(TensorData::new(host_ids.clone(), [b, t + 1]), device),
            loss_mask: None,
            targets: b * t,
            preference: None,
            scale: 1.0,
        };
        let sync = || B::sync(&device);
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };

        let data_ms = time_ms::<Ad<B>, _>(&device, self.warmup, self.rounds, || batch(&device).ids);
        // Forward + backward and the whole step alternate within each round, so that drift
        // of the machine (clocks, other load) hits both alike.
        let (mut optim, _snapshot) = LmOptimizer::<Ad<B>>::new(&OptimizerSection::default());
        let mut model = model;
        let (mut fwd_bwd, mut step) = (Vec::new(), Vec::new());
        let sync_err = |e| BenchError::Arg(format!("device synchronisation: {e:?}"));
        for round in 0..self.warmup + self.rounds.max(1) {
            let start = Instant::now();
            let grads = TrainStep::step(&model, batch(&device)).grads;
            sync().map_err(sync_err)?;
            let mid = Instant::now();
            drop(grads);
            let out = TrainStep::step(&model, batch(&device));
            model = optim.step(1e-4, model, out.grads);
            sync().map_err(sync_err)?;
            if round >= self.warmup {
                fwd_bwd.push((mid - start).as_secs_f64() * 1e3);
                step.push(mid.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (fwd_bwd_ms, step_ms) = (median(fwd_bwd), median(step));
        let params = c.num_params();
        drop(model);

        let (matmul_ms, matmul_detail) = self.matmul_ms::<B>(&device);
        let (scan_ms, scan_detail) = self.scan_ms::<B>(&device);
        let (attention_ms, attention_detail) = self.attention_ms::<B>(&device);
        let other_ms = fwd_bwd_ms - matmul_ms - scan_ms - attention_ms;
        let optimizer_ms = step_ms - fwd_bwd_ms - data_ms;
        let part = |name: &str, ms: f64, detail: String| StepPart {
            name: name.to_string(),
            ms,
            pct_of_step: 100.0 * ms / step_ms,
            detail,
        };
        let parts = vec![
            part(
                "data",
                data_ms,
                format!("[{b}, {}] token ids to the device", t + 1),
            ),
            part("matmul", matmul_ms, matmul_detail),
            part("scan", scan_ms, scan_detail),
            part("attention", attention_ms, attention_detail),
            part(
                "other",
                other_ms,
                "forward + backward − matmul − scan − attention".into(),
            ),
            part(
                "optimizer",
                optimizer_ms,
                "step − forward/backward − data (AdamW)".into(),
            ),
        ];
        let device_name = crate::bench_scan::gpu_name(self.device_index)
            .filter(|_| B::name(&device).to_lowercase().contains("cuda"))
            .unwrap_or_else(|| B::name(&device));
        Ok(StepReport {
            backend: B::name(&device),
            device: device_name,
            model: self.model_name,
            params,
            batch: b,
            seq: t,
            meta_tokens: c.num_memory_tokens,
            precision: format!("{:?}", self.compute).to_lowercase(),
            step_ms,
            fwd_bwd_ms,
            tokens_per_s: (b * t) as f64 / (step_ms * 1e-3),
            parts,
        })
    }
}

/// Runs `hymba-eval bench step`: prints the breakdown, writes JSON with `--out`.
pub fn run(args: BenchStepArgs) -> Result<StepReport, BenchError> {
    let kind: BackendKind = args.target.backend.parse()?;
    if args.batch == 0 || args.seq < 2 {
        return Err(BenchError::Arg(
            "--batch must be at least 1 and --seq at least 2".into(),
        ));
    }
    if args.precision == "bf16" && kind == BackendKind::NdArray {
        return Err(BenchError::Arg(
            "--precision bf16 needs a GPU backend (cuda or wgpu): ndarray has no bf16".into(),
        ));
    }
    let (config, model_name) = match &args.config {
        Some(path) => (HymbaConfig::from_file(path)?, path.display().to_string()),
        None => (HymbaConfig::preset(&args.preset)?, args.preset.clone()),
    };
    let job = StepBenchJob {
        config,
        model_name,
        batch: args.batch,
        seq: args.seq,
        rounds: args.rounds,
        warmup: args.warmup,
        device_index: args.target.device,
        compute: match args.precision.as_str() {
            "bf16" => DType::BF16,
            _ => DType::F32,
        },
    };
    println!(
        "training step of {} on {kind}: batch {} × seq {}, {} compute, median of {} rounds",
        job.model_name, args.batch, args.seq, args.precision, args.rounds
    );
    let report = run_on(kind, args.target.device, job)??;
    println!(
        "step {:.1} ms ({:.0} text tokens/s), forward + backward {:.1} ms, {} parameters",
        report.step_ms, report.tokens_per_s, report.fwd_bwd_ms, report.params
    );
    for p in &report.parts {
        let noise = if p.ms < 0.0 {
            " (negative: the isolated timings overlap or lie within the noise)"
        } else {
            ""
        };
        println!(
            "  {:<10} {:>10.2} ms {:>6.1} %   {}{noise}",
            p.name, p.ms, p.pct_of_step, p.detail
        );
    }
    if let Some(path) = &args.target.out {
        write_json(path, &report)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_products_cover_every_projection_once_per_layer() {
        let c = HymbaConfig::tiny();
        let (tokens, text) = (2 * (64 + c.num_memory_tokens), 2 * 64);
        let products = step_products(&c, tokens, text);
        let total: usize = products.iter().map(|(_, n)| n).sum();
        // Per layer in_proj, out_proj, gate, up, down; the LM head once; 3 products each.
        assert_eq!(total, 3 * (5 * c.num_hidden_layers + 1));
        let find = |m: usize, k: usize, n: usize| {
            products
                .iter()
                .find(|(p, _)| (p.m, p.k, p.n) == (m, k, n) && !p.lhs_transposed)
                .map(|(_, count)| *count)
        };
        let d = c.hidden_size;
        // The LM head's forward runs over the text positions only, once.
        assert_eq!(find(text, d, c.vocab_size), Some(1));
        // Gate and up share a shape: two forward products per layer.
        assert_eq!(
            find(tokens, d, c.intermediate_size),
            Some(2 * c.num_hidden_layers)
        );
        // dW of in_proj: Xᵀ·dY, [d, tokens]·[tokens, rows].
        let rows = c.in_proj_rows(0);
        assert!(
            products
                .iter()
                .any(|(p, _)| p.lhs_transposed && (p.m, p.k, p.n) == (d, tokens, rows))
        );
    }
}
