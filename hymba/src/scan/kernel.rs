//! CubeCL kernels of the selective scan: one `#[cube]` source for every CubeCL runtime
//! (CUDA, wgpu/Vulkan, lavapipe on a CPU). The kernels here use no plane (warp) operations;
//! the time-parallel ones ([`super::parallel`]) use them where the device has them.
//!
//! # Forward (`scan_forward_kernel`)
//! One unit per (batch, channel), [`FWD_UNITS`] channels per cube; the state `h[S]` lives in
//! registers (S is a compile-time constant, loops over it unrolled). Time goes in tiles of up
//! to 32 steps: the cube first copies the tile's u, delta, z (its channels) and B, C to shared
//! memory — coalesced, whichever dimension is innermost, all loads in flight at once — then
//! each unit scans its row from there, and y goes back to global memory the same way.
//! Prologue and epilogue are fused: `Δ = softplus(delta + bias)` with the
//! `x > 20 ? x : log1p(eˣ)` rule, the D skip and the `silu(z)` gate. It writes y and the
//! last state. A decode step is this kernel with T = 1 and an initial state.
//!
//! Opt-in ([`set_scan_split`], `HYMBA_SCAN_SPLIT=1`): when batch × channels is too small to
//! fill the GPU, [`forward_pieces`] splits time into pieces instead
//! (`scan_forward_split_kernel`): each unit scans one piece of one channel twice, first
//! from a zero state to get the piece's end state, then, with the earlier pieces folded
//! into its start state, for the outputs. It reads global memory step by step, so it only
//! pays off where the inputs are stored channels-innermost; it is off by default.
//!
//! # Backward (`scan_backward_kernel`)
//! Same layout, [`BWD_UNITS`] channels per cube, chunks of `chunk` steps staged in shared
//! memory like the forward tiles:
//! 1. a forward pass stores the state at the start of every chunk (O(T/chunk · S) floats per
//!    unit, not O(T · S));
//! 2. chunks are visited last to first: the chunk's states are recomputed from its start
//!    state into a local array, then a reverse sweep carries the adjoint `dh[S]` and
//!    produces du, dΔ → d(delta) (and d(delta_bias)), dz, and the reductions: dA, dD and
//!    d(delta_bias) are summed over time in registers (then over batch by a tensor op);
//!    dB and dC, shared by all channels, are summed over the cube's channels in shared memory
//!    at each step and written per cube, then summed over cubes by a tensor op.
//!
//! # Variants
//! [`ScanKernel::Direct`] runs untiled versions of both kernels (each unit reads its inputs
//! from global memory step by step; on lavapipe they are faster). Pick with
//! [`set_scan_kernel`] or `HYMBA_SCAN_KERNEL=direct`; `hymba-eval bench scan` times both.
//!
//! Every kernel is compiled with `fast_math = ReducedPrecision | NotNaN | NotInf`: on CUDA
//! that turns `exp` into `__expf` (one `ex2.approx` instead of the accurate `expf`
//! sequence; relative error ~1e-7, well inside the tests' 1e-4). Every step of every state
//! evaluates one exponential, so it is the kernels' hottest instruction.
//!
//! Everything is computed in f32; the large tensors (u, delta, z, B, C, y, dy and the
//! gradients of the first ones) are read and written in their storage dtype (f32, f16,
//! bf16); the small ones (A, D, bias, states) are converted to f32 on the host.
//!
//! The tiled and direct kernels read every tensor through its strides, so the transposed
//! views the model passes (`[b, T, d]` storage seen as `[b, d, T]`) need no copy; their
//! outputs are allocated in the layout of `z` (channels innermost when z is stored that
//! way, which makes the per-step accesses of neighbouring units contiguous). The
//! time-parallel kernels want the other layout, time innermost, and get it by a copy where
//! an input lacks it (`time_inner`); their outputs are then time-innermost too.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive, s};
use burn_cubecl::kernel::cast;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::ops::permute;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::{CubeCount, CubeDim};

use self::cube::{
    scan_backward_direct_kernel, scan_backward_kernel, scan_forward_direct_kernel,
    scan_forward_kernel, scan_forward_split_kernel,
};
use super::reference::{selective_scan_reference_backward, selective_scan_reference_primitives};
use super::{ScanBackend, ScanGrads, ScanPrimitives, channel, parallel};

/// FNV-1a of `bytes`, at compile time (the kernels' source fingerprints).
pub(crate) const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// A fingerprint of the scan kernels' source, passed to every scan kernel as a comptime
/// value. CubeCL's persistent kernel cache ([`crate::backend`]) keys a kernel by its type
/// name and comptime values only, so without it a changed kernel of the same name would be
/// served from a cache filled by an older build (this happened: an H100 run of a rewritten
/// kernel timed the cached previous version).
pub const SOURCE: u64 = fnv1a(
    concat!(
        include_str!("kernel.rs"),
        include_str!("parallel.rs"),
        include_str!("plane_bwd.rs"),
        include_str!("channel.rs"),
        include_str!("warp.rs")
    )
    .as_bytes(),
);

/// Channels per cube of the forward kernel.
pub const FWD_UNITS: usize = 32;
/// Channels per cube of the backward kernel (one warp, so that its per-step reduction of dB
/// and dC over the cube's channels is cheap).
pub const BWD_UNITS: usize = 32;
/// The largest state size the kernels take (the state lives in registers); larger states
/// fall back to the tensor-op reference.
pub const MAX_STATE: usize = 64;
/// Channels per cube of the untiled ("direct") forward kernel.
pub const FWD_DIRECT_UNITS: usize = 64;

/// Which pair of kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKernel {
    /// Inputs staged through shared memory in tiles of time steps (coalesced loads, all in
    /// flight at once): the default.
    Tiled,
    /// Every unit reads its own inputs from global memory, step by step (no shared-memory
    /// staging; on a CPU emulation such as lavapipe this is the faster one).
    Direct,
    /// Time split among the units of a cube, scanned in parallel ([`super::parallel`]).
    Parallel,
    /// The units of a channel walk its sequence reading the channels-innermost layout
    /// directly, no copies ([`super::channel`]).
    Channel,
    /// Per call: [`ScanKernel::Channel`] (when [`super::channel::AUTO`]) on devices with the
    /// plane paths when u is stored channels innermost (the model's layout) and
    /// S ≤ [`super::channel::MAX_STATE`]; else [`ScanKernel::Parallel`] on devices with the
    /// plane paths (CUDA: there it was the faster one at every shape of `bench scan` with
    /// time innermost), elsewhere when batch × channels is at most [`PARALLEL_MAX_ROWS`] (too
    /// few sequences to fill a GPU one unit each), else [`ScanKernel::Tiled`]. The default.
    Auto,
}

/// Up to this many sequences (batch × channels) [`ScanKernel::Auto`] runs the time-parallel
/// kernels. On an H100 (bf16, T = 2048) they were faster at 8,192 sequences (forward +
/// backward 7.6 vs 10.9 ms) and slower at 25,600 (22.4 vs 15.3 ms); in a hymba-125m step at
/// 2 × 1,024 sequences the scan went from 288 to 71 ms.
pub const PARALLEL_MAX_ROWS: usize = 8192;

impl ScanKernel {
    /// The concrete kernels for `rows` = batch × channels sequences, on a device with
    /// (`planes`) or without the plane paths ([`parallel::use_planes`]).
    pub fn resolve(self, rows: usize, planes: bool) -> ScanKernel {
        self.resolve_for(rows, planes, false)
    }

    /// As [`ScanKernel::resolve`], for inputs stored channels innermost (`channel_layout`)
    /// with a state the channel kernels take.
    pub fn resolve_for(self, rows: usize, planes: bool, channel_layout: bool) -> ScanKernel {
        match self {
            ScanKernel::Auto if planes && channel_layout && channel::AUTO => ScanKernel::Channel,
            ScanKernel::Auto if planes || rows <= PARALLEL_MAX_ROWS => ScanKernel::Parallel,
            ScanKernel::Auto => ScanKernel::Tiled,
            k => k,
        }
    }

