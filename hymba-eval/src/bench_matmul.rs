//! `hymba-eval bench matmul`: TFLOP/s of the model's matmul ([`hymba::matmul::matmul`]:
//! cuBLAS on CUDA) and of burn's own `Tensor::matmul`, side by side in one run, at 8192³
//! and at the projections of the presets, forward and both backward products, in the
//! layouts the model really passes:
//!
//! - forward `Y = X · Wᵀ`: `X [T, in]` row-major, `Wᵀ` a transposed view of `W [out, in]`;
//! - `dX = dY · W`: both row-major;
//! - `dWᵀ = Xᵀ · dY`: `Xᵀ` a transposed view (what the autodiff node computes).
//!
//! `T` is the token count of a training batch (default 8 × (2048 + 128 meta tokens)).
//! Each row carries the layout flags so that `bench/torch_matmul.py` can time PyTorch on the
//! same products.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::DType;
use hymba::{BackendKind, BackendRunner, HymbaBackend, HymbaConfig, run_on};
use serde::Serialize;

use crate::bench_scan::{BenchError, BenchTarget, time_ms, write_json};

/// Arguments of `hymba-eval bench matmul`.
#[derive(clap::Args, Debug)]
pub struct BenchMatmulArgs {
    /// Backend, device and output file.
    #[command(flatten)]
    pub target: BenchTarget,
    /// `full`: 8192³ and the projections of hymba-125m, hymba-350m and hymba-1.5b.
    /// `quick`: 512³ and the tiny preset (seconds on a CPU).
    #[arg(long, default_value = "full")]
    pub shapes: String,
    /// With `--shapes full`: which presets' projections, comma separated.
    #[arg(long, default_value = "hymba-125m,hymba-350m,hymba-1.5b")]
    pub presets: String,
    /// Only the products whose name contains this (e.g. `out_proj`, `8192`).
    #[arg(long)]
    pub only: Option<String>,
    /// Storage dtypes, comma separated: bf16, f16, f32.
    #[arg(long, default_value = "bf16")]
    pub dtypes: String,
    /// Tokens per batch (rows of the activations); default 8 × (2048 + 128).
    #[arg(long, default_value_t = 8 * (2048 + 128))]
    pub tokens: usize,
    /// Timed rounds per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Untimed warm-up rounds (the first call JIT-compiles and autotunes burn's kernel).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Products per timed round, queued back to back with one device sync at the end: a
    /// round's time over this count is the device's throughput, not one call's host
    /// round trip (`bench/torch_matmul.py` times PyTorch the same way).
    #[arg(long, default_value_t = 10)]
    pub calls: usize,
    /// Let cuBLAS multiply f32 products as TF32 (`hymba::matmul::set_tf32`), as burn's own
    /// CUDA kernel does; by default ours multiplies f32 exactly.
    #[arg(long)]
    pub tf32: bool,
}

/// One product `[m, k] · [k, n]`.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulShape {
    /// What it is, e.g. `hymba-125m in_proj dX`.
    pub name: String,
    /// Rows of the output.
    pub m: usize,
    /// Columns of the output.
    pub n: usize,
    /// The contracted dim.
    pub k: usize,
    /// `lhs` is a transposed view (stored `[k, m]`).
    pub lhs_transposed: bool,
    /// `rhs` is a transposed view (stored `[n, k]`).
    pub rhs_transposed: bool,
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulRow {
    /// The product.
    #[serde(flatten)]
    pub shape: MatmulShape,
    /// Storage dtype.
    pub dtype: String,
    /// Median ms of the model's matmul.
    pub ours_ms: f64,
    /// Median ms of burn's `Tensor::matmul`.
    pub burn_ms: f64,
    /// `2·m·n·k / time` of ours.
    pub ours_tflops: f64,
    /// The same for burn's.
    pub burn_tflops: f64,
    /// Median host time to issue one of ours (the time to call `matmul`, before the sync).
    /// On `cuda-raw` that is the whole host path (operands, buffers, ordering, the cuBLAS
    /// call); under fusion only the op's registration, as the op runs at the sync. When it
    /// approaches `ours_ms` the product is bound by the host, not the GPU.
    pub ours_host_ms: f64,
}

