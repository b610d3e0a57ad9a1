//! `hymba-eval bench step`: where a training step's time goes, on one backend.
//!
//! Timed with the device synchronised, each figure the median of `--rounds` after
//! `--warmup` untimed rounds:
//! - `step`: what hymba-train does per micro-batch when it also steps the optimizer: the
//!   batch sent to the device, forward, loss, backward (`TrainStep` of the trainer's
//!   `LanguageModel`) and the trainer's AdamW update, at `batch × seq` plus the meta tokens,
//!   f32 weights (computing on their bf16 copy with `--precision bf16`); it is the sum of
//!   `data`, `forward + backward` and `optimizer`, each timed apart;
//! - `data`: building the `[batch, seq + 1]` token-id tensor on the device from host memory;
//! - `forward + backward`: `TrainStep` alone, its forward half (through the loss read back
//!   to the host, as the trainer's `forward` phase) also reported apart; `optimizer`: the
//!   AdamW update alone;
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
//!
//! A second list, `components`, times the model's own modules alone on leaf inputs (one
//! decoder layer of each kind, the SSM heads, the FFN, the LM head with the loss), forward
//! and backward: it says where `other` lives, which the kernel-level parts cannot.
//!
//! `--step-only` skips both lists: the run then launches exactly the trainer's kernels,
//! which is what a kernel profile of the step wants.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::tensor::{DType, Distribution, TensorData};
use burn::train::TrainOutput;
use hymba::attention::{KeySpan, hymba_mask, scaled_dot_product};
use hymba::config::KvRole;
use hymba::conv::causal_conv_silu;
use hymba::mixer::{AttentionContext, KeyValues, KvInput};
use hymba::rope::Rope;
use hymba::scan::{selective_scan, selective_scan_backward};
use hymba::{BackendKind, BackendRunner, Hymba, HymbaBackend, HymbaConfig, run_on};
use hymba_train::flops::train_flops_per_token;
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
    /// Peak dense TFLOP/s of the device, for MFU (`mfu_pct`); 0 = by backend, as
    /// hymba-train does it: 989 on CUDA (H100/H200 bf16 dense), none elsewhere.
    #[arg(long, default_value_t = 0.0)]
    pub peak_tflops: f64,
    /// Time the whole step only (data, forward, backward, optimizer): skip the isolated
    /// parts and modules, e.g. to profile exactly the kernels of the trainer's steps.
    #[arg(long)]
    pub step_only: bool,
    /// The projections' matmul on CUDA: `cublas` (what the model runs) or `burn` (burn's
    /// own kernel, to measure what cuBLAS buys; `hymba::matmul::set_cublas`). Other
    /// backends run burn's kernel either way.
    #[arg(long, default_value = "cublas", value_parser = ["cublas", "burn"])]
    pub matmul: String,
    /// Let cuBLAS multiply f32 products as TF32, as hymba-train's `allow_tf32 = true` does.
    #[arg(long)]
    pub tf32: bool,
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
    /// The projections' matmul asked for (`--matmul`: `cublas` or `burn`).
    pub matmul: String,
    /// Whether f32 products may run as TF32 (`--tf32`).
    pub tf32: bool,
    /// The whole step (data, forward, backward, optimizer), ms.
    pub step_ms: f64,
    /// Forward + backward alone, ms.
    pub fwd_bwd_ms: f64,
    /// Forward alone, through the loss read back to the host (the trainer's `forward`
    /// phase), ms; the rest of `fwd_bwd_ms` is the backward pass.
    pub forward_ms: f64,
    /// Text tokens per second at `step_ms`.
    pub tokens_per_s: f64,
    /// Model FLOPs utilisation, percent: `tokens_per_s` × the model's training FLOPs per
    /// text token (`hymba_train::flops`, the FLOPs hymba-train's MFU counts) over the peak
    /// (`None` when the peak is unknown).
    pub mfu_pct: Option<f64>,
    /// The peak the MFU is relative to, TFLOP/s.
    pub peak_tflops: Option<f64>,
    /// The breakdown; see the module docs.
    pub parts: Vec<StepPart>,
    /// The model's modules timed alone (forward + backward, per step: a layer kind's time
    /// times its count); see the module docs.
    pub components: Vec<StepPart>,
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
    /// Peak dense TFLOP/s for MFU.
    peak_tflops: Option<f64>,
    /// Skip the isolated parts and modules.
    step_only: bool,
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
    /// Forward + backward of the model's own modules, each on leaf inputs of its real shape
    /// in the compute dtype: one decoder layer of each kind (global, SWA, and a KV consumer
    /// reading a producer's keys), its SSM heads and its FFN, and the head (LM head and
    /// cross-entropy). Returns `(name, ms per step, detail)`; a layer kind's time is
    /// multiplied by the number of layers of that kind.
    fn components<B: HymbaBackend>(
        &self,
        hymba: &Hymba<Autodiff<B>>,
        device: &B::Device,
    ) -> Vec<(String, f64, String)> {
        type Ad<B> = Autodiff<B>;
        let c = &self.config;
        let m = c.num_memory_tokens;
        let n = self.seq + m;
        let b = self.batch;
        let normal = Distribution::Normal(0.0, 1.0);
        let leaf = |shape: [usize; 3]| {
            Tensor::<Ad<B>, 3>::random(shape, normal, device)
                .mul_scalar(0.1)
                .cast(self.compute)
                .require_grad()
        };
        let time = |f: &mut dyn FnMut() -> Tensor<Ad<B>, 1>| {
            time_ms::<Ad<B>, _>(device, self.warmup, self.rounds, || f().backward())
        };
        let keys = KeySpan {
            meta: m,
            text: m..n,
        };
        let rope = Rope::<Ad<B>>::new(0, n, c.qk_head_dim(), c.rope_base(), self.compute, device);
        let mut out = Vec::new();
        // (kind, layers of that kind, first such layer)
        let mut kinds: Vec<(&str, usize, usize)> = Vec::new();
        for layer in 0..c.num_hidden_layers {
            let kind = match (c.is_global(layer), c.kv_role(layer)) {
                (true, _) => "layer (global)",
                (false, KvRole::Owner) => "layer (SWA)",
                (false, KvRole::Consumer { .. }) => "layer (SWA, KV consumer)",
            };
            match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
                Some(entry) => entry.1 += 1,
                None => kinds.push((kind, 1, layer)),
            }
        }
        let x = leaf([b, n, c.hidden_size]);
        for (kind, count, layer) in kinds {
            let window = (!c.is_global(layer)).then_some(c.sliding_window);
            let mask = hymba_mask::<Ad<B>>(0..n, &keys, window, m);
            let ctx = AttentionContext {
                rope: &rope,
                mask: &mask,
            };
            let module = &hymba.layers[layer];
            let kv_leaf = |d: usize| {
                Tensor::<Ad<B>, 4>::random([b, c.num_key_value_heads, n, d], normal, device)
                    .cast(self.compute)
                    .require_grad()
            };
            let shared = KeyValues {
                k: kv_leaf(c.qk_head_dim()),
                v: kv_leaf(c.v_head_dim()),
                span: keys.clone(),
            };
            let ms = time(&mut || {
                let kv = if module.mixer.owns_kv {
                    KvInput::Own {
                        past: None,
                        new_span: keys.clone(),
                    }
                } else {
                    KvInput::Shared(shared.clone())
                };
                module.forward(x.clone(), &ctx, kv, None).0.sum()
            });
            out.push((
                kind.to_string(),
                ms * count as f64,
                format!("{count} × layer {layer} on [{b}, {n}, {}]", c.hidden_size),
            ));
        }
        // The SSM heads of the first layer that has them, times the layers that do (an
        // ablation config may have attention-only layers).
        let with_ssm: Vec<_> = hymba
            .layers
            .iter()
            .filter_map(|l| l.mixer.ssm.as_ref())
            .collect();
        if let Some(ssm) = with_ssm.first() {
            let count = with_ssm.len();
            let (u, z) = (leaf([b, n, c.d_inner()]), leaf([b, n, c.d_inner()]));
            let ms = time(&mut || ssm.forward(u.clone(), z.clone(), None).0.sum());
            out.push((
                "ssm heads".into(),
                ms * count as f64,
                format!(
                    "{count} × conv, x_proj, dt_proj, norms, scan on [{b}, {n}, {}]",
                    c.d_inner()
                ),
            ));
        }
        // The SSM conv + SiLU alone (one operation each way on GPU backends), on the layout
        // the heads give it: `[history; x]`, channels innermost.
        if let Some(ssm) = with_ssm.first() {
            let (count, di, k) = (with_ssm.len(), c.d_inner(), ssm.d_conv);
            let full = leaf([b, n + k - 1, di]);
            let w = ssm.conv_weight.val().reshape([di, k]);
            let bias = Tensor::<Ad<B>, 1>::zeros([di], device).cast(self.compute);
            let ms = time(&mut || causal_conv_silu(full.clone(), w.clone(), bias.clone()).sum());
            out.push((
                "ssm conv".into(),
                ms * count as f64,
                format!(
                    "{count} × the causal conv ({k} taps) + SiLU operation on [{b}, {n}, {di}]"
                ),
            ));
        }
        // Layer 0's RMS norms (its input and FFN input, β1/β2 before the average, the SSM's Δ,
        // B and C where it has them), each on an input of its width, times the layers.
        let first = &hymba.layers[0];
        let mut norms = vec![
            (&first.input_norm, c.hidden_size),
            (&first.ffn_norm, c.hidden_size),
        ];
        norms.extend(first.mixer.attn_norm.iter().map(|nm| (nm, c.d_inner())));
        norms.extend(first.mixer.ssm_norm.iter().map(|nm| (nm, c.d_inner())));
        if let Some(ssm) = &first.mixer.ssm {
            norms.push((&ssm.dt_norm, c.dt_rank()));
            norms.push((&ssm.b_norm, c.mamba_d_state));
            norms.push((&ssm.c_norm, c.mamba_d_state));
        }
        let per_layer = norms.len();
        let mut norm_ms = 0.0;
        for (norm, width) in norms {
            let input = leaf([b, n, width]);
            norm_ms += time(&mut || norm.forward(input.clone()).sum());
        }
        let layers = c.num_hidden_layers;
        out.push((
            "rms norms".into(),
            norm_ms * layers as f64,
            format!("{layers} × layer 0's {per_layer} norms on [{b}, {n}, width]"),
        ));
        let ms = time(&mut || first.ffn.forward(first.ffn_norm.forward(x.clone())).sum());
        out.push((
            "ffn".into(),
            ms * layers as f64,
            format!(
                "{layers} × RMSNorm + SwiGLU FFN on [{b}, {n}, {}]",
                c.hidden_size
            ),
        ));
        let t = self.seq;
        let hidden = leaf([b, t, c.hidden_size]);
        let ids = Tensor::<Ad<B>, 2, Int>::random(
            [b, t + 1],
            Distribution::Uniform(0.0, c.vocab_size as f64),
            device,
        );
        let ms = time(&mut || hymba.loss_from_hidden(hidden.clone(), ids.clone(), None));
        out.push((
            "head".into(),
            ms,
            format!("LM head + cross-entropy on [{b}, {t}, {}]", c.vocab_size),
        ));
        out
    }

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
            let mask = hymba_mask::<Ad<B>>(0..n, &keys, window, m);
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
        // Every round has the same shapes: the trainer's allocator for pretraining (why:
        // `hymba::FixedShapeMemory`), so that the bench times what the trainer runs.
        let _memory = hymba::FixedShapeMemory::enter::<B>(&device);
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
        // Forward + backward and the optimizer are timed apart, the device synchronised
        // after each: their sum is the step (a subtraction of two step timings drowned the
        // optimizer in the noise of the second forward + backward).
        let (mut optim, _snapshot) = LmOptimizer::<Ad<B>>::new(&OptimizerSection::default());
        let mut model = model;
        let (mut forward, mut fwd_bwd, mut optimizer) = (Vec::new(), Vec::new(), Vec::new());
        let sync_err = |e| BenchError::Arg(format!("device synchronisation: {e:?}"));
        for round in 0..self.warmup + self.rounds.max(1) {
            // `TrainStep::step` in the trainer's two halves: the forward ends with the loss
            // read back to the host (a synchronisation), as the trainer's `forward` phase.
            let start = Instant::now();
            let (loss, item) = model.loss(batch(&device));
            let forwarded = Instant::now();
            let grads = TrainOutput::new(&model, loss.backward(), item).grads;
            sync().map_err(sync_err)?;
            let mid = Instant::now();
            model = optim.step(1e-4, model, grads);
            sync().map_err(sync_err)?;
            if round >= self.warmup {
                forward.push((forwarded - start).as_secs_f64() * 1e3);
                fwd_bwd.push((mid - start).as_secs_f64() * 1e3);
                optimizer.push(mid.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (forward_ms, fwd_bwd_ms) = (median(forward), median(fwd_bwd));
        let optimizer_ms = median(optimizer);
        let step_ms = data_ms + fwd_bwd_ms + optimizer_ms;
        let params = c.num_params();
        let part = |name: &str, ms: f64, detail: String| StepPart {
            name: name.to_string(),
            ms,
            pct_of_step: 100.0 * ms / step_ms,
            detail,
        };
        let data = part(
            "data",
            data_ms,
            format!("[{b}, {}] token ids to the device", t + 1),
        );
        let optimizer = part(
            "optimizer",
            optimizer_ms,
            "packing the gradients and the AdamW update of the packed f32 master weights, timed alone".into(),
        );
        let (parts, components) = if self.step_only {
            let fwd_bwd = part(
                "forward + backward",
                fwd_bwd_ms,
                "the trainer's step, not split further (--step-only)".into(),
            );
            (vec![data, fwd_bwd, optimizer], Vec::new())
        } else {
            let components = self.components(&model.compute_model(), &device);
            drop(model);
            let (matmul_ms, matmul_detail) = self.matmul_ms::<B>(&device);
            let (scan_ms, scan_detail) = self.scan_ms::<B>(&device);
            let (attention_ms, attention_detail) = self.attention_ms::<B>(&device);
            let other_ms = fwd_bwd_ms - matmul_ms - scan_ms - attention_ms;
            let parts = vec![
                data,
                part("matmul", matmul_ms, matmul_detail),
                part("scan", scan_ms, scan_detail),
                part("attention", attention_ms, attention_detail),
                part(
                    "other",
                    other_ms,
                    "forward + backward − matmul − scan − attention".into(),
                ),
                optimizer,
            ];
            (parts, components)
        };
        let components = components
            .into_iter()
            .map(|(name, ms, detail)| part(&name, ms, detail))
            .collect();
        let tokens_per_s = (b * t) as f64 / (step_ms * 1e-3);
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
            matmul: if hymba::matmul::cublas_enabled() {
                "cublas"
            } else {
                "burn"
            }
            .into(),
            tf32: hymba::matmul::tf32_allowed(),
            step_ms,
            fwd_bwd_ms,
            forward_ms,
            tokens_per_s,
            mfu_pct: self
                .peak_tflops
                .map(|peak| 100.0 * tokens_per_s * train_flops_per_token(&c, t) / (peak * 1e12)),
            peak_tflops: self.peak_tflops,
            parts,
            components,
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
        peak_tflops: match (args.peak_tflops, kind) {
            (p, _) if p > 0.0 => Some(p),
            (_, BackendKind::Cuda | BackendKind::CudaRaw) => Some(989.0),
            _ => None,
        },
        step_only: args.step_only,
    };
    hymba::matmul::set_cublas(args.matmul == "cublas");
    hymba::matmul::set_tf32(args.tf32);
    println!(
        "training step of {} on {kind}: batch {} × seq {}, {} compute, {} matmul{}, median of \
         {} rounds",
        job.model_name,
        args.batch,
        args.seq,
        args.precision,
        args.matmul,
        if args.tf32 { " (TF32)" } else { "" },
        args.rounds
    );
    let report = run_on(kind, args.target.device, job)??;
    let mfu = report
        .mfu_pct
        .map(|m| format!(", MFU {m:.2} %"))
        .unwrap_or_default();
    println!(
        "step {:.1} ms ({:.0} text tokens/s{mfu}), forward + backward {:.1} ms \
         (forward {:.1} ms), {} parameters",
        report.step_ms, report.tokens_per_s, report.fwd_bwd_ms, report.forward_ms, report.params
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
    if !report.components.is_empty() {
        println!("  modules alone (forward + backward, per step):");
    }
    for p in &report.components {
        println!(
            "  {:<26} {:>10.2} ms {:>6.1} %   {}",
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