    /// The kernels named `tiled`, `direct`, `parallel`, `channel` or `auto`.
    pub fn from_name(name: &str) -> Option<ScanKernel> {
        match name {
            "tiled" => Some(ScanKernel::Tiled),
            "direct" => Some(ScanKernel::Direct),
            "parallel" => Some(ScanKernel::Parallel),
            "channel" => Some(ScanKernel::Channel),
            "auto" => Some(ScanKernel::Auto),
            _ => None,
        }
    }
}

static KERNEL: AtomicU8 = AtomicU8::new(u8::MAX);
static SPLIT: AtomicU8 = AtomicU8::new(u8::MAX);

/// Whether the tiled forward may split time into pieces ([`forward_pieces`]): set by
/// [`set_scan_split`], else on only with `HYMBA_SCAN_SPLIT=1`. Off by default: on an H100
/// it was 3.9× slower than the sequential tiled kernel for inputs stored with time
/// innermost (its per-step global reads are not coalesced across channels there;
/// `bench/results/scan_h100_split.json`).
pub fn scan_split() -> bool {
    match SPLIT.load(Ordering::Relaxed) {
        0 => false,
        1 => true,
        _ => {
            let on = std::env::var("HYMBA_SCAN_SPLIT").as_deref() == Ok("1");
            set_scan_split(on);
            on
        }
    }
}

/// Allows or forbids the time-split forward for every later call, process-wide.
pub fn set_scan_split(on: bool) {
    SPLIT.store(u8::from(on), Ordering::Relaxed);
}

/// The kernels in use: set by [`set_scan_kernel`], else by the environment variable
/// `HYMBA_SCAN_KERNEL=tiled|direct|parallel|channel|auto`, else [`ScanKernel::Auto`].
pub fn scan_kernel() -> ScanKernel {
    match KERNEL.load(Ordering::Relaxed) {
        0 => ScanKernel::Tiled,
        1 => ScanKernel::Direct,
        2 => ScanKernel::Parallel,
        3 => ScanKernel::Auto,
        4 => ScanKernel::Channel,
        _ => {
            let from_env = std::env::var("HYMBA_SCAN_KERNEL")
                .ok()
                .and_then(|name| ScanKernel::from_name(&name))
                .unwrap_or(ScanKernel::Auto);
            set_scan_kernel(from_env);
            from_env
        }
    }
}

/// Chooses the kernels for every later call, process-wide (both compute the same thing).
pub fn set_scan_kernel(kernel: ScanKernel) {
    let code = match kernel {
        ScanKernel::Tiled => 0,
        ScanKernel::Direct => 1,
        ScanKernel::Parallel => 2,
        ScanKernel::Auto => 3,
        ScanKernel::Channel => 4,
    };
    KERNEL.store(code, Ordering::Relaxed);
}

/// Steps per chunk of the backward kernel for state size `states`: up to ~256 floats of
/// recomputed states per unit (`(chunk + 1) · S`, a local array), and the chunk's tiles within
/// the device's shared memory; `None` when not even one step fits.
pub fn backward_chunk<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    states: usize,
) -> Option<usize> {
    let max = client.properties().hardware.max_shared_memory_size;
    let bytes =
        |chunk: usize| 4 * ((4 * BWD_UNITS + 4 * states) * (chunk + 1) + 2 * BWD_UNITS * states);
    let mut chunk = (256 / states.max(1)).clamp(4, 32);
    while bytes(chunk) > max {
        if chunk == 1 {
            return None;
        }
        chunk /= 2;
    }
    Some(chunk)
}

/// How many pieces the time-split forward cuts each sequence into (1 = the sequential
/// tiled kernel): enough units to fill a large GPU (~2¹⁷ in flight) when batch × channels
/// alone does not, pieces of at least 64 steps, at most 8 pieces, and the pieces' end
/// states (`pieces · FWD_UNITS · S` floats) within 32 KiB of shared memory. Only when
/// [`scan_split`] allows it.
pub fn forward_pieces(rows: usize, len: usize, states: usize) -> usize {
    // Without the plane paths: where they exist, `Auto` never runs the tiled kernels.
    if scan_kernel().resolve(rows, false) != ScanKernel::Tiled || !scan_split() {
        return 1;
    }
    let mut pieces = (131_072 / rows.max(1)).next_power_of_two().clamp(1, 8);
    while pieces > 1 && (len / pieces < 64 || pieces * FWD_UNITS * states * 4 > 32 * 1024) {
        pieces /= 2;
    }
    pieces
}

/// Steps per shared-memory tile of the forward kernel: the largest of 32, 16, .. whose
/// tiles (u, delta, z for [`FWD_UNITS`] channels, B and C) fit the device's shared memory.
fn forward_tile<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>, states: usize) -> usize {
    let max = client.properties().hardware.max_shared_memory_size;
    let bytes = |tile: usize| 4 * (3 * FWD_UNITS + 2 * states) * (tile + 1);
    [32, 16, 8, 4, 2]
        .into_iter()
        .find(|&t| bytes(t) <= max)
        .unwrap_or(1)
}

/// The kernels (kept apart: cubecl's prelude has its own `Tensor`, `Shape`, ...).
// `div_ceil` is not a cube function.
#[allow(clippy::manual_div_ceil)]
pub(crate) mod cube {
    use cubecl::prelude::*;

    /// `softplus(x)` with the reference's `x > 20 ? x : log1p(eˣ)` rule.
    #[cube]
    pub fn softplus(x: f32) -> f32 {
        let mut r = x;
        if x <= 20.0 {
            r = f32::log1p(f32::exp(x));
        }
        r
    }