/// The report written as JSON.
#[derive(Debug, Serialize)]
pub struct MatmulReport {
    /// Backend name.
    pub backend: String,
    /// Device description.
    pub device: String,
    /// Timed rounds per measurement.
    pub rounds: usize,
    /// Products queued per round (the times are per product).
    pub calls: usize,
    /// Whether our f32 products ran as TF32 (`--tf32`).
    pub tf32: bool,
    /// One row per (shape, dtype).
    pub rows: Vec<MatmulRow>,
}

/// The forward and both backward products of a projection `in → out` over `tokens` rows.
pub(crate) fn projection(name: &str, tokens: usize, d_in: usize, d_out: usize) -> [MatmulShape; 3] {
    let shape = |what: &str, m, k, n, lt, rt| MatmulShape {
        name: format!("{name} {what}"),
        m,
        n,
        k,
        lhs_transposed: lt,
        rhs_transposed: rt,
    };
    [
        shape("fwd", tokens, d_in, d_out, false, true),
        shape("dX", tokens, d_out, d_in, false, false),
        shape("dW", d_in, tokens, d_out, true, false),
    ]
}

/// 8192³ (or 512³) and every projection of the presets (`full`) or of `tiny` (`quick`).
pub fn shapes(which: &str, presets: &str, tokens: usize) -> Result<Vec<MatmulShape>, BenchError> {
    let full: Vec<&str> = presets.split(',').map(str::trim).collect();
    let (square, presets): (usize, &[&str]) = match which {
        "full" => (8192, &full),
        "quick" => (512, &["tiny"]),
        other => {
            return Err(BenchError::Arg(format!(
                "--shapes {other}: expected quick or full"
            )));
        }
    };
    let mut out = vec![MatmulShape {
        name: format!("square {square}"),
        m: square,
        n: square,
        k: square,
        lhs_transposed: false,
        rhs_transposed: false,
    }];
    for &preset in presets {
        let c = HymbaConfig::preset(preset)?;
        let d = c.hidden_size;
        out.extend(projection(
            &format!("{preset} in_proj"),
            tokens,
            d,
            c.in_proj_rows(0),
        ));
        out.extend(projection(
            &format!("{preset} out_proj"),
            tokens,
            c.d_inner(),
            d,
        ));
        out.extend(projection(
            &format!("{preset} ffn up"),
            tokens,
            d,
            c.intermediate_size,
        ));
        out.extend(projection(
            &format!("{preset} ffn down"),
            tokens,
            c.intermediate_size,
            d,
        ));
        out.extend(projection(
            &format!("{preset} lm_head"),
            tokens,
            d,
            c.vocab_size,
        ));
    }
    Ok(out)
}

fn parse_dtype(s: &str) -> Result<DType, BenchError> {
    match s.trim() {
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        "f32" => Ok(DType::F32),
        other => Err(BenchError::Arg(format!(
            "--dtypes: unknown dtype {other:?} (expected bf16, f16 or f32)"
        ))),
    }
}

/// The benchmark as a job for [`run_on`].
struct MatmulBenchJob {
    /// Rewritten after every row, so that a run cut short still leaves its figures.
    partial_out: Option<PathBuf>,
    backend: String,
    shapes: Vec<MatmulShape>,
    dtypes: Vec<DType>,
    rounds: usize,
    warmup: usize,
    calls: usize,
}

