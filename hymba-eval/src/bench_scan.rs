//! `hymba-eval bench scan`: times the selective scan (forward, and forward + backward) at
//! Hymba's shapes on one backend, against the tensor-op reference on the same device.
//!
//! Reported per shape and storage dtype: median milliseconds, effective bandwidth
//! (bytes that must move at least once, over the time), its share of the device's peak
//! bandwidth when known, and the speed-up over the reference.
//!
//! Bytes counted (element size e of the storage dtype):
//! - forward: u, delta, z read + y written (`4·b·d·T·e`) + B, C read (`2·b·S·T·e`);
//! - backward adds u, delta, z, dy read + du, d delta, dz written (`7·b·d·T·e`) + B, C read
//!   + dB, dC written (`4·b·S·T·e`). "fwd+bwd" counts both.
//!
//! The reference's backward keeps every state (`O(b·d·S·T)` floats); where that exceeds a
//! memory budget it is timed on a prefix of the sequence and scaled to the full length (it
//! is linear in T), and the row says so (`ref_fwd_bwd_seq`).
//!
//! On wgpu and CUDA both scan designs are timed by default (`--kernel all`): `warp` (one
//! plane of 32 lanes per channel, time split among the lanes: the CUDA design; where the
//! device has no planes of 32 it falls back to `tiled`) and `tiled` (one unit per channel,
//! inputs staged through shared memory: the portable design); see `hymba::scan::cube`.
//! `auto` is what the model runs. Each in both input layouts by default (`--layout both`):
//! time innermost, as `mamba_ssm` takes its inputs, and the model's (channels innermost); a
//! kernel that wants the other layout makes its copies inside the timed call.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use hymba::scan::reference::{DEFAULT_CHUNK, selective_scan_reference};
use hymba::scan::reference_vjp::selective_scan_reference_backward;
use hymba::scan::{ScanInput, selective_scan, selective_scan_backward};
use hymba::{BackendKind, BackendRunner, HymbaBackend, HymbaError, run_on};
use serde::Serialize;

/// `hymba-eval bench ...`
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Time the selective scan (kernel vs tensor-op reference) at Hymba's shapes.
    Scan(BenchScanArgs),
    /// Time the model's matmul (cuBLAS on CUDA) against burn's at 8192³ and the presets'
    /// projection shapes.
    Matmul(crate::bench_matmul::BenchMatmulArgs),
    /// Cache bytes by layer kind at a context length (analytic, and measured after a
    /// prefill), next to Transformer baselines.
    Cache(crate::bench_cache::BenchCacheArgs),
    /// Prefill and decode tokens/s and cache size of a Hymba config against a
    /// pure-attention model of equal parameter count built from the same code.
    Generate(crate::bench_generate::BenchGenerateArgs),
    /// Where a training step's time goes: data, matmul, scan, attention, the rest of forward
    /// and backward, and the optimizer.
    Step(crate::bench_step::BenchStepArgs),
}