    /// The logistic function.
    #[cube]
    pub fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + f32::exp(-x))
    }

    /// Copies `x[b, r0 + r, t0 + i]` (r < rows, i < width) into `tile[r·pitch + i]` as f32,
    /// zero past the tensor's end. Neighbouring units read neighbouring addresses of `x`,
    /// whichever of its last two dimensions is stored innermost.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load_tile<F: Float>(
        x: &Tensor<F>,
        tile: &mut SharedMemory<f32>,
        b: usize,
        r0: usize,
        t0: usize,
        n_steps: usize,
        #[comptime] rows: usize,
        #[comptime] width: usize,
        #[comptime] units: usize,
    ) {
        let pitch = comptime!(width + 1);
        let n_rows = x.shape(1);
        let sr = x.stride(1);
        let st = x.stride(2);
        let base = b * x.stride(0);
        let rows_inner = sr < st;
        let mut idx = UNIT_POS_X as usize;
        while idx < comptime!(rows * width) {
            let mut r = idx / width;
            let mut i = idx % width;
            if rows_inner {
                r = idx % rows;
                i = idx / rows;
            }
            let mut v = 0.0f32;
            if r0 + r < n_rows && i < n_steps {
                v = f32::cast_from(x[base + (r0 + r) * sr + (t0 + i) * st]);
            }
            tile[r * pitch + i] = v;
            idx += units;
        }
    }

    /// The converse of [`load_tile`]: `x[b, r0 + r, t0 + i] = tile[r·pitch + i]` where in
    /// bounds.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store_tile<F: Float>(
        x: &mut Tensor<F>,
        tile: &SharedMemory<f32>,
        b: usize,
        r0: usize,
        t0: usize,
        n_steps: usize,
        #[comptime] rows: usize,
        #[comptime] width: usize,
        #[comptime] units: usize,
    ) {
        let pitch = comptime!(width + 1);
        let n_rows = x.shape(1);
        let sr = x.stride(1);
        let st = x.stride(2);
        let base = b * x.stride(0);
        let rows_inner = sr < st;
        let mut idx = UNIT_POS_X as usize;
        while idx < comptime!(rows * width) {
            let mut r = idx / width;
            let mut i = idx % width;
            if rows_inner {
                r = idx % rows;
                i = idx / rows;
            }
            if r0 + r < n_rows && i < n_steps {
                x[base + (r0 + r) * sr + (t0 + i) * st] = F::cast_from(tile[r * pitch + i]);
            }
            idx += units;
        }
    }

    /// One unit per channel, `units` channels per cube; time in tiles of `tile` steps whose
    /// inputs are first copied to shared memory by the whole cube (coalesced, all loads in
    /// flight at once), then scanned by each unit from there; y goes back the same way.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_forward_kernel<F: Float>(
        u: &Tensor<F>,
        delta: &Tensor<F>,
        z: &Tensor<F>,
        bm: &Tensor<F>,
        cm: &Tensor<F>,
        a: &Tensor<f32>,
        dskip: &Tensor<f32>,
        bias: &Tensor<f32>,
        h0: &Tensor<f32>,
        y: &mut Tensor<F>,
        h_last: &mut Tensor<f32>,
        #[comptime] n_state: usize,
        #[comptime] units: usize,
        #[comptime] tile: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let lane = UNIT_POS_X as usize;
        let c_base = CUBE_POS_X as usize * units;
        let b = CUBE_POS_Y as usize;
        let c = c_base + lane;
        // Units past the last channel take part in the copies and synchronisations, and
        // scan the last channel's parameters over zero inputs; they write nothing.
        let active = c < channels;
        let mut cc = c;
        if !active {
            cc = channels - 1;
        }
        let pitch = comptime!(tile + 1);
        let mut su = SharedMemory::<f32>::new(comptime!(units * (tile + 1)));
        let mut sd = SharedMemory::<f32>::new(comptime!(units * (tile + 1)));
        let mut sz = SharedMemory::<f32>::new(comptime!(units * (tile + 1)));
        let mut sb = SharedMemory::<f32>::new(comptime!(n_state * (tile + 1)));
        let mut sc = SharedMemory::<f32>::new(comptime!(n_state * (tile + 1)));

        let mut h = Array::<f32>::new(n_state);
        let mut av = Array::<f32>::new(n_state);
        #[unroll]
        for s in 0..n_state {
            av[s] = a[cc * a.stride(0) + s * a.stride(1)];
            h[s] = 0.0;
        }
        if has_h0 {
            #[unroll]
            for s in 0..n_state {
                h[s] = h0[b * h0.stride(0) + cc * h0.stride(1) + s * h0.stride(2)];
            }
        }
        let dv = dskip[cc * dskip.stride(0)];
        let bv = bias[cc * bias.stride(0)];
        let row = lane * pitch;

        let n_tiles = (len + tile - 1) / tile;
        for k in 0..n_tiles {
            let t0 = k * tile;
            let mut n = len - t0;
            if n > tile {
                n = tile;
            }
            load_tile::<F>(u, &mut su, b, c_base, t0, n, units, tile, units);
            load_tile::<F>(delta, &mut sd, b, c_base, t0, n, units, tile, units);
            load_tile::<F>(z, &mut sz, b, c_base, t0, n, units, tile, units);
            load_tile::<F>(bm, &mut sb, b, 0, t0, n, n_state, tile, units);
            load_tile::<F>(cm, &mut sc, b, 0, t0, n, n_state, tile, units);
            sync_cube();
            for i in 0..n {
                let uu = su[row + i];
                let dt = softplus(sd[row + i] + bv);
                let dtu = dt * uu;
                let mut acc = 0.0f32;
                #[unroll]
                for s in 0..n_state {
                    let hs = f32::exp(dt * av[s]) * h[s] + dtu * sb[s * pitch + i];
                    h[s] = hs;
                    acc += hs * sc[s * pitch + i];
                }
                let zz = sz[row + i];
                // y replaces u in the tile (each unit owns its row).
                su[row + i] = (acc + dv * uu) * (zz * sigmoid(zz));
            }
            sync_cube();
            store_tile::<F>(y, &su, b, c_base, t0, n, units, tile, units);
            sync_cube();
        }

        if active {
            #[unroll]
            for s in 0..n_state {
                h_last[b * h_last.stride(0) + c * h_last.stride(1) + s * h_last.stride(2)] = h[s];
            }
        }
    }

    /// The forward with time split into `n_chunks` pieces: one unit per (channel, piece),
    /// `units` channels × `n_chunks` pieces per cube (unit x = channel, unit y = piece).
    /// Pass 1: each unit scans its piece from a zero state and leaves the end state and
    /// ΣΔ in shared memory. Pass 2: each unit folds the pieces before its own into its start
    /// state, `h ← exp(A·ΣΔ_j)·h + h_end_j` (exact: A is constant over time, so the decay
    /// over a piece is the exponential of its summed Δ), then scans its piece again and
    /// writes y. Twice the arithmetic of one sequential pass and `n_chunks` times the units:
    /// with one unit per (batch, channel) too few units are in flight to hide the latency of
    /// each step (Hymba-1.5B at batch 8: 25,600 units on a GPU that holds 270,000).
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_forward_split_kernel<F: Float>(
        u: &Tensor<F>,
        delta: &Tensor<F>,
        z: &Tensor<F>,
        bm: &Tensor<F>,
        cm: &Tensor<F>,
        a: &Tensor<f32>,
        dskip: &Tensor<f32>,
        bias: &Tensor<f32>,
        h0: &Tensor<f32>,
        y: &mut Tensor<F>,
        h_last: &mut Tensor<f32>,
        #[comptime] n_state: usize,
        #[comptime] units: usize,
        #[comptime] n_chunks: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let lane = UNIT_POS_X as usize;
        let k = UNIT_POS_Y as usize;
        let c = CUBE_POS_X as usize * units + lane;
        let b = CUBE_POS_Y as usize;
        // Units past the last channel compute the last channel's piece (the cube
        // synchronises once) and write nothing.
        let active = c < channels;
        let mut cc = c;
        if !active {
            cc = channels - 1;
        }
        let piece = (len + n_chunks - 1) / n_chunks;
        let mut t_begin = k * piece;
        if t_begin > len {
            t_begin = len;
        }
        let mut t_end = t_begin + piece;
        if t_end > len {
            t_end = len;
        }
        let mut h_end = SharedMemory::<f32>::new(comptime!(n_chunks * units * n_state));
        let mut sum_dt = SharedMemory::<f32>::new(comptime!(n_chunks * units));

        let mut h = Array::<f32>::new(n_state);
        let mut av = Array::<f32>::new(n_state);
        #[unroll]
        for s in 0..n_state {
            av[s] = a[cc * a.stride(0) + s * a.stride(1)];
            h[s] = 0.0;
        }
        let dv = dskip[cc * dskip.stride(0)];
        let bv = bias[cc * bias.stride(0)];
        let u0 = b * u.stride(0) + cc * u.stride(1);
        let ut = u.stride(2);
        let d0 = b * delta.stride(0) + cc * delta.stride(1);
        let dt_ = delta.stride(2);
        let z0 = b * z.stride(0) + cc * z.stride(1);
        let zt = z.stride(2);
        let y0 = b * y.stride(0) + cc * y.stride(1);
        let yt = y.stride(2);
        let b0 = b * bm.stride(0);
        let bs = bm.stride(1);
        let bt = bm.stride(2);
        let c0 = b * cm.stride(0);
        let cs = cm.stride(1);
        let ct = cm.stride(2);

        // Pass 1: the piece's own contribution to its end state, and its summed Δ.
        let mut total = 0.0f32;
        for t in t_begin..t_end {
            let dt = softplus(f32::cast_from(delta[d0 + t * dt_]) + bv);
            total += dt;
            let dtu = dt * f32::cast_from(u[u0 + t * ut]);
            #[unroll]
            for s in 0..n_state {
                h[s] = f32::exp(dt * av[s]) * h[s] + dtu * f32::cast_from(bm[b0 + s * bs + t * bt]);
            }
        }
        let slot = k * units + lane;
        #[unroll]
        for s in 0..n_state {
            h_end[slot * n_state + s] = h[s];
        }
        sum_dt[slot] = total;
        sync_cube();

        // The state entering this piece: the initial state carried over every earlier piece.
        #[unroll]
        for s in 0..n_state {
            h[s] = 0.0;
        }
        if has_h0 {
            #[unroll]
            for s in 0..n_state {
                h[s] = h0[b * h0.stride(0) + cc * h0.stride(1) + s * h0.stride(2)];
            }
        }
        for j in 0..k {
            let js = j * units + lane;
            let decay = sum_dt[js];
            #[unroll]
            for s in 0..n_state {
                h[s] = f32::exp(decay * av[s]) * h[s] + h_end[js * n_state + s];
            }
        }

        // Pass 2: the piece again, from its true start state, with the outputs.
        for t in t_begin..t_end {
            let uu = f32::cast_from(u[u0 + t * ut]);
            let dt = softplus(f32::cast_from(delta[d0 + t * dt_]) + bv);
            let dtu = dt * uu;
            let mut acc = 0.0f32;
            #[unroll]
            for s in 0..n_state {
                let hs =
                    f32::exp(dt * av[s]) * h[s] + dtu * f32::cast_from(bm[b0 + s * bs + t * bt]);
                h[s] = hs;
                acc += hs * f32::cast_from(cm[c0 + s * cs + t * ct]);
            }
            let zz = f32::cast_from(z[z0 + t * zt]);
            if active {
                y[y0 + t * yt] = F::cast_from((acc + dv * uu) * (zz * sigmoid(zz)));
            }
        }

        if active && k == n_chunks - 1 {
            #[unroll]
            for s in 0..n_state {
                h_last[b * h_last.stride(0) + c * h_last.stride(1) + s * h_last.stride(2)] = h[s];
            }
        }
    }

    /// `units` channels per cube, one unit each; chunks of `chunk` steps whose inputs are
    /// copied to shared memory first (as in the forward kernel). Outputs:
    /// `d_bc[b·blocks + cube, :, t]` = `[dB (S) | dC (S)]` summed over the cube's channels;
    /// `d_params[b, c, :]` = `[dA (S) | d initial_state (S) | dD | d delta_bias]`, summed over
    /// time (the sums over cubes and batch are tensor ops); `bounds` is scratch: the state at
    /// the start of every chunk.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_backward_kernel<F: Float>(
        u: &Tensor<F>,
        delta: &Tensor<F>,
        z: &Tensor<F>,
        bm: &Tensor<F>,
        cm: &Tensor<F>,
        a: &Tensor<f32>,
        dskip: &Tensor<f32>,
        bias: &Tensor<f32>,
        h0: &Tensor<f32>,
        dy: &Tensor<F>,
        d_last: &Tensor<f32>,
        du: &mut Tensor<F>,
        ddelta: &mut Tensor<F>,
        dz: &mut Tensor<F>,
        d_bc: &mut Tensor<f32>,
        d_params: &mut Tensor<f32>,
        bounds: &mut Tensor<f32>,
        #[comptime] n_state: usize,
        #[comptime] chunk: usize,
        #[comptime] units: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[comptime] has_d_last: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let lane = UNIT_POS_X as usize;
        let blk = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let c_base = blk * units;
        let c = c_base + lane;
        // Units past the last channel run the same loops (the cube synchronises at every
        // step) on the last channel's parameters and zero inputs, and contribute nothing.
        let active = c < channels;
        let mut cc = c;
        if !active {
            cc = channels - 1;
        }
        let two_s = comptime!(2 * n_state);
        let pitch = comptime!(chunk + 1);
        let mut red = SharedMemory::<f32>::new(comptime!(units * 2 * n_state));
        let mut su = SharedMemory::<f32>::new(comptime!(units * (chunk + 1)));
        let mut sd = SharedMemory::<f32>::new(comptime!(units * (chunk + 1)));
        let mut sz = SharedMemory::<f32>::new(comptime!(units * (chunk + 1)));
        let mut sg = SharedMemory::<f32>::new(comptime!(units * (chunk + 1)));
        let mut sb = SharedMemory::<f32>::new(comptime!(n_state * (chunk + 1)));
        let mut sc = SharedMemory::<f32>::new(comptime!(n_state * (chunk + 1)));
        let mut sbc = SharedMemory::<f32>::new(comptime!(2 * n_state * (chunk + 1)));
        let row = lane * pitch;

        let mut av = Array::<f32>::new(n_state);
        let mut h = Array::<f32>::new(n_state);
        #[unroll]
        for s in 0..n_state {
            av[s] = a[cc * a.stride(0) + s * a.stride(1)];
            h[s] = 0.0;
        }
        if has_h0 {
            #[unroll]
            for s in 0..n_state {
                h[s] = h0[b * h0.stride(0) + cc * h0.stride(1) + s * h0.stride(2)];
            }
        }
        let dv = dskip[cc * dskip.stride(0)];
        let bv = bias[cc * bias.stride(0)];
        // This unit's chunk-start states (its own slot, also for inactive units).
        let k0 = b * bounds.stride(0) + c * bounds.stride(1);
        let kk_ = bounds.stride(2);
        let ks = bounds.stride(3);
        let n_chunks = (len + chunk - 1) / chunk;

        // 1. Forward: the state at the start of every chunk.
        for k in 0..n_chunks {
            let t0 = k * chunk;
            let mut n = len - t0;
            if n > chunk {
                n = chunk;
            }
            #[unroll]
            for s in 0..n_state {
                bounds[k0 + k * kk_ + s * ks] = h[s];
            }
            load_tile::<F>(u, &mut su, b, c_base, t0, n, units, chunk, units);
            load_tile::<F>(delta, &mut sd, b, c_base, t0, n, units, chunk, units);
            load_tile::<F>(bm, &mut sb, b, 0, t0, n, n_state, chunk, units);
            sync_cube();
            for i in 0..n {
                let dt = softplus(sd[row + i] + bv);
                let dtu = dt * su[row + i];
                #[unroll]
                for s in 0..n_state {
                    h[s] = f32::exp(dt * av[s]) * h[s] + dtu * sb[s * pitch + i];
                }
            }
            sync_cube();
        }

        // 2. Reverse, chunk by chunk.
        let mut dh = Array::<f32>::new(n_state);
        let mut da = Array::<f32>::new(n_state);
        #[unroll]
        for s in 0..n_state {
            dh[s] = 0.0;
            da[s] = 0.0;
        }
        if has_d_last {
            #[unroll]
            for s in 0..n_state {
                dh[s] = d_last[b * d_last.stride(0) + cc * d_last.stride(1) + s * d_last.stride(2)];
            }
        }
        let mut d_d = 0.0f32;
        let mut d_bias = 0.0f32;
        // hs[(i + 1)·S + s] = state after step i of the chunk; hs[s] = the chunk's start state.
        let mut hs = Array::<f32>::new(comptime!((chunk + 1) * n_state));
        let bc_row = b * (CUBE_COUNT_X as usize) + blk;

        for kk in 0..n_chunks {
            let k = n_chunks - 1 - kk;
            let t0 = k * chunk;
            let mut n = len - t0;
            if n > chunk {
                n = chunk;
            }
            load_tile::<F>(u, &mut su, b, c_base, t0, n, units, chunk, units);
            load_tile::<F>(delta, &mut sd, b, c_base, t0, n, units, chunk, units);
            load_tile::<F>(z, &mut sz, b, c_base, t0, n, units, chunk, units);
            load_tile::<F>(dy, &mut sg, b, c_base, t0, n, units, chunk, units);
            load_tile::<F>(bm, &mut sb, b, 0, t0, n, n_state, chunk, units);
            load_tile::<F>(cm, &mut sc, b, 0, t0, n, n_state, chunk, units);
            sync_cube();
            #[unroll]
            for s in 0..n_state {
                hs[s] = bounds[k0 + k * kk_ + s * ks];
            }
            for i in 0..n {
                let dt = softplus(sd[row + i] + bv);
                let dtu = dt * su[row + i];
                #[unroll]
                for s in 0..n_state {
                    hs[(i + 1) * n_state + s] =
                        f32::exp(dt * av[s]) * hs[i * n_state + s] + dtu * sb[s * pitch + i];
                }
            }
            for ii in 0..n {
                let i = n - 1 - ii;
                let x = sd[row + i] + bv;
                let dt = softplus(x);
                let uu = su[row + i];
                let zz = sz[row + i];
                let sgm = sigmoid(zz);
                let g = sg[row + i];
                let mut out = dv * uu;
                #[unroll]
                for s in 0..n_state {
                    out += sc[s * pitch + i] * hs[(i + 1) * n_state + s];
                }
                // y = out · silu(z): e = dL/d out.
                let e = g * zz * sgm;
                let dzv = g * out * sgm * (1.0 + zz * (1.0 - sgm));
                d_d += e * uu;
                let mut duv = e * dv;
                let mut d_dt = 0.0f32;
                #[unroll]
                for s in 0..n_state {
                    let cv = sc[s * pitch + i];
                    let bvv = sb[s * pitch + i];
                    let hprev = hs[i * n_state + s];
                    let ea = f32::exp(dt * av[s]);
                    // The full adjoint of h_t: from y_t and from h_{t+1}.
                    let gh = dh[s] + e * cv;
                    d_dt += gh * (av[s] * ea * hprev + bvv * uu);
                    da[s] += gh * dt * ea * hprev;
                    duv += gh * dt * bvv;
                    let mut rb = 0.0f32;
                    let mut rc = 0.0f32;
                    if active {
                        rb = gh * dt * uu;
                        rc = e * hs[(i + 1) * n_state + s];
                    }
                    red[lane * two_s + s] = rb;
                    red[lane * two_s + n_state + s] = rc;
                    dh[s] = gh * ea;
                }
                let mut dx = d_dt;
                if x <= 20.0 {
                    dx = d_dt * sigmoid(x);
                }
                d_bias += dx;
                // The gradients replace the inputs in the tiles (each unit owns its row).
                su[row + i] = duv;
                sd[row + i] = dx;
                sz[row + i] = dzv;
                sync_cube();
                // dB and dC at step t, summed over the cube's channels.
                let mut o = lane;
                while o < two_s {
                    let mut acc = 0.0f32;
                    for j in 0..units {
                        acc += red[j * two_s + o];
                    }
                    sbc[o * pitch + i] = acc;
                    o += units;
                }
                sync_cube();
            }
            store_tile::<F>(du, &su, b, c_base, t0, n, units, chunk, units);
            store_tile::<F>(ddelta, &sd, b, c_base, t0, n, units, chunk, units);
            store_tile::<F>(dz, &sz, b, c_base, t0, n, units, chunk, units);
            store_tile::<f32>(d_bc, &sbc, bc_row, 0, t0, n, two_s, chunk, units);
            sync_cube();
        }

        if active {
            let p0 = b * d_params.stride(0) + c * d_params.stride(1);
            let ps = d_params.stride(2);
            #[unroll]
            for s in 0..n_state {
                d_params[p0 + s * ps] = da[s];
                d_params[p0 + (n_state + s) * ps] = dh[s];
            }
            d_params[p0 + two_s * ps] = d_d;
            d_params[p0 + (two_s + 1) * ps] = d_bias;
        }
    }

    /// The untiled variant of [`scan_forward_kernel`]: one unit per channel, 64 per cube,
    /// reading its inputs straight from global memory step by step.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_forward_direct_kernel<F: Float>(
        u: &Tensor<F>,
        delta: &Tensor<F>,
        z: &Tensor<F>,
        bm: &Tensor<F>,
        cm: &Tensor<F>,
        a: &Tensor<f32>,
        dskip: &Tensor<f32>,
        bias: &Tensor<f32>,
        h0: &Tensor<f32>,
        y: &mut Tensor<F>,
        h_last: &mut Tensor<f32>,
        #[comptime] n_state: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let c = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let b = CUBE_POS_Y as usize;
        if c >= channels {
            terminate!();
        }

        let mut h = Array::<f32>::new(n_state);
        let mut av = Array::<f32>::new(n_state);
        #[unroll]
        for s in 0..n_state {
            av[s] = a[c * a.stride(0) + s * a.stride(1)];
            h[s] = 0.0;
        }
        if has_h0 {
            #[unroll]
            for s in 0..n_state {
                h[s] = h0[b * h0.stride(0) + c * h0.stride(1) + s * h0.stride(2)];
            }
        }
        let dv = dskip[c * dskip.stride(0)];
        let bv = bias[c * bias.stride(0)];

        let u0 = b * u.stride(0) + c * u.stride(1);
        let ut = u.stride(2);
        let d0 = b * delta.stride(0) + c * delta.stride(1);
        let dt_ = delta.stride(2);
        let z0 = b * z.stride(0) + c * z.stride(1);
        let zt = z.stride(2);
        let y0 = b * y.stride(0) + c * y.stride(1);
        let yt = y.stride(2);
        let b0 = b * bm.stride(0);
        let bs = bm.stride(1);
        let bt = bm.stride(2);
        let c0 = b * cm.stride(0);
        let cs = cm.stride(1);
        let ct = cm.stride(2);

        for t in 0..len {
            let uu = f32::cast_from(u[u0 + t * ut]);
            let dt = softplus(f32::cast_from(delta[d0 + t * dt_]) + bv);
            let dtu = dt * uu;
            let mut acc = 0.0f32;
            #[unroll]
            for s in 0..n_state {
                let hs =
                    f32::exp(dt * av[s]) * h[s] + dtu * f32::cast_from(bm[b0 + s * bs + t * bt]);
                h[s] = hs;
                acc += hs * f32::cast_from(cm[c0 + s * cs + t * ct]);
            }
            let zz = f32::cast_from(z[z0 + t * zt]);
            y[y0 + t * yt] = F::cast_from((acc + dv * uu) * (zz * sigmoid(zz)));
        }

        #[unroll]
        for s in 0..n_state {
            h_last[b * h_last.stride(0) + c * h_last.stride(1) + s * h_last.stride(2)] = h[s];
        }
    }

    /// The untiled variant of [`scan_backward_kernel`] (same outputs): every unit reads its
    /// inputs straight from global memory, step by step.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_backward_direct_kernel<F: Float>(
        u: &Tensor<F>,
        delta: &Tensor<F>,
        z: &Tensor<F>,
        bm: &Tensor<F>,
        cm: &Tensor<F>,
        a: &Tensor<f32>,
        dskip: &Tensor<f32>,
        bias: &Tensor<f32>,
        h0: &Tensor<f32>,
        dy: &Tensor<F>,
        d_last: &Tensor<f32>,
        du: &mut Tensor<F>,
        ddelta: &mut Tensor<F>,
        dz: &mut Tensor<F>,
        d_bc: &mut Tensor<f32>,
        d_params: &mut Tensor<f32>,
        bounds: &mut Tensor<f32>,
        #[comptime] n_state: usize,
        #[comptime] chunk: usize,
        #[comptime] units: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[comptime] has_d_last: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let lane = UNIT_POS_X as usize;
        let blk = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let c = blk * units + lane;
        // Units past the last channel run the same loops (the cube synchronises at every step)
        // on the last channel's data, and contribute nothing.
        let active = c < channels;
        let mut cc = c;
        if !active {
            cc = channels - 1;
        }
        let two_s = comptime!(2 * n_state);
        let mut red = SharedMemory::<f32>::new(comptime!(units * 2 * n_state));

        let mut av = Array::<f32>::new(n_state);
        let mut h = Array::<f32>::new(n_state);
        #[unroll]
        for s in 0..n_state {
            av[s] = a[cc * a.stride(0) + s * a.stride(1)];
            h[s] = 0.0;
        }
        if has_h0 {
            #[unroll]
            for s in 0..n_state {
                h[s] = h0[b * h0.stride(0) + cc * h0.stride(1) + s * h0.stride(2)];
            }
        }
        let dv = dskip[cc * dskip.stride(0)];
        let bv = bias[cc * bias.stride(0)];

        let u0 = b * u.stride(0) + cc * u.stride(1);
        let ut = u.stride(2);
        let d0 = b * delta.stride(0) + cc * delta.stride(1);
        let dt_ = delta.stride(2);
        let z0 = b * z.stride(0) + cc * z.stride(1);
        let zt = z.stride(2);
        let g0 = b * dy.stride(0) + cc * dy.stride(1);
        let gt = dy.stride(2);
        let b0 = b * bm.stride(0);
        let bs = bm.stride(1);
        let bt = bm.stride(2);
        let c0 = b * cm.stride(0);
        let cs = cm.stride(1);
        let ct = cm.stride(2);
        // The chunk-start states of this unit (its own slot, also for inactive units).
        let k0 = b * bounds.stride(0) + c * bounds.stride(1);
        let kk_ = bounds.stride(2);
        let ks = bounds.stride(3);

        // 1. Forward: the state at the start of every chunk.
        for t in 0..len {
            if t % chunk == 0 {
                let k = t / chunk;
                #[unroll]
                for s in 0..n_state {
                    bounds[k0 + k * kk_ + s * ks] = h[s];
                }
            }
            let uu = f32::cast_from(u[u0 + t * ut]);
            let dt = softplus(f32::cast_from(delta[d0 + t * dt_]) + bv);
            let dtu = dt * uu;
            #[unroll]
            for s in 0..n_state {
                h[s] = f32::exp(dt * av[s]) * h[s] + dtu * f32::cast_from(bm[b0 + s * bs + t * bt]);
            }
        }

        // 2. Reverse, chunk by chunk.
        let mut dh = Array::<f32>::new(n_state);
        let mut da = Array::<f32>::new(n_state);
        #[unroll]
        for s in 0..n_state {
            dh[s] = 0.0;
            da[s] = 0.0;
        }
        if has_d_last {
            #[unroll]
            for s in 0..n_state {
                dh[s] = d_last[b * d_last.stride(0) + cc * d_last.stride(1) + s * d_last.stride(2)];
            }
        }
        let mut d_d = 0.0f32;
        let mut d_bias = 0.0f32;
        // hs[(i + 1)·S + s] = state after step i of the chunk; hs[s] = the chunk's start state.
        let mut hs = Array::<f32>::new(comptime!((chunk + 1) * n_state));
        let mut xs = Array::<f32>::new(chunk);
        let mut us = Array::<f32>::new(chunk);

        let du0 = b * du.stride(0) + c * du.stride(1);
        let dut = du.stride(2);
        let dd0 = b * ddelta.stride(0) + c * ddelta.stride(1);
        let ddt = ddelta.stride(2);
        let dz0 = b * dz.stride(0) + c * dz.stride(1);
        let dzt = dz.stride(2);
        let r0 = (b * (CUBE_COUNT_X as usize) + blk) * d_bc.stride(0);
        let ro = d_bc.stride(1);
        let rt = d_bc.stride(2);

        let n_chunks = (len + chunk - 1) / chunk;
        for kk in 0..n_chunks {
            let k = n_chunks - 1 - kk;
            let t0 = k * chunk;
            let mut clen = len - t0;
            if clen > chunk {
                clen = chunk;
            }
            #[unroll]
            for s in 0..n_state {
                hs[s] = bounds[k0 + k * kk_ + s * ks];
            }
            for i in 0..clen {
                let t = t0 + i;
                let uu = f32::cast_from(u[u0 + t * ut]);
                let x = f32::cast_from(delta[d0 + t * dt_]) + bv;
                let dt = softplus(x);
                xs[i] = x;
                us[i] = uu;
                let dtu = dt * uu;
                #[unroll]
                for s in 0..n_state {
                    hs[(i + 1) * n_state + s] = f32::exp(dt * av[s]) * hs[i * n_state + s]
                        + dtu * f32::cast_from(bm[b0 + s * bs + t * bt]);
                }
            }
            for ii in 0..clen {
                let i = clen - 1 - ii;
                let t = t0 + i;
                let x = xs[i];
                let dt = softplus(x);
                let uu = us[i];
                let zz = f32::cast_from(z[z0 + t * zt]);
                let sz = sigmoid(zz);
                let g = f32::cast_from(dy[g0 + t * gt]);
                let mut out = dv * uu;
                #[unroll]
                for s in 0..n_state {
                    out += f32::cast_from(cm[c0 + s * cs + t * ct]) * hs[(i + 1) * n_state + s];
                }
                // y = out · silu(z): e = dL/d out.
                let e = g * zz * sz;
                let dzv = g * out * sz * (1.0 + zz * (1.0 - sz));
                d_d += e * uu;
                let mut duv = e * dv;
                let mut d_dt = 0.0f32;
                #[unroll]
                for s in 0..n_state {
                    let cv = f32::cast_from(cm[c0 + s * cs + t * ct]);
                    let bvv = f32::cast_from(bm[b0 + s * bs + t * bt]);
                    let hprev = hs[i * n_state + s];
                    let ea = f32::exp(dt * av[s]);
                    // The full adjoint of h_t: from y_t and from h_{t+1}.
                    let gh = dh[s] + e * cv;
                    d_dt += gh * (av[s] * ea * hprev + bvv * uu);
                    da[s] += gh * dt * ea * hprev;
                    duv += gh * dt * bvv;
                    let mut rb = 0.0f32;
                    let mut rc = 0.0f32;
                    if active {
                        rb = gh * dt * uu;
                        rc = e * hs[(i + 1) * n_state + s];
                    }
                    red[lane * two_s + s] = rb;
                    red[lane * two_s + n_state + s] = rc;
                    dh[s] = gh * ea;
                }
                let mut dx = d_dt;
                if x <= 20.0 {
                    dx = d_dt * sigmoid(x);
                }
                d_bias += dx;
                if active {
                    du[du0 + t * dut] = F::cast_from(duv);
                    ddelta[dd0 + t * ddt] = F::cast_from(dx);
                    dz[dz0 + t * dzt] = F::cast_from(dzv);
                }
                sync_cube();
                // dB and dC at step t, summed over the cube's channels.
                let mut o = lane;
                while o < two_s {
                    let mut acc = 0.0f32;
                    for j in 0..units {
                        acc += red[j * two_s + o];
                    }
                    d_bc[r0 + t * rt + o * ro] = acc;
                    o += units;
                }
                sync_cube();
            }
        }

        if active {
            let p0 = b * d_params.stride(0) + c * d_params.stride(1);
            let ps = d_params.stride(2);
            #[unroll]
            for s in 0..n_state {
                d_params[p0 + s * ps] = da[s];
                d_params[p0 + (n_state + s) * ps] = dh[s];
            }
            d_params[p0 + two_s * ps] = d_d;
            d_params[p0 + (two_s + 1) * ps] = d_bias;
        }
    }
}