/// A `[1, rows, cols]` operand, stored transposed (`[1, cols, rows]` seen through
/// `swap_dims`) when asked.
pub(crate) fn operand<B: Backend>(
    rows: usize,
    cols: usize,
    transposed: bool,
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, 3> {
    let dist = burn::tensor::Distribution::Normal(0.0, 1.0);
    if transposed {
        Tensor::<B, 3>::random([1, cols, rows], dist, device)
            .cast(dtype)
            .swap_dims(1, 2)
    } else {
        Tensor::<B, 3>::random([1, rows, cols], dist, device).cast(dtype)
    }
}

impl BackendRunner for MatmulBenchJob {
    type Output = (String, Vec<MatmulRow>);

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        let mut rows = Vec::new();
        for shape in &self.shapes {
            for &dtype in &self.dtypes {
                if !B::supports_dtype(&device, dtype) {
                    continue;
                }
                let lhs = operand::<B>(shape.m, shape.k, shape.lhs_transposed, dtype, &device);
                let rhs = operand::<B>(shape.k, shape.n, shape.rhs_transposed, dtype, &device);
                let (w, r) = (self.warmup, self.rounds);
                let calls = self.calls;
                let per_call = |ms: f64| ms / calls as f64;
                let mut host_ms = Vec::new();
                let ours_ms = per_call(time_ms::<B, _>(&device, w, r, || {
                    let start = Instant::now();
                    let out = (0..calls)
                        .map(|_| hymba::matmul::matmul(lhs.clone(), rhs.clone()))
                        .last();
                    host_ms.push(per_call(start.elapsed().as_secs_f64() * 1e3));
                    out
                }));
                // The closure also ran for the warm-up rounds (JIT compilation on cuda-raw):
                // the median is over the timed rounds only, as `ours_ms`'s.
                let first_timed = w.min(host_ms.len().saturating_sub(1));
                let timed = &mut host_ms[first_timed..];
                timed.sort_by(f64::total_cmp);
                let ours_host_ms = timed[timed.len() / 2];
                let burn_ms = per_call(time_ms::<B, _>(&device, w, r, || {
                    (0..calls).map(|_| lhs.clone().matmul(rhs.clone())).last()
                }));
                let flops = 2.0 * (shape.m * shape.n * shape.k) as f64;
                let row = MatmulRow {
                    shape: shape.clone(),
                    dtype: format!("{dtype:?}").to_lowercase(),
                    ours_ms,
                    burn_ms,
                    ours_tflops: flops / ours_ms / 1e9,
                    burn_tflops: flops / burn_ms / 1e9,
                    ours_host_ms,
                };
                println!(
                    "{:<28} {:>6} {:>6} {:>6} {:>5} | ours {:>8.3} ms {:>7.1} TFLOP/s (host {:.3} ms) | burn {:>8.3} ms {:>7.1} TFLOP/s",
                    row.shape.name,
                    row.shape.m,
                    row.shape.n,
                    row.shape.k,
                    row.dtype,
                    row.ours_ms,
                    row.ours_tflops,
                    row.ours_host_ms,
                    row.burn_ms,
                    row.burn_tflops
                );
                rows.push(row);
                if let Some(path) = &self.partial_out {
                    let partial = MatmulReport {
                        backend: self.backend.clone(),
                        device: format!("{device:?}"),
                        rounds: r,
                        calls,
                        tf32: hymba::matmul::tf32_allowed(),
                        rows: rows.clone(),
                    };
                    // Best effort: the final write reports errors.
                    let _ = std::fs::write(
                        path,
                        serde_json::to_string_pretty(&partial).unwrap_or_default(),
                    );
                }
            }
        }
        (format!("{device:?}"), rows)
    }
}

/// Runs `hymba-eval bench matmul`: prints a line per product, writes JSON with `--out`.
pub fn run(args: BenchMatmulArgs) -> Result<MatmulReport, BenchError> {
    let kind: BackendKind = args.target.backend.parse()?;
    let dtypes = args
        .dtypes
        .split(',')
        .map(parse_dtype)
        .collect::<Result<Vec<_>, _>>()?;
    if args.tokens == 0 {
        return Err(BenchError::Arg("--tokens must be positive".into()));
    }
    if args.calls == 0 {
        return Err(BenchError::Arg("--calls must be positive".into()));
    }
    let job = MatmulBenchJob {
        partial_out: args.target.out.clone(),
        backend: kind.to_string(),
        shapes: shapes(&args.shapes, &args.presets, args.tokens)?
            .into_iter()
            .filter(|s| {
                args.only
                    .as_ref()
                    .is_none_or(|o| s.name.contains(o.as_str()))
            })
            .collect(),
        dtypes,
        rounds: args.rounds,
        warmup: args.warmup,
        calls: args.calls,
    };
    if job.shapes.is_empty() {
        return Err(BenchError::Arg(format!(
            "no product's name contains {:?} (see --shapes and --presets)",
            args.only.as_deref().unwrap_or_default()
        )));
    }
    println!(
        "matmul on {kind}: model's matmul (ours) vs burn's Tensor::matmul, median of {} rounds \
         of {} products each",
        args.rounds, args.calls
    );
    hymba::matmul::set_tf32(args.tf32);
    let (device, rows) = run_on(kind, args.target.device, job)?;
    let report = MatmulReport {
        backend: kind.to_string(),
        device,
        rounds: args.rounds,
        calls: args.calls,
        tf32: args.tf32,
        rows,
    };
    if let Some(path) = &args.target.out {
        write_json(path, &report)?;
    }
    Ok(report)
}