/// Where a benchmark runs and where it writes its figures (shared by every `bench`).
#[derive(clap::Args, Debug)]
pub struct BenchTarget {
    /// Backend: ndarray (CPU), wgpu, cuda or cuda-raw (the binary needs the feature of that
    /// name).
    #[arg(long, default_value = "ndarray")]
    pub backend: String,
    /// Device index (CUDA).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Arguments of `hymba-eval bench scan`.
#[derive(clap::Args, Debug)]
pub struct BenchScanArgs {
    /// Backend, device and output file.
    #[command(flatten)]
    pub target: BenchTarget,
    /// `full`: Hymba's shapes (batch 8 × seq 2048 × d_inner 3200 and 1024, batch 4 × seq 8192
    /// × d_inner 3200; state 16). `quick`: small shapes that run on a CPU in seconds.
    #[arg(long, default_value = "full")]
    pub shapes: String,
    /// Timed rounds per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Untimed warm-up rounds per measurement.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Peak memory bandwidth of the device in GB/s (default: detected for H100/H200 through
    /// nvidia-smi on CUDA, else unknown).
    #[arg(long)]
    pub peak_gbps: Option<f64>,
    /// Scan design on wgpu/cuda: warp (CUDA's; tiled where the device has no planes of 32),
    /// tiled (the portable one), auto (what the model runs), or all (warp and tiled).
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Input layout: `time` (`[b, d, T]` contiguous, time innermost, as `mamba_ssm` takes
    /// it), `model` (transposed views of `[b, T, d]` storage, channels innermost, as the
    /// model's SSM heads pass them), or `both`.
    #[arg(long, default_value = "both")]
    pub layout: String,
    /// Skip the tensor-op reference (no speed-ups).
    #[arg(long)]
    pub no_reference: bool,
    /// Memory budget (GB) of the reference's backward; above it the reference's backward is
    /// timed on a prefix of the sequence and scaled.
    #[arg(long, default_value_t = 4.0)]
    pub reference_budget_gb: f64,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad argument.
    #[error("{0}")]
    Arg(String),
    /// From the model library (e.g. a backend not compiled in).
    #[error(transparent)]
    Hymba(#[from] HymbaError),
    /// Writing the JSON file.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// One benchmarked shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ScanShape {
    /// Batch size.
    pub batch: usize,
    /// Channels (d_inner).
    pub d_inner: usize,
    /// Sequence length.
    pub seq: usize,
    /// State size.
    pub state: usize,
}

impl ScanShape {
    pub(crate) const fn new(batch: usize, d_inner: usize, seq: usize, state: usize) -> Self {
        Self {
            batch,
            d_inner,
            seq,
            state,
        }
    }
}

/// Hymba's shapes.
pub const FULL_SHAPES: [ScanShape; 3] = [
    ScanShape::new(8, 3200, 2048, 16),
    ScanShape::new(8, 1024, 2048, 16),
    ScanShape::new(4, 3200, 8192, 16),
];

/// Small shapes for CPUs (lavapipe, ndarray).
pub const QUICK_SHAPES: [ScanShape; 2] = [
    ScanShape::new(2, 96, 128, 16),
    ScanShape::new(1, 160, 256, 16),
];

/// One result row.
#[derive(Debug, Clone, Serialize)]
pub struct ScanBenchRow {
    /// The shape.
    #[serde(flatten)]
    pub shape: ScanShape,
    /// Storage dtype of u, delta, z, B, C, y (`f32` or `bf16`); compute is f32.
    pub dtype: String,
    /// Scan design on CubeCL backends (`warp`, `tiled`, `auto`); `-` elsewhere.
    pub kernel: String,
    /// Input layout: `time` (time innermost) or `model` (channels innermost).
    pub layout: String,
    /// Forward, median ms.
    pub fwd_ms: f64,
    /// Forward + backward, median ms.
    pub fwd_bwd_ms: f64,
    /// Forward effective bandwidth, GB/s.
    pub fwd_gbps: f64,
    /// Forward + backward effective bandwidth, GB/s.
    pub fwd_bwd_gbps: f64,
    /// `fwd_gbps` as % of the device's peak (null when the peak is unknown).
    pub fwd_pct_peak: Option<f64>,
    /// `fwd_bwd_gbps` as % of the device's peak.
    pub fwd_bwd_pct_peak: Option<f64>,
    /// The tensor-op reference's forward, median ms (same device).
    pub ref_fwd_ms: Option<f64>,
    /// The reference's forward + backward, median ms (scaled to the full length when timed
    /// on a prefix).
    pub ref_fwd_bwd_ms: Option<f64>,
    /// The sequence length the reference's backward was timed at (= `seq` unless scaled).
    pub ref_fwd_bwd_seq: Option<usize>,
    /// `ref_fwd_ms / fwd_ms`.
    pub speedup_fwd: Option<f64>,
    /// `ref_fwd_bwd_ms / fwd_bwd_ms`.
    pub speedup_fwd_bwd: Option<f64>,
}

/// The whole report (what `--out` writes).
#[derive(Debug, Clone, Serialize)]
pub struct ScanBenchReport {
    /// Backend flag.
    pub backend: String,
    /// burn's name of the device/backend.
    pub device: String,
    /// The GPU's name as nvidia-smi gives it (CUDA only), so that a committed file says
    /// which card it was measured on.
    pub device_name: Option<String>,
    /// Peak bandwidth used for the percentages, GB/s.
    pub peak_gbps: Option<f64>,
    /// Timed rounds per measurement.
    pub rounds: usize,
    /// One row per shape and dtype.
    pub rows: Vec<ScanBenchRow>,
}

/// The benchmark as a [`BackendRunner`].
#[derive(Debug, Clone)]
pub struct ScanBenchJob {
    /// Shapes to run.
    pub shapes: Vec<ScanShape>,
    /// Timed rounds.
    pub rounds: usize,
    /// Warm-up rounds.
    pub warmup: usize,
    /// Scan designs to time (`warp`, `tiled`, `auto`; `-` = the backend's only path).
    pub kernels: Vec<String>,
    /// Input layouts to time: `false` = time innermost, `true` = the model's.
    pub layouts: Vec<bool>,
    /// Time the reference too.
    pub reference: bool,
    /// Memory budget of the reference's backward, bytes.
    pub reference_budget: f64,
}

/// Median wall time (ms) of `f`, synchronising the device after each call; the outputs
/// stay alive until the device is synchronised.
pub(crate) fn time_ms<B: Backend, T>(
    device: &B::Device,
    warmup: usize,
    rounds: usize,
    mut f: impl FnMut() -> T,
) -> f64 {
    let sync = || B::sync(device).expect("device synchronisation");
    for _ in 0..warmup {
        let out = f();
        sync();
        drop(out);
    }
    let mut times: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            let out = f();
            sync();
            let ms = start.elapsed().as_secs_f64() * 1e3;
            drop(out);
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Random scan inputs of `shape` in `dtype` (A = −exp(N(0,1)), negative as the model's), and
/// an output gradient of y's shape.
///
/// With `model_layout` the `[b, ·, T]` tensors are transposed views of `[b, T, ·]` storage,
/// channels innermost, as the model's SSM heads pass them (they come out of `[b, T, ·]`
/// projections); else time is innermost.
pub(crate) fn inputs<B: Backend>(
    shape: ScanShape,
    dtype: DType,
    model_layout: bool,
    device: &B::Device,
) -> (ScanInput<B>, Tensor<B, 3>) {
    let ScanShape {
        batch: b,
        d_inner: d,
        seq: t,
        state: s,
    } = shape;
    let n = Distribution::Normal(0.0, 1.0);
    let big = |[b, c, t]: [usize; 3]| {
        if model_layout {
            Tensor::<B, 3>::random([b, t, c], n, device)
                .cast(dtype)
                .swap_dims(1, 2)
        } else {
            Tensor::<B, 3>::random([b, c, t], n, device).cast(dtype)
        }
    };
    let input = ScanInput {
        u: big([b, d, t]),
        delta: big([b, d, t]),
        a: Tensor::<B, 2>::random([d, s], n, device).exp().neg(),
        b: big([b, s, t]),
        c: big([b, s, t]),
        d: Tensor::random([d], n, device),
        z: big([b, d, t]),
        delta_bias: Tensor::random([d], n, device),
        initial_state: None,
    };
    (input, big([b, d, t]))
}

fn prefix<B: Backend>(
    x: &ScanInput<B>,
    dy: &Tensor<B, 3>,
    len: usize,
) -> (ScanInput<B>, Tensor<B, 3>) {
    let cut = |t: &Tensor<B, 3>| t.clone().narrow(2, 0, len);
    let input = ScanInput {
        u: cut(&x.u),
        delta: cut(&x.delta),
        b: cut(&x.b),
        c: cut(&x.c),
        z: cut(&x.z),
        ..x.clone()
    };
    (input, cut(dy))
}

fn reference_fwd_bwd<B: Backend>(input: ScanInput<B>, dy: Tensor<B, 3>) -> ScanInput<B> {
    let (y, h) = selective_scan_reference(input.clone(), DEFAULT_CHUNK);
    let g = selective_scan_reference_backward(
        input.into_primitives(),
        dy.into_primitive().tensor(),
        None,
    );
    drop((y, h));
    g.into_tensors()
}

/// Switches the scan kernels (CubeCL backends only; elsewhere there is one path, "-").
fn select_kernel(name: &str) {
    // On ndarray the name is "-" and there is nothing to select.
    let _ = hymba::scan::select_kernel(name);
}

impl BackendRunner for ScanBenchJob {
    type Output = (String, Vec<ScanBenchRow>);

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        let mut rows = Vec::new();
        let mut dtypes = vec![DType::F32];
        if B::supports_dtype(&device, DType::BF16) {
            dtypes.push(DType::BF16);
        }
        let (w, r) = (self.warmup, self.rounds);
        for &shape in &self.shapes {
            let ScanShape {
                batch,
                d_inner,
                seq,
                state,
            } = shape;
            for (&dtype, &model_layout) in dtypes
                .iter()
                .flat_map(|d| self.layouts.iter().map(move |l| (d, l)))
            {
                B::seed(&device, 0);
                let (x, dy) = inputs::<B>(shape, dtype, model_layout, &device);
                let (mut ref_fwd_ms, mut ref_fwd_bwd_ms, mut ref_seq) = (None, None, None);
                if self.reference {
                    let (rw, rr) = (w.min(1), r.min(3));
                    ref_fwd_ms = Some(time_ms::<B, _>(&device, rw, rr, || {
                        selective_scan_reference(x.clone(), DEFAULT_CHUNK)
                    }));
                    // The reference backward keeps every state ([b, d, S] per step, f32) and
                    // a few temporaries of that size.
                    let per_step = 4.0 * (batch * d_inner * state * DEFAULT_CHUNK * 4) as f64;
                    let fit = ((self.reference_budget / per_step) as usize / DEFAULT_CHUNK)
                        * DEFAULT_CHUNK;
                    let len = fit.clamp(DEFAULT_CHUNK.min(seq), seq);
                    let (xp, dyp) = prefix(&x, &dy, len);
                    let ms = time_ms::<B, _>(&device, rw, rr, || {
                        reference_fwd_bwd(xp.clone(), dyp.clone())
                    });
                    ref_fwd_bwd_ms = Some(ms * seq as f64 / len as f64);
                    ref_seq = Some(len);
                }
                for kernel in &self.kernels {
                    select_kernel(kernel);
                    let fwd_ms = time_ms::<B, _>(&device, w, r, || selective_scan(x.clone()));
                    let fwd_bwd_ms = time_ms::<B, _>(&device, w, r, || {
                        let out = selective_scan(x.clone());
                        (out, selective_scan_backward(x.clone(), dy.clone(), None))
                    });
                    let e = dtype.size() as f64;
                    let big = (batch * d_inner * seq) as f64 * e;
                    let small = (batch * state * seq) as f64 * e;
                    let fwd_bytes = 4.0 * big + 2.0 * small;
                    let bwd_bytes = 7.0 * big + 4.0 * small;
                    rows.push(ScanBenchRow {
                        shape,
                        dtype: if dtype == DType::BF16 { "bf16" } else { "f32" }.to_string(),
                        kernel: kernel.clone(),
                        layout: if model_layout { "model" } else { "time" }.to_string(),
                        fwd_ms,
                        fwd_bwd_ms,
                        fwd_gbps: fwd_bytes / (fwd_ms * 1e-3) / 1e9,
                        fwd_bwd_gbps: (fwd_bytes + bwd_bytes) / (fwd_bwd_ms * 1e-3) / 1e9,
                        fwd_pct_peak: None,
                        fwd_bwd_pct_peak: None,
                        ref_fwd_ms,
                        ref_fwd_bwd_ms,
                        ref_fwd_bwd_seq: ref_seq,
                        speedup_fwd: ref_fwd_ms.map(|r| r / fwd_ms),
                        speedup_fwd_bwd: ref_fwd_bwd_ms.map(|r| r / fwd_bwd_ms),
                    });
                }
                select_kernel("auto");
            }
        }
        (B::name(&device), rows)
    }
}

/// The name nvidia-smi gives CUDA device `index` (e.g. "NVIDIA H100 80GB HBM3").
pub(crate) fn gpu_name(index: usize) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name",
            "--format=csv,noheader",
            &format!("--id={index}"),
        ])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// The peak bandwidth of CUDA device `index` from its name (nvidia-smi): H100 3350 GB/s
/// (SXM; PCIe 2000), H200 4800 GB/s; anything else unknown.
fn detect_peak_gbps(index: usize) -> Option<f64> {
    let name = gpu_name(index)?.to_uppercase();
    if name.contains("H200") {
        Some(4800.0)
    } else if name.contains("H100") && name.contains("PCIE") {
        Some(2000.0)
    } else if name.contains("H100") {
        Some(3350.0)
    } else {
        None
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

/// Runs `hymba-eval bench scan`: prints a table, and writes JSON with `--out`.
pub fn run(args: BenchScanArgs) -> Result<ScanBenchReport, BenchError> {
    let kind: BackendKind = args.target.backend.parse()?;
    let shapes = match args.shapes.as_str() {
        "full" => FULL_SHAPES.to_vec(),
        "quick" => QUICK_SHAPES.to_vec(),
        other => {
            return Err(BenchError::Arg(format!(
                "--shapes {other}: expected quick or full"
            )));
        }
    };
    let kernels: Vec<String> = match (kind, args.kernel.as_str()) {
        (BackendKind::NdArray, _) => vec!["-".into()],
        (_, "all") => ["warp", "tiled"].map(String::from).to_vec(),
        (_, k @ ("warp" | "tiled" | "auto")) => vec![k.into()],
        (_, other) => {
            return Err(BenchError::Arg(format!(
                "--kernel {other}: expected warp, tiled, auto or all"
            )));
        }
    };
    let layouts = match args.layout.as_str() {
        "time" => vec![false],
        "model" => vec![true],
        "both" => vec![false, true],
        other => {
            return Err(BenchError::Arg(format!(
                "--layout {other}: expected time, model or both"
            )));
        }
    };
    let job = ScanBenchJob {
        shapes,
        kernels,
        layouts,
        rounds: args.rounds,
        warmup: args.warmup,
        reference: !args.no_reference,
        reference_budget: args.reference_budget_gb * 1e9,
    };
    let (device, mut rows) = run_on(kind, args.target.device, job)?;
    let peak = args.peak_gbps.or_else(|| {
        matches!(kind, BackendKind::Cuda | BackendKind::CudaRaw)
            .then(|| detect_peak_gbps(args.target.device))
            .flatten()
    });
    for row in &mut rows {
        row.fwd_pct_peak = peak.map(|p| 100.0 * row.fwd_gbps / p);
        row.fwd_bwd_pct_peak = peak.map(|p| 100.0 * row.fwd_bwd_gbps / p);
    }
    let device_name = matches!(kind, BackendKind::Cuda | BackendKind::CudaRaw)
        .then(|| gpu_name(args.target.device))
        .flatten();
    let report = ScanBenchReport {
        backend: kind.to_string(),
        device,
        device_name,
        peak_gbps: peak,
        rounds: args.rounds,
        rows,
    };

    println!(
        "selective scan on {} ({}), peak {} GB/s, median of {} rounds",
        report.backend,
        report.device,
        fmt_opt(peak, 0),
        report.rounds
    );
    println!(
        "{:>5} {:>6} {:>6} {:>3} {:>5} {:>8} {:>6} | {:>9} {:>7} {:>6} | {:>9} {:>7} {:>6} | {:>10} {:>10} {:>7} {:>7}",
        "batch",
        "d",
        "seq",
        "S",
        "dtype",
        "kernel",
        "layout",
        "fwd ms",
        "GB/s",
        "%peak",
        "f+b ms",
        "GB/s",
        "%peak",
        "ref fwd",
        "ref f+b",
        "x fwd",
        "x f+b"
    );
    for r in &report.rows {
        let s = r.shape;
        println!(
            "{:>5} {:>6} {:>6} {:>3} {:>5} {:>8} {:>6} | {:>9.3} {:>7.1} {:>6} | {:>9.3} {:>7.1} {:>6} | {:>10} {:>10} {:>7} {:>7}",
            s.batch,
            s.d_inner,
            s.seq,
            s.state,
            r.dtype,
            r.kernel,
            r.layout,
            r.fwd_ms,
            r.fwd_gbps,
            fmt_opt(r.fwd_pct_peak, 1),
            r.fwd_bwd_ms,
            r.fwd_bwd_gbps,
            fmt_opt(r.fwd_bwd_pct_peak, 1),
            fmt_opt(r.ref_fwd_ms, 2),
            match (r.ref_fwd_bwd_ms, r.ref_fwd_bwd_seq) {
                (Some(ms), Some(seq)) if seq < s.seq => format!("{ms:.1}*"),
                (ms, _) => fmt_opt(ms, 2),
            },
            fmt_opt(r.speedup_fwd, 1),
            fmt_opt(r.speedup_fwd_bwd, 1),
        );
    }
    if report
        .rows
        .iter()
        .any(|r| r.ref_fwd_bwd_seq.is_some_and(|q| q < r.shape.seq))
    {
        println!("* reference backward timed on a prefix of the sequence and scaled to its length");
    }
    if let Some(path) = &args.target.out {
        write_json(path, &report)?;
    }
    Ok(report)
}

/// Writes a report as pretty JSON and says so.
pub(crate) fn write_json(
    path: &std::path::Path,
    report: &impl Serialize,
) -> Result<(), BenchError> {
    let json = serde_json::to_string_pretty(report).expect("serialisable report");
    std::fs::write(path, json).map_err(|source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    println!("wrote {}", path.display());
    Ok(())
}