/// A `[b, d, T]` output buffer laid out like `like` (channels innermost when `like` is).
fn alloc_like<R: CubeRuntime>(like: &CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    let [b, d, t] = like.shape().dims::<3>();
    let strides = like.meta.strides();
    let channels_inner = strides[1] < strides[2] && d > 1;
    let shape = if channels_inner { [b, t, d] } else { [b, d, t] };
    let out = empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new(shape),
        dtype,
    );
    if channels_inner {
        permute(out, &[0, 2, 1])
    } else {
        out
    }
}

/// `t` (`[b, ·, T]`) with time innermost: `t` itself when its time stride is 1, else a
/// contiguous copy.
///
/// # Why
/// The time-parallel kernels give each unit consecutive steps of one channel, so with time
/// innermost a plane's loads are one run of memory (and vectors of steps, see
/// [`parallel::vector_width`]). The model passes transposed views (`[b, T, d]` storage seen
/// as `[b, d, T]`, channels innermost: the layout the tiled kernels want), where the same
/// loads touch one sector per step. A copy reads and writes each element once; the kernels
/// read u, Δ, z, B, C and dy once per state or per sweep.
fn time_inner<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.meta.strides()[2] == 1 {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

fn alloc<R: CubeRuntime>(like: &CubeTensor<R>, shape: &[usize], dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape.to_vec()),
        dtype,
    )
}

fn f32_<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    cast(t, DType::F32)
}

/// Whether the kernels take these inputs (else the reference runs).
fn supported<B: burn::tensor::backend::Backend>(input: &ScanPrimitives<B>) -> bool {
    let states = input.a.shape().dims::<2>()[1];
    let [batch, channels, len] = input.u.shape().dims::<3>();
    (1..=MAX_STATE).contains(&states)
        && batch > 0
        && channels > 0
        && len > 0
        && matches!(input.u.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// The forward kernel on CubeCL tensors: `(y, last_state)` in u's dtype.
fn forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    input: ScanPrimitives<CubeBackend<R, F, I, BT>>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let dtype = input.u.dtype();
    let [batch, channels, _] = input.u.shape().dims::<3>();
    let states = input.a.shape().dims::<2>()[1];
    let big = |t: CubeTensor<R>| cast(t, dtype);
    let (u, delta, z) = (input.u, big(input.delta), big(input.z));
    let (bm, cm) = (big(input.b), big(input.c));
    let a = f32_(input.a);
    let (dskip, bias) = (f32_(input.d), f32_(input.delta_bias));
    let has_h0 = input.initial_state.is_some();
    let h0 = input.initial_state.map(f32_).unwrap_or_else(|| a.clone());

    let h_last = alloc(&u, &[batch, channels, states], DType::F32);
    let kernel = resolve(&u, states);
    if matches!(kernel, ScanKernel::Channel | ScanKernel::Parallel) {
        // The channel kernels read the inputs as they are stored, the time-parallel ones
        // want time innermost.
        let channel = kernel == ScanKernel::Channel;
        let layout = |t| if channel { t } else { time_inner(t) };
        let z = layout(z);
        let y = alloc_like(&z, dtype);
        let launch = parallel::Launch {
            u: layout(u),
            delta: layout(delta),
            z,
            bm: layout(bm),
            cm: layout(cm),
            a,
            dskip,
            bias,
            h0,
            has_h0,
        };
        if channel {
            channel::forward(launch, &y, &h_last);
        } else {
            parallel::forward(launch, &y, &h_last);
        }
        return (y, cast(h_last, dtype));
    }
    let y = alloc_like(&z, dtype);
    let client = u.client.clone();
    if kernel == ScanKernel::Direct {
        let count = CubeCount::Static(channels.div_ceil(FWD_DIRECT_UNITS) as u32, batch as u32, 1);
        // SAFETY: as for the tiled kernel below.
        unsafe {
            scan_forward_direct_kernel::launch_unchecked::<R>(
                &client,
                count,
                CubeDim::new_1d(FWD_DIRECT_UNITS as u32),
                u.into_tensor_arg(),
                delta.into_tensor_arg(),
                z.into_tensor_arg(),
                bm.into_tensor_arg(),
                cm.into_tensor_arg(),
                a.into_tensor_arg(),
                dskip.into_tensor_arg(),
                bias.into_tensor_arg(),
                h0.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                h_last.clone().into_tensor_arg(),
                states,
                SOURCE,
                has_h0,
                dtype.into(),
            );
        }
        return (y, cast(h_last, dtype));
    }
    let len = u.shape().dims::<3>()[2];
    let pieces = forward_pieces(batch * channels, len, states);
    if pieces > 1 {
        let count = CubeCount::Static(channels.div_ceil(FWD_UNITS) as u32, batch as u32, 1);
        // SAFETY: as for the tiled kernel below; the pieces of a channel stay within its
        // sequence (start and end are clamped to the length).
        unsafe {
            scan_forward_split_kernel::launch_unchecked::<R>(
                &client,
                count,
                CubeDim::new_2d(FWD_UNITS as u32, pieces as u32),
                u.into_tensor_arg(),
                delta.into_tensor_arg(),
                z.into_tensor_arg(),
                bm.into_tensor_arg(),
                cm.into_tensor_arg(),
                a.into_tensor_arg(),
                dskip.into_tensor_arg(),
                bias.into_tensor_arg(),
                h0.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                h_last.clone().into_tensor_arg(),
                states,
                FWD_UNITS,
                pieces,
                SOURCE,
                has_h0,
                dtype.into(),
            );
        }
        return (y, cast(h_last, dtype));
    }
    let tile = forward_tile(&client, states);
    let count = CubeCount::Static(channels.div_ceil(FWD_UNITS) as u32, batch as u32, 1);
    let dim = CubeDim::new_1d(FWD_UNITS as u32);
    // SAFETY: every index is in bounds (see the kernels: channels are guarded or
    // clamped, buffers are allocated with the sizes indexed), so the unchecked launch
    // only drops the bounds checks.
    unsafe {
        scan_forward_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            u.into_tensor_arg(),
            delta.into_tensor_arg(),
            z.into_tensor_arg(),
            bm.into_tensor_arg(),
            cm.into_tensor_arg(),
            a.into_tensor_arg(),
            dskip.into_tensor_arg(),
            bias.into_tensor_arg(),
            h0.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            h_last.clone().into_tensor_arg(),
            states,
            FWD_UNITS,
            tile,
            SOURCE,
            has_h0,
            dtype.into(),
        );
    }
    (y, cast(h_last, dtype))
}

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

fn tensor<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: CubeTensor<R>,
) -> Tensor<Cube<R, F, I, BT>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: Tensor<Cube<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    t.into_primitive().tensor()
}

/// The backward kernel on CubeCL tensors, then the cross-cube and cross-batch sums.
fn backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    input: ScanPrimitives<Cube<R, F, I, BT>>,
    dy: CubeTensor<R>,
    d_last_state: Option<CubeTensor<R>>,
) -> ScanGrads<Cube<R, F, I, BT>> {
    let dtype = input.u.dtype();
    let [batch, channels, len] = input.u.shape().dims::<3>();
    let states = input.a.shape().dims::<2>()[1];
    let kernel = resolve(&input.u, states);
    if matches!(kernel, ScanKernel::Channel | ScanKernel::Parallel) {
        return backward_launch(input, dy, d_last_state, kernel == ScanKernel::Channel);
    }
    let direct = kernel == ScanKernel::Direct;
    let chunk = if direct {
        Some((256 / states).clamp(4, 32))
    } else {
        backward_chunk(&input.u.client, states)
    };
    let Some(chunk) = chunk else {
        return selective_scan_reference_backward(input, dy, d_last_state);
    };
    let (dtypes, h0_dtype) = input_dtypes(&input);
    let big = |t: CubeTensor<R>| cast(t, dtype);
    let (u, delta, z) = (input.u, big(input.delta), big(input.z));
    let (bm, cm) = (big(input.b), big(input.c));
    let a = f32_(input.a);
    let (dskip, bias) = (f32_(input.d), f32_(input.delta_bias));
    let has_h0 = input.initial_state.is_some();
    let h0 = input.initial_state.map(f32_).unwrap_or_else(|| a.clone());
    let dy = big(dy);
    let has_d_last = d_last_state.is_some();
    let d_last = d_last_state.map(f32_).unwrap_or_else(|| a.clone());

    let n_chunks = len.div_ceil(chunk);
    let blocks = channels.div_ceil(BWD_UNITS);
    let du = alloc_like(&z, dtype);
    let ddelta = alloc_like(&z, dtype);
    let dz = alloc_like(&z, dtype);
    let d_bc = alloc(&u, &[batch * blocks, 2 * states, len], DType::F32);
    let d_params = alloc(&u, &[batch, channels, 2 * states + 2], DType::F32);
    let bounds = alloc(
        &u,
        &[batch, blocks * BWD_UNITS, n_chunks, states],
        DType::F32,
    );
    let client = u.client.clone();
    // SAFETY: every index is in bounds (see the kernels: channels are guarded or
    // clamped, buffers are allocated with the sizes indexed), so the unchecked launch
    // only drops the bounds checks.
    // Both kernels take the same arguments.
    macro_rules! launch {
        ($kernel:ident) => {
            $kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(blocks as u32, batch as u32, 1),
                CubeDim::new_1d(BWD_UNITS as u32),
                u.into_tensor_arg(),
                delta.into_tensor_arg(),
                z.into_tensor_arg(),
                bm.into_tensor_arg(),
                cm.into_tensor_arg(),
                a.into_tensor_arg(),
                dskip.into_tensor_arg(),
                bias.into_tensor_arg(),
                h0.into_tensor_arg(),
                dy.into_tensor_arg(),
                d_last.into_tensor_arg(),
                du.clone().into_tensor_arg(),
                ddelta.clone().into_tensor_arg(),
                dz.clone().into_tensor_arg(),
                d_bc.clone().into_tensor_arg(),
                d_params.clone().into_tensor_arg(),
                bounds.into_tensor_arg(),
                states,
                chunk,
                BWD_UNITS,
                SOURCE,
                has_h0,
                has_d_last,
                dtype.into(),
            )
        };
    }
    unsafe {
        if direct {
            launch!(scan_backward_direct_kernel);
        } else {
            launch!(scan_backward_kernel);
        }
    }

    finish_backward(
        KernelGrads {
            du,
            ddelta,
            dz,
            d_bc,
            blocks,
            d_params,
        },
        dtypes,
        h0_dtype,
    )
}

/// The dtypes the gradients go back to: delta, A, B, C, D, z, delta_bias, and the initial
/// state's when there is one (what [`finish_backward`] casts to).
fn input_dtypes<B: burn::tensor::backend::Backend>(
    input: &ScanPrimitives<B>,
) -> ([DType; 7], Option<DType>) {
    let dtypes = [
        input.delta.dtype(),
        input.a.dtype(),
        input.b.dtype(),
        input.c.dtype(),
        input.d.dtype(),
        input.z.dtype(),
        input.delta_bias.dtype(),
    ];
    (dtypes, input.initial_state.as_ref().map(|h| h.dtype()))
}

/// What a backward kernel leaves: the per-step gradients, dB | dC per cube
/// (`[batch · blocks, 2S, T]`) and the per-channel time sums (`[batch, d, 2S + 2]`).
struct KernelGrads<R: CubeRuntime> {
    du: CubeTensor<R>,
    ddelta: CubeTensor<R>,
    dz: CubeTensor<R>,
    d_bc: CubeTensor<R>,
    blocks: usize,
    d_params: CubeTensor<R>,
}

/// The sums over cubes and batch a backward kernel leaves to tensor ops, and the casts back
/// to the inputs' dtypes (`dtypes`: delta, A, B, C, D, z, delta_bias).
fn finish_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    k: KernelGrads<R>,
    dtypes: [DType; 7],
    h0_dtype: Option<DType>,
) -> ScanGrads<Cube<R, F, I, BT>> {
    let KernelGrads {
        du,
        ddelta,
        dz,
        d_bc,
        blocks,
        d_params,
    } = k;
    let [batch, channels, p] = d_params.shape().dims::<3>();
    let states = (p - 2) / 2;
    let len = d_bc.shape().dims::<3>()[2];
    let [d_delta_t, a_t, b_t, c_t, d_t, z_t, bias_t] = dtypes;
    // [batch·blocks, 2S, T] → Σ over cubes → [batch, 2S, T] = dB | dC. One block per batch
    // row (the plane backward adds over channels itself) is already the sum.
    let bc = tensor::<R, F, I, BT, 3>(d_bc);
    let bc = if blocks == 1 {
        bc
    } else {
        bc.reshape([batch, blocks, 2 * states, len])
            .sum_dim(1)
            .reshape([batch, 2 * states, len])
    };
    let db = bc.clone().slice(s![.., 0..states, ..]);
    let dc = bc.slice(s![.., states..2 * states, ..]);
    // [batch, d, 2S + 2] → Σ over batch, except the initial state's gradient.
    let params = tensor::<R, F, I, BT, 3>(d_params);
    let sums = params
        .clone()
        .sum_dim(0)
        .reshape([channels, 2 * states + 2]);
    let da = sums.clone().slice(s![.., 0..states]);
    let dd = sums.clone().slice(s![.., 2 * states]).reshape([channels]);
    let dbias = sums.slice(s![.., 2 * states + 1]).reshape([channels]);
    let dh0 = h0_dtype.map(|t| prim(params.slice(s![.., .., states..2 * states]).cast(t)));
    ScanPrimitives {
        u: du,
        delta: cast(ddelta, d_delta_t),
        a: prim(da.cast(a_t)),
        b: prim(db.cast(b_t)),
        c: prim(dc.cast(c_t)),
        d: prim(dd.cast(d_t)),
        z: cast(dz, z_t),
        delta_bias: prim(dbias.cast(bias_t)),
        initial_state: dh0,
    }
}

/// The kernels for a scan whose u is `u` with `states` states: [`scan_kernel`] resolved for
/// this call (the channel kernels only where they take the state size).
fn resolve<R: CubeRuntime>(u: &CubeTensor<R>, states: usize) -> ScanKernel {
    let [batch, channels, _] = u.shape().dims::<3>();
    let planes = parallel::use_planes(&u.client, parallel::PLANE);
    let kernel = scan_kernel().resolve_for(batch * channels, planes, channel::channels_inner(u));
    match kernel {
        ScanKernel::Channel if !channel::supports(states) => {
            ScanKernel::Auto.resolve(batch * channels, planes)
        }
        k => k,
    }
}

/// The time-parallel backward ([`parallel`]) on time-innermost copies of the inputs, or with
/// `channel` the channel-sequential one ([`channel`]) on the inputs as they are stored; then
/// the same sums as the other kernels.
fn backward_launch<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    input: ScanPrimitives<Cube<R, F, I, BT>>,
    dy: CubeTensor<R>,
    d_last_state: Option<CubeTensor<R>>,
    channel: bool,
) -> ScanGrads<Cube<R, F, I, BT>> {
    let dtype = input.u.dtype();
    let (dtypes, h0_dtype) = input_dtypes(&input);
    let big = |t: CubeTensor<R>| cast(t, dtype);
    let layout = |t| if channel { t } else { time_inner(t) };
    let a = f32_(input.a);
    let has_h0 = input.initial_state.is_some();
    let h0 = input.initial_state.map(f32_).unwrap_or_else(|| a.clone());
    let z = layout(big(input.z));
    let like = z.clone();
    let launch = parallel::Launch {
        u: layout(input.u),
        delta: layout(big(input.delta)),
        z,
        bm: layout(big(input.b)),
        cm: layout(big(input.c)),
        a,
        dskip: f32_(input.d),
        bias: f32_(input.delta_bias),
        h0,
        has_h0,
    };
    let dy = layout(big(dy));
    let d_last = d_last_state.map(f32_);
    let alloc_grad = |dt| alloc_like(&like, dt);
    let alloc_buf = |shape: &[usize], dt| alloc(&like, shape, dt);
    let out = if channel {
        channel::backward(launch, dy, d_last, alloc_grad, alloc_buf)
    } else {
        parallel::backward(launch, dy, d_last, alloc_grad, alloc_buf)
    };
    finish_backward(
        KernelGrads {
            du: out.du,
            ddelta: out.ddelta,
            dz: out.dz,
            d_bc: out.d_bc,
            blocks: out.groups,
            d_params: out.d_params,
        },
        dtypes,
        h0_dtype,
    )
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ScanBackend
    for CubeBackend<R, F, I, BT>
{
    fn selective_scan(input: ScanPrimitives<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if supported(&input) {
            forward(input)
        } else {
            selective_scan_reference_primitives(input)
        }
    }

    fn selective_scan_backward(
        input: ScanPrimitives<Self>,
        dy: FloatTensor<Self>,
        d_last_state: Option<FloatTensor<Self>>,
    ) -> ScanGrads<Self> {
        if supported(&input) {
            backward(input, dy, d_last_state)
        } else {
            selective_scan_reference_backward(input, dy, d_last_state)
        }
    }
}
