//! The time-parallel selective-scan kernels ([`super::kernel::ScanKernel::Parallel`]): the
//! threads of a cube split *time* among them, as `mamba_ssm`'s CUDA kernels do, instead of
//! each unit walking a whole sequence alone.
//!
//! # Why
//! One unit per (batch, channel) gives Hymba-125M at micro-batch 2 only 2,048 sequential
//! units — 64 warps on a GPU that holds 8,448 — so every step's latency is exposed. The
//! recurrence `h_t = a_t·h_{t−1} + b_t` is linear, hence associative under
//! `(a₂, b₂) ∘ (a₁, b₁) = (a₂a₁, a₂b₁ + b₂)`: a cube of `threads` units scans a chunk of
//! `threads · items` steps in parallel.
//!
//! # Forward (`scan_forward_parallel_kernel`), one cube per (channel, batch)
//! For each chunk: every unit loads its `items` consecutive steps, folds them into one
//! `(a, b)` pair per state (a thread-local sequential scan), the cube scans those pairs
//! across units (Kogge–Stone in shared memory, all states at once: `2·log₂(threads)`
//! barriers per chunk), and each unit re-walks its steps from its start state
//! (`prefix ∘ carry`) accumulating `y`. The carry into the next chunk is the chunk total.
//!
//! # Backward (`scan_backward_parallel_kernel`), one cube per (group of channels, batch)
//! With `e_t = ∂L/∂out_t` (out = y before the gate) the adjoint of the state obeys the
//! reverse linear recurrence `r_t = a_t·(e_t·C_t + r_{t+1})`, `∂L/∂h_t = e_t·C_t + r_{t+1}`,
//! `r_T = ∂L/∂h_last`; `r_0` is the initial state's gradient. So per chunk (last to first)
//! and channel: a forward cube scan recomputes the states from the chunk's start state
//! (stored by a first forward sweep, O(T/chunk · S) floats per channel — no O(T·S) state
//! storage), a reverse cube scan gives each unit its incoming `r`, and a walk over the
//! unit's steps produces du, d(delta), dz and the time sums (dA, dD, d(delta_bias)).
//! dB and dC are shared by all channels: each unit sums them over the cube's channels in
//! registers and writes one partial per cube; a tensor op sums the cubes. The group size
//! trades those partials' size against parallelism.
//!
//! Global memory written and read back inside a kernel (chunk-start states, the adjoint
//! carry, the per-channel sums) is only ever read by the unit that wrote it, so no
//! cross-unit memory fence is needed on any backend (Vulkan's barrier does not order
//! buffer memory); values are shared between units through shared memory (and plane
//! shuffles, below) only.
//!
//! # Plane paths
//! Where the device has plane (warp) operations with planes of 32 units and the cube is
//! whole planes ([`use_planes`]: CUDA), the scan across units uses shuffles: the forward
//! runs `scan_forward_plane_kernel` (one exponential per step and state, one barrier per
//! state, inputs read in vectors of steps where time is innermost: [`vector_width`]), and
//! the backward runs `super::plane_bwd` (one channel per cube, 8 steps per unit, dB and dC
//! added atomically) when the device adds f32 atomically, else this file's backward with
//! its three cube scans in `scan_units_plane`. Elsewhere (lavapipe has no plane operations;
//! cubes of fewer than 32 units) the shared-memory scans run; the tests check both on CUDA.

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::{CubeCount, CubeDim};

use self::cube::{
    scan_backward_parallel_kernel, scan_forward_parallel_kernel, scan_forward_plane_kernel,
};
use super::kernel::SOURCE;

/// Steps per unit per chunk in the forward kernel (registers: 3 per step).
pub const FWD_ITEMS: usize = 8;
/// Steps per unit per chunk in the backward kernel (registers: 2·S per step for the dB and
/// dC sums, so fewer than the forward).
pub const BWD_ITEMS: usize = 2;
/// Units per cube at most (4 warps, as `mamba_ssm`).
pub const MAX_THREADS: usize = 128;
/// Cubes the backward kernel aims for (`batch · groups`): more than a large GPU holds at
/// once at its register use, few enough to keep the per-cube dB/dC partials small.
pub const BWD_TARGET_CUBES: usize = 1024;

/// The plane (warp) width the plane paths are written for: CUDA's warp. They run only on
/// devices whose planes are exactly this wide, with cubes of whole planes.
pub const PLANE: usize = 32;

static THREADS: AtomicUsize = AtomicUsize::new(0);
static GROUP: AtomicUsize = AtomicUsize::new(0);

/// Overrides the units per cube (`0` = automatic) for every later call, process-wide. Tests
/// use small cubes so that short sequences still span several chunks.
pub fn set_parallel_threads(threads: usize) {
    THREADS.store(threads, Ordering::Relaxed);
}

/// Overrides the channels per backward cube (`0` = automatic), process-wide.
pub fn set_parallel_group(group: usize) {
    GROUP.store(group, Ordering::Relaxed);
}

/// Whether [`set_parallel_threads`] forces a cube size (then the cube kernels run, not
/// [`super::warp`]'s).
pub fn threads_forced() -> bool {
    THREADS.load(Ordering::Relaxed) != 0
}

/// Units per cube for a sequence of `len` steps at `items` steps per unit: a power of two,
/// at most [`MAX_THREADS`], no more than the sequence needs, and few enough that
/// `floats_per_unit` f32s of shared memory each fit in `max_shared` bytes.
pub fn threads_for(len: usize, items: usize, floats_per_unit: usize, max_shared: usize) -> usize {
    let mut threads = match THREADS.load(Ordering::Relaxed) {
        0 => len
            .div_ceil(items)
            .next_power_of_two()
            .clamp(1, MAX_THREADS),
        n => n,
    };
    while threads > 1 && threads * floats_per_unit * 4 > max_shared {
        threads /= 2;
    }
    threads
}

/// Units per cube for the plane kernels at `items` steps per unit: whole planes, at most
/// `max` (what [`threads_for`] allows), as many as pad a sequence of `len` steps least to
/// whole chunks; ties go to more planes (fewer chunks, each paying its cross-plane scan
/// once). With [`set_parallel_threads`] in force, or `max` under one plane, it is `max`.
///
/// # Why not a power of two
/// Hymba's sequences carry 128 meta tokens: at 2,176 steps, 128 units of 8 steps make 3
/// chunks of 1,024 with the last one 1/8 full, so 29 % of the work is padding; 96 units
/// make 3 chunks of 768 (6 % padding). The plane kernels need whole planes, not powers of
/// two.
pub fn plane_threads(len: usize, items: usize, max: usize) -> usize {
    if THREADS.load(Ordering::Relaxed) != 0 || max < PLANE {
        return max;
    }
    (1..=max / PLANE)
        .map(|planes| planes * PLANE)
        .min_by_key(|&t| (len.div_ceil(t * items) * t, std::cmp::Reverse(t)))
        .unwrap_or(max)
}

/// Steps per unit in the plane forward: [`FWD_ITEMS`], or `HYMBA_SCAN_ITEMS` (4, 8 or 16;
/// read once per process) for comparisons in `bench scan`. More steps per unit spread the
/// per-state cross-unit scan over more steps, at more registers per unit.
pub fn plane_forward_items() -> usize {
    static ITEMS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ITEMS.get_or_init(|| items_from_env("HYMBA_SCAN_ITEMS", FWD_ITEMS))
}

/// Steps per unit from the environment variable `var` when it holds 4, 8 or 16, else
/// `default` (the plane kernels' comparison knobs).
pub(super) fn items_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| [4, 8, 16].contains(n))
        .unwrap_or(default)
}

/// Channels per backward cube: enough cubes ([`BWD_TARGET_CUBES`]) when batch × channels
/// allows, one channel per cube otherwise.
pub fn group_for(batch: usize, channels: usize) -> usize {
    match GROUP.load(Ordering::Relaxed) {
        0 => (batch * channels / BWD_TARGET_CUBES).clamp(1, channels.max(1)),
        n => n.min(channels.max(1)),
    }
}

/// Whether a cube of `threads` units on `client`'s device scans across units with plane
/// (warp) shuffles instead of through shared memory: the device has plane operations with
/// planes of exactly [`PLANE`] units (CUDA; not lavapipe, which has none), the cube is whole
/// planes, and `HYMBA_SCAN_PLANES=0` does not forbid it (`bench scan` compares both paths).
///
/// # Why
/// The shared-memory Kogge–Stone scan kept an H100's L1/shared pipe 97.7 % busy in the
/// session-7 profile of the forward kernel: 7 rounds of 4 reads and 2 writes per state and
/// unit, each round behind a barrier. Shuffles move the same values between registers.
pub fn use_planes<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    threads: usize,
) -> bool {
    let props = client.properties();
    let hw = &props.hardware;
    props.features.plane.contains(cubecl::features::Plane::Ops)
        && hw.plane_size_min as usize == PLANE
        && hw.plane_size_max as usize == PLANE
        && threads >= PLANE
        && threads.is_multiple_of(PLANE)
        && planes_allowed()
}

/// Steps per vector access in the plane forward (`scan_forward_plane_kernel`): the largest
/// of `items` (at most 8), 4, 2 that divides `items` and that every tensor allows, else 1.
/// A tensor allows `w` when it lives on CUDA (cubecl's vectors of 8 are CUDA structs; WGSL
/// has none wider than 4), its time stride is 1, its length, batch and channel strides are
/// multiples of `w`, and its buffer offset is aligned to `w` elements — so that every access
/// is one aligned vector either wholly inside the sequence or wholly past it.
/// `HYMBA_SCAN_VECTOR=0` forces 1 (`bench scan` compares both).
pub fn vector_width<R: CubeRuntime>(tensors: &[&CubeTensor<R>], items: usize) -> usize {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let allowed =
        *ALLOWED.get_or_init(|| std::env::var("HYMBA_SCAN_VECTOR").map_or(true, |v| v != "0"));
    let Some(first) = tensors.first() else {
        return 1;
    };
    if !allowed || R::name(&first.client) != "cuda" {
        return 1;
    }
    let fits = |w: usize, t: &CubeTensor<R>| {
        let strides = t.meta.strides();
        let len = t.shape().dims::<3>()[2];
        let bytes = w * t.dtype.size();
        strides.len() == 3
            && strides[2] == 1
            && len.is_multiple_of(w)
            && strides[0].is_multiple_of(w)
            && strides[1].is_multiple_of(w)
            && (t.handle.offset_start.unwrap_or(0) as usize).is_multiple_of(bytes)
    };
    [items.min(8), 4, 2]
        .into_iter()
        .find(|&w| items.is_multiple_of(w) && tensors.iter().all(|t| fits(w, t)))
        .unwrap_or(1)
}

/// Whether `client`'s device adds f32 atomically (the plane backwards add dB and dC so).
pub(super) fn adds_f32_atomically<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
) -> bool {
    use cubecl::features::AtomicUsage;
    use cubecl::ir::{ElemType, FloatKind, StorageType, Type};
    client
        .properties()
        .atomic_type_usage(Type::new(StorageType::Atomic(ElemType::Float(
            FloatKind::F32,
        ))))
        .contains(AtomicUsage::Add)
}

/// `HYMBA_SCAN_PLANES=0` forbids the plane paths; read once per process (this sits on the
/// path of every scan launch).
fn planes_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var("HYMBA_SCAN_PLANES").map_or(true, |v| v != "0"))
}

/// Inputs of a launch, already in the kernels' dtypes (large tensors in the storage dtype,
/// A, D, bias and states in f32).
pub(super) struct Launch<R: CubeRuntime> {
    pub u: CubeTensor<R>,
    pub delta: CubeTensor<R>,
    pub z: CubeTensor<R>,
    pub bm: CubeTensor<R>,
    pub cm: CubeTensor<R>,
    pub a: CubeTensor<R>,
    pub dskip: CubeTensor<R>,
    pub bias: CubeTensor<R>,
    /// The initial state, or any f32 tensor (unused) when `has_h0` is false.
    pub h0: CubeTensor<R>,
    pub has_h0: bool,
}

/// Runs the forward kernel into `y` (`[b, d, T]`, u's dtype) and `h_last` (`[b, d, S]`, f32).
pub(super) fn forward<R: CubeRuntime>(x: Launch<R>, y: &CubeTensor<R>, h_last: &CubeTensor<R>) {
    let [batch, channels, len] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    if let Some(emulate) = super::warp::usable(&client, states) {
        return super::warp::forward(x, y, h_last, emulate);
    }
    let max_shared = client.properties().hardware.max_shared_memory_size;
    let threads = threads_for(
        len,
        FWD_ITEMS,
        4 * states,
        max_shared.saturating_sub(8 * states),
    );
    if use_planes(&client, threads) {
        let items = plane_forward_items();
        let threads = plane_threads(len, items, threads);
        let vec = vector_width(&[&x.u, &x.delta, &x.z, &x.bm, &x.cm, y], items);
        // SAFETY: as below; the cube is whole planes (`use_planes`), and with `vec > 1`
        // every vector access is whole and aligned (`vector_width`).
        unsafe {
            scan_forward_plane_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(channels as u32, batch as u32, 1),
                CubeDim::new_1d(threads as u32),
                vec,
                x.u.into_tensor_arg(),
                x.delta.into_tensor_arg(),
                x.z.into_tensor_arg(),
                x.bm.into_tensor_arg(),
                x.cm.into_tensor_arg(),
                x.a.into_tensor_arg(),
                x.dskip.into_tensor_arg(),
                x.bias.into_tensor_arg(),
                x.h0.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                h_last.clone().into_tensor_arg(),
                states,
                threads,
                items,
                SOURCE,
                x.has_h0,
                dtype.into(),
            );
        }
        return;
    }
    // SAFETY: every index is in bounds: steps past the sequence are masked, the cube grid
    // is exactly channels × batch, and outputs have the shapes indexed.
    unsafe {
        scan_forward_parallel_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(channels as u32, batch as u32, 1),
            CubeDim::new_1d(threads as u32),
            x.u.into_tensor_arg(),
            x.delta.into_tensor_arg(),
            x.z.into_tensor_arg(),
            x.bm.into_tensor_arg(),
            x.cm.into_tensor_arg(),
            x.a.into_tensor_arg(),
            x.dskip.into_tensor_arg(),
            x.bias.into_tensor_arg(),
            x.h0.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            h_last.clone().into_tensor_arg(),
            states,
            threads,
            FWD_ITEMS,
            SOURCE,
            x.has_h0,
            dtype.into(),
        );
    }
}

/// Outputs of the backward kernel; see [`backward`].
pub(super) struct BackwardOut<R: CubeRuntime> {
    pub du: CubeTensor<R>,
    pub ddelta: CubeTensor<R>,
    pub dz: CubeTensor<R>,
    /// `[batch · groups, 2S, T]`: dB | dC summed over each cube's channels.
    pub d_bc: CubeTensor<R>,
    /// Cubes per batch row of `d_bc`.
    pub groups: usize,
    /// `[batch, d, 2S + 2]`: dA | d initial_state | dD | d delta_bias per channel.
    pub d_params: CubeTensor<R>,
}

/// Runs the backward kernel. `alloc_like` allocates a `[b, d, T]` gradient in the layout the
/// caller wants; `alloc` a contiguous buffer of the given shape and dtype.
pub(super) fn backward<R: CubeRuntime>(
    x: Launch<R>,
    dy: CubeTensor<R>,
    d_last: Option<CubeTensor<R>>,
    alloc_like: impl Fn(DType) -> CubeTensor<R>,
    alloc: impl Fn(&[usize], DType) -> CubeTensor<R>,
) -> BackwardOut<R> {
    let [batch, channels, len] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    if let Some(emulate) = super::warp::usable(&client, states) {
        return super::warp::backward(x, dy, d_last, emulate, alloc_like, alloc);
    }
    let plane_threads = super::plane_bwd::threads(&client, len, states);
    if super::plane_bwd::usable(&client, plane_threads) {
        return super::plane_bwd::backward(x, dy, d_last, plane_threads, alloc_like, alloc);
    }
    let max_shared = client
        .properties()
        .hardware
        .max_shared_memory_size
        .saturating_sub(8 * states);
    let threads = threads_for(len, BWD_ITEMS, 5 * states + 2, max_shared);
    let n_chunks = len.div_ceil(threads * BWD_ITEMS);
    let group = group_for(batch, channels);
    let groups = channels.div_ceil(group);
    let has_d_last = d_last.is_some();
    let d_last = d_last.unwrap_or_else(|| x.a.clone());
    let out = BackwardOut {
        du: alloc_like(dtype),
        ddelta: alloc_like(dtype),
        dz: alloc_like(dtype),
        d_bc: alloc(&[batch * groups, 2 * states, len], DType::F32),
        groups,
        d_params: alloc(&[batch, channels, 2 * states + 2], DType::F32),
    };
    let bounds = alloc(&[batch, channels, n_chunks, states], DType::F32);
    let planes = use_planes(&client, threads);
    // SAFETY: as for the forward; channels past the last are skipped by every unit alike
    // (the group loop's bound is uniform over the cube), and `d_bc` has a row per cube.
    unsafe {
        scan_backward_parallel_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(groups as u32, batch as u32, 1),
            CubeDim::new_1d(threads as u32),
            x.u.into_tensor_arg(),
            x.delta.into_tensor_arg(),
            x.z.into_tensor_arg(),
            x.bm.into_tensor_arg(),
            x.cm.into_tensor_arg(),
            x.a.into_tensor_arg(),
            x.dskip.into_tensor_arg(),
            x.bias.into_tensor_arg(),
            x.h0.into_tensor_arg(),
            dy.into_tensor_arg(),
            d_last.into_tensor_arg(),
            out.du.clone().into_tensor_arg(),
            out.ddelta.clone().into_tensor_arg(),
            out.dz.clone().into_tensor_arg(),
            out.d_bc.clone().into_tensor_arg(),
            out.d_params.clone().into_tensor_arg(),
            bounds.into_tensor_arg(),
            states,
            threads,
            BWD_ITEMS,
            SOURCE,
            x.has_h0,
            has_d_last,
            planes,
            dtype.into(),
        );
    }
    out
}

// `div_ceil` is not a cube function.
#[allow(clippy::manual_div_ceil)]
pub(crate) mod cube {
    use cubecl::prelude::*;

    use super::PLANE;
    use crate::scan::kernel::cube::{sigmoid, softplus};

    /// Folds this unit's `items` steps from `t_first` into one `(a, b)` pair of state `s`
    /// (decay `exp(Δ·A)`, input `Δ·u·B`) and stores it in the unit's slot of `sa`, `sb`:
    /// the input of a forward [`scan_units`]. `b_row` is the offset of `B[b, s, 0]`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn fold_steps<F: Float>(
        bm: &Tensor<F>,
        b_row: usize,
        t_first: usize,
        len: usize,
        av: f32,
        dt: &Array<f32>,
        uu: &Array<f32>,
        sa: &mut SharedMemory<f32>,
        sb: &mut SharedMemory<f32>,
        slot: usize,
        #[comptime] items: usize,
    ) {
        let mut pa = 1.0f32;
        let mut pb = 0.0f32;
        #[unroll]
        for i in 0..items {
            let bvv = load::<F>(bm, b_row, t_first + i, bm.stride(2), len);
            let e = f32::exp(dt[i] * av);
            pa *= e;
            pb = e * pb + dt[i] * uu[i] * bvv;
        }
        sa[slot] = pa;
        sb[slot] = pb;
    }

    /// Every state's [`fold_steps`] for this unit (states unrolled, decays `av[s]` in
    /// registers), then the cube's forward [`scan_units`]: the backward kernel's two passes
    /// (chunk-start states, then each chunk's recomputed states) both start this way.
    /// Returns the offset of the scanned copy. Call after a barrier; ends on one.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn fold_and_scan<F: Float>(
        bm: &Tensor<F>,
        b0: usize,
        t_first: usize,
        len: usize,
        av: &Array<f32>,
        dt: &Array<f32>,
        uu: &Array<f32>,
        sa: &mut SharedMemory<f32>,
        sb: &mut SharedMemory<f32>,
        lane: usize,
        #[comptime] n_state: usize,
        #[comptime] threads: usize,
        #[comptime] items: usize,
        #[comptime] planes: bool,
    ) -> usize {
        #[unroll]
        for s in 0..n_state {
            let slot = s * threads + lane;
            fold_steps::<F>(
                bm,
                b0 + s * bm.stride(1),
                t_first,
                len,
                av[s],
                dt,
                uu,
                sa,
                sb,
                slot,
                items,
            );
        }
        sync_cube();
        scan_units(sa, sb, lane, n_state, threads, false, planes)
    }

    /// Loads a `[b, c, T]` value at step `t` as f32, zero past the sequence.
    #[cube]
    fn load<F: Float>(x: &Tensor<F>, base: usize, t: usize, stride: usize, len: usize) -> f32 {
        let mut v = 0.0f32;
        if t < len {
            v = f32::cast_from(x[base + t * stride]);
        }
        v
    }

    /// Inclusive scan of one pair `(a, b)` per unit over the units of a plane, under the
    /// composition of [`scan_units`]: forward (lane l composes lanes 0..=l) or, with
    /// `reverse`, backward (lanes l..). Kogge–Stone with shuffles, log₂([`PLANE`]) rounds;
    /// every unit of the plane must call it.
    #[cube]
    pub(crate) fn plane_scan_pair(a: f32, b: f32, #[comptime] reverse: bool) -> (f32, f32) {
        let pl = UNIT_POS_PLANE;
        let mut a = a;
        let mut b = b;
        let mut d = 1u32;
        #[unroll]
        for _round in 0..comptime!(PLANE.trailing_zeros()) {
            let (an, bn, has) = if reverse {
                (
                    plane_shuffle_down(a, d),
                    plane_shuffle_down(b, d),
                    pl + d < comptime!(PLANE as u32),
                )
            } else {
                (plane_shuffle_up(a, d), plane_shuffle_up(b, d), pl >= d)
            };
            if has {
                b += a * bn;
                a *= an;
            }
            d *= 2;
        }
        (a, b)
    }

    /// [`scan_units`] with plane shuffles: each plane scans its units' pairs in registers
    /// ([`plane_scan_pair`]) and its edge unit leaves the plane's total in shared memory;
    /// after one barrier every unit composes the totals of the planes before it (after it,
    /// with `reverse`) into its own. Two barriers for all states, against log₂(threads).
    /// The cube must be whole planes.
    #[cube]
    fn scan_units_plane(
        sa: &mut SharedMemory<f32>,
        sb: &mut SharedMemory<f32>,
        lane: usize,
        #[comptime] n_state: usize,
        #[comptime] threads: usize,
        #[comptime] reverse: bool,
    ) -> usize {
        let warps = comptime!(threads / PLANE);
        let plane = comptime!(PLANE);
        let copy = comptime!(n_state * threads);
        let mut wa = SharedMemory::<f32>::new(comptime!(n_state * warps));
        let mut wb = SharedMemory::<f32>::new(comptime!(n_state * warps));
        let pl = UNIT_POS_PLANE;
        let w = lane / plane;
        let edge = comptime!(if reverse { 0u32 } else { PLANE as u32 - 1 });
        for s in 0..n_state {
            let i = s * threads + lane;
            let (a, b) = plane_scan_pair(sa[i], sb[i], reverse);
            sa[copy + i] = a;
            sb[copy + i] = b;
            if pl == edge {
                wa[s * warps + w] = a;
                wb[s * warps + w] = b;
            }
        }
        sync_cube();
        if comptime!(warps > 1) {
            for s in 0..n_state {
                let i = copy + s * threads + lane;
                // The planes applied before this one, composed (identity for the first).
                let mut pa = 1.0f32;
                let mut pb = 0.0f32;
                for vv in 0..warps {
                    let mut v = vv;
                    let mut before = vv < w;
                    if reverse {
                        v = warps - 1 - vv;
                        before = v > w;
                    }
                    if before {
                        let ta = wa[s * warps + v];
                        pb = ta * pb + wb[s * warps + v];
                        pa *= ta;
                    }
                }
                let a = sa[i];
                sb[i] = a * pb + sb[i];
                sa[i] = a * pa;
            }
            sync_cube();
        }
        copy.runtime()
    }

    /// Inclusive scan of the pairs `(sa[s·threads + j], sb[s·threads + j])` over units `j`,
    /// for every state `s`, under `(a₂, b₂) ∘ (a₁, b₁) = (a₂a₁, a₂b₁ + b₂)`: forward (unit j
    /// composes units 0..=j) or, with `reverse`, backward (units j..). Kogge–Stone,
    /// double-buffered: `sa`, `sb` hold two copies of `S · threads` pairs, the input in copy
    /// 0; each of the log₂(threads) rounds reads one copy and writes the other, so it needs
    /// one barrier and no registers per state (the states are a runtime loop). Returns the
    /// offset of the copy holding the result. Call after a barrier; ends on one.
    ///
    /// With `planes` (see [`super::use_planes`]) [`scan_units_plane`] does the same with warp
    /// shuffles.
    #[cube]
    pub fn scan_units(
        sa: &mut SharedMemory<f32>,
        sb: &mut SharedMemory<f32>,
        lane: usize,
        #[comptime] n_state: usize,
        #[comptime] threads: usize,
        #[comptime] reverse: bool,
        #[comptime] planes: bool,
    ) -> usize {
        if comptime!(planes) {
            scan_units_plane(sa, sb, lane, n_state, threads, reverse)
        } else {
            scan_units_shared(sa, sb, lane, n_state, threads, reverse)
        }
    }

    /// [`scan_units`] through shared memory: Kogge–Stone, one barrier per round.
    #[cube]
    fn scan_units_shared(
        sa: &mut SharedMemory<f32>,
        sb: &mut SharedMemory<f32>,
        lane: usize,
        #[comptime] n_state: usize,
        #[comptime] threads: usize,
        #[comptime] reverse: bool,
    ) -> usize {
        let copy = comptime!(n_state * threads);
        let mut src = 0usize;
        let mut d = 1usize;
        while d < threads {
            let dst = copy - src;
            for s in 0..n_state {
                let i = s * threads + lane;
                let mut a_own = sa[src + i];
                let mut b_own = sb[src + i];
                let mut has = lane >= d;
                if reverse {
                    has = lane + d < threads;
                }
                if has {
                    let mut j = src + i;
                    if reverse {
                        j += d;
                    } else {
                        j -= d;
                    }
                    b_own += a_own * sb[j];
                    a_own *= sa[j];
                }
                sa[dst + i] = a_own;
                sb[dst + i] = b_own;
            }
            sync_cube();
            src = dst;
            d *= 2;
        }
        src
    }

    /// One cube per (channel, batch), `threads` units, each scanning `items` consecutive
    /// steps of every chunk of `threads · items` steps; see the module docs. Per-channel
    /// values (A, the carried state) live in shared memory and the states are a runtime
    /// loop, so a unit holds only its `items` steps in registers: unrolling the states too
    /// took 255 registers per unit with spills and 12.5 % occupancy on an H100 (Nsight
    /// Compute).
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_forward_parallel_kernel<F: Float>(
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
        #[comptime] threads: usize,
        #[comptime] items: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let len = u.shape(2);
        let c = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let lane = UNIT_POS_X as usize;
        let mut sa = SharedMemory::<f32>::new(comptime!(2 * n_state * threads));
        let mut sb = SharedMemory::<f32>::new(comptime!(2 * n_state * threads));
        let mut sav = SharedMemory::<f32>::new(n_state);
        let mut carry = SharedMemory::<f32>::new(n_state);

        let mut s0 = lane;
        while s0 < n_state {
            sav[s0] = a[c * a.stride(0) + s0 * a.stride(1)];
            let mut h = 0.0f32;
            if has_h0 {
                h = h0[b * h0.stride(0) + c * h0.stride(1) + s0 * h0.stride(2)];
            }
            carry[s0] = h;
            s0 += threads;
        }
        let dv = dskip[c * dskip.stride(0)];
        let bv = bias[c * bias.stride(0)];
        let u0 = b * u.stride(0) + c * u.stride(1);
        let d0 = b * delta.stride(0) + c * delta.stride(1);
        let z0 = b * z.stride(0) + c * z.stride(1);
        let y0 = b * y.stride(0) + c * y.stride(1);
        let bs = bm.stride(1);
        let bt = bm.stride(2);
        let cs = cm.stride(1);
        let ct = cm.stride(2);
        let b0 = b * bm.stride(0);
        let c0 = b * cm.stride(0);

        let mut uu = Array::<f32>::new(items);
        let mut dt = Array::<f32>::new(items);
        let mut yv = Array::<f32>::new(items);
        let chunk = comptime!(threads * items);
        let n_chunks = (len + chunk - 1) / chunk;
        sync_cube();
        for k in 0..n_chunks {
            let t_first = k * chunk + lane * items;
            // Steps past the sequence get Δ = 0, u = 0: the identity (1, 0).
            #[unroll]
            for i in 0..items {
                let t = t_first + i;
                uu[i] = load::<F>(u, u0, t, u.stride(2), len);
                let mut d = 0.0f32;
                if t < len {
                    d = softplus(f32::cast_from(delta[d0 + t * delta.stride(2)]) + bv);
                }
                dt[i] = d;
                yv[i] = dv * uu[i];
            }
            // This unit's steps folded into one pair per state.
            for s in 0..n_state {
                let slot = s * threads + lane;
                fold_steps::<F>(
                    bm,
                    b0 + s * bs,
                    t_first,
                    len,
                    sav[s],
                    &dt,
                    &uu,
                    &mut sa,
                    &mut sb,
                    slot,
                    items,
                );
            }
            sync_cube();
            let res = scan_units(&mut sa, &mut sb, lane, n_state, threads, false, false);
            for s in 0..n_state {
                let av = sav[s];
                let mut h = carry[s];
                if lane > 0 {
                    let j = res + s * threads + lane - 1;
                    h = sa[j] * h + sb[j];
                }
                #[unroll]
                for i in 0..items {
                    let t = t_first + i;
                    let bvv = load::<F>(bm, b0 + s * bs, t, bt, len);
                    let cvv = load::<F>(cm, c0 + s * cs, t, ct, len);
                    h = f32::exp(dt[i] * av) * h + dt[i] * uu[i] * bvv;
                    yv[i] += h * cvv;
                }
            }
            #[unroll]
            for i in 0..items {
                let t = t_first + i;
                if t < len {
                    let zz = f32::cast_from(z[z0 + t * z.stride(2)]);
                    y[y0 + t * y.stride(2)] = F::cast_from(yv[i] * (zz * sigmoid(zz)));
                }
            }
            // Every unit has read the carry; then the chunk total moves it on, before the
            // next chunk overwrites the pairs.
            sync_cube();
            let mut s1 = lane;
            while s1 < n_state {
                let j = res + s1 * threads + threads - 1;
                carry[s1] = sa[j] * carry[s1] + sb[j];
                s1 += threads;
            }
            sync_cube();
        }

        let mut s2 = lane;
        while s2 < n_state {
            h_last[b * h_last.stride(0) + c * h_last.stride(1) + s2 * h_last.stride(2)] = carry[s2];
            s2 += threads;
        }
    }

    /// The forward of [`scan_forward_parallel_kernel`] with plane shuffles, as `mamba_ssm`'s
    /// forward: one cube per (channel, batch), `threads` units (whole planes), each holding
    /// `items` consecutive steps of every chunk. State by state, each unit computes its
    /// steps' decays `exp(Δ·A)` and inputs `Δ·u·B` once, into registers, folds them into one
    /// pair, the plane scans the pairs with shuffles ([`plane_scan_pair`]), the planes'
    /// totals meet in shared memory behind one barrier, and the unit re-walks its steps from
    /// its start state, adding `h·C` to y. One exponential per (step, state) and one barrier
    /// per state, where the shared-memory kernel computes the exponential twice and passes
    /// `2·log₂(threads)` barriers.
    ///
    /// The chunk's carry (`carry[parity · S + s]`) is double-buffered by chunk parity: unit 0
    /// writes the next chunk's while the others still read this one's.
    ///
    /// The large tensors are read and written as vectors of `N` steps ([`vector_width`]):
    /// with time innermost, a unit's `items` consecutive steps of u, Δ, z, y and of every
    /// state's B and C row are `items / N` vector accesses instead of `items` scalar ones.
    /// B and C are read by every channel's cube (from L1/L2), so their loads are most of the
    /// kernel's memory instructions. `N = 1` reads through any strides.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_forward_plane_kernel<F: Float, N: Size>(
        u: &Tensor<Vector<F, N>>,
        delta: &Tensor<Vector<F, N>>,
        z: &Tensor<Vector<F, N>>,
        bm: &Tensor<Vector<F, N>>,
        cm: &Tensor<Vector<F, N>>,
        a: &Tensor<f32>,
        dskip: &Tensor<f32>,
        bias: &Tensor<f32>,
        h0: &Tensor<f32>,
        y: &mut Tensor<Vector<F, N>>,
        h_last: &mut Tensor<f32>,
        #[comptime] n_state: usize,
        #[comptime] threads: usize,
        #[comptime] items: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let len = u.shape(2);
        let c = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let lane = UNIT_POS_X as usize;
        let pl = UNIT_POS_PLANE;
        let warps = comptime!(threads / PLANE);
        let plane = comptime!(PLANE);
        let w = lane / plane;
        let mut wa = SharedMemory::<f32>::new(comptime!(n_state * warps));
        let mut wb = SharedMemory::<f32>::new(comptime!(n_state * warps));
        let mut sav = SharedMemory::<f32>::new(n_state);
        let mut carry = SharedMemory::<f32>::new(comptime!(2 * n_state));

        let mut s0 = lane;
        while s0 < n_state {
            sav[s0] = a[c * a.stride(0) + s0 * a.stride(1)];
            let mut h = 0.0f32;
            if has_h0 {
                h = h0[b * h0.stride(0) + c * h0.stride(1) + s0 * h0.stride(2)];
            }
            carry[s0] = h;
            s0 += threads;
        }
        let dv = dskip[c * dskip.stride(0)];
        let bv = bias[c * bias.stride(0)];
        let u0 = b * u.stride(0) + c * u.stride(1);
        let d0 = b * delta.stride(0) + c * delta.stride(1);
        let z0 = b * z.stride(0) + c * z.stride(1);
        let y0 = b * y.stride(0) + c * y.stride(1);
        let bs = bm.stride(1);
        let cs = cm.stride(1);
        let b0 = b * bm.stride(0);
        let c0 = b * cm.stride(0);

        let mut uu = Array::<f32>::new(items);
        let mut dt = Array::<f32>::new(items);
        let mut yv = Array::<f32>::new(items);
        let mut ev = Array::<f32>::new(items);
        let mut bx = Array::<f32>::new(items);
        let mut bb = Array::<f32>::new(items);
        let mut cc = Array::<f32>::new(items);
        let chunk = comptime!(threads * items);
        let n_chunks = (len + chunk - 1) / chunk;
        sync_cube();
        for k in 0..n_chunks {
            let t_first = k * chunk + lane * items;
            let cur = (k % 2) * n_state;
            let next = comptime!(n_state) - cur;
            // Steps past the sequence get Δ = 0, u = 0: the identity (1, 0).
            load_steps::<F, N>(u, u0, t_first, len, &mut uu, items);
            // From here on `uu` holds Δ·u (shared by every state), and `sum_dt` makes the
            // unit's decay product one exponential: Π exp(Δ·A) = exp(A·ΣΔ).
            let sum_dt = load_dt::<F, N>(delta, d0, t_first, len, bv, &mut dt, items);
            #[unroll]
            for i in 0..items {
                yv[i] = dv * uu[i];
                uu[i] *= dt[i];
            }
            for s in 0..n_state {
                let av = sav[s];
                load_steps::<F, N>(bm, b0 + s * bs, t_first, len, &mut bb, items);
                let pa = f32::exp(av * sum_dt);
                let mut pb = 0.0f32;
                #[unroll]
                for i in 0..items {
                    let e = f32::exp(dt[i] * av);
                    let x = uu[i] * bb[i];
                    ev[i] = e;
                    bx[i] = x;
                    pb = e * pb + x;
                }
                let (ia, ib) = plane_scan_pair(pa, pb, false);
                // This unit's start within its plane: the previous lane's inclusive pair.
                let xa = plane_shuffle_up(ia, 1u32);
                let xb = plane_shuffle_up(ib, 1u32);
                if pl == comptime!(PLANE as u32 - 1) {
                    wa[s * warps + w] = ia;
                    wb[s * warps + w] = ib;
                }
                // C's loads go out before the barrier.
                load_steps::<F, N>(cm, c0 + s * cs, t_first, len, &mut cc, items);
                sync_cube();
                let mut h = carry[cur + s];
                #[unroll]
                for v in 0..warps {
                    if v < w {
                        h = wa[s * warps + v] * h + wb[s * warps + v];
                    }
                }
                if pl > 0 {
                    h = xa * h + xb;
                }
                #[unroll]
                for i in 0..items {
                    h = ev[i] * h + bx[i];
                    yv[i] += h * cc[i];
                }
                if lane == 0 {
                    let mut hc = carry[cur + s];
                    for v in 0..warps {
                        hc = wa[s * warps + v] * hc + wb[s * warps + v];
                    }
                    carry[next + s] = hc;
                }
            }
            // y = (D·u + Σ h·C) · silu(z).
            load_steps::<F, N>(z, z0, t_first, len, &mut bb, items);
            #[unroll]
            for i in 0..items {
                let zz = bb[i];
                yv[i] *= zz * sigmoid(zz);
            }
            store_steps::<F, N>(y, y0, t_first, len, &yv, items);
            // The plane totals of state s are rewritten in the next chunk (and, with one
            // state, the next state's are these): everyone must have read them.
            sync_cube();
        }

        let last = (n_chunks % 2) * n_state;
        let mut s2 = lane;
        while s2 < n_state {
            h_last[b * h_last.stride(0) + c * h_last.stride(1) + s2 * h_last.stride(2)] =
                carry[last + s2];
            s2 += threads;
        }
    }

    /// Loads `items` consecutive steps of a `[b, c, T]` row from `t_first` (`base` = the
    /// element offset of step 0) into `out` as f32, zero past the sequence, `N` steps per
    /// access. With `N > 1` the row's time stride is 1 and `N` divides the offsets and the
    /// length ([`vector_width`]), so a vector is wholly inside or wholly past the sequence.
    #[cube]
    pub(crate) fn load_steps<F: Float, N: Size>(
        x: &Tensor<Vector<F, N>>,
        base: usize,
        t_first: usize,
        len: usize,
        out: &mut Array<f32>,
        #[comptime] items: usize,
    ) {
        let vec = x.vector_size();
        let stride = x.stride(2);
        #[unroll]
        for j in 0..comptime!(items / vec) {
            let t = t_first + j * vec;
            if t < len {
                let v = x[(base + t * stride) / vec];
                #[unroll]
                for i in 0..vec {
                    out[j * vec + i] = f32::cast_from(v[i]);
                }
            } else {
                #[unroll]
                for i in 0..vec {
                    out[j * vec + i] = 0.0;
                }
            }
        }
    }

    /// Loads `items` steps of delta from `t_first` as [`load_steps`] and turns them into
    /// `Δ = softplus(delta + bias)` (0 past the sequence: the identity step); returns their
    /// sum (a unit's decay product over its steps is `exp(A·ΣΔ)`).
    #[cube]
    pub(crate) fn load_dt<F: Float, N: Size>(
        delta: &Tensor<Vector<F, N>>,
        base: usize,
        t_first: usize,
        len: usize,
        bias: f32,
        dt: &mut Array<f32>,
        #[comptime] items: usize,
    ) -> f32 {
        load_steps::<F, N>(delta, base, t_first, len, dt, items);
        let mut sum = 0.0f32;
        #[unroll]
        for i in 0..items {
            let mut d = 0.0f32;
            if t_first + i < len {
                d = softplus(dt[i] + bias);
            }
            dt[i] = d;
            sum += d;
        }
        sum
    }

    /// The backward's per-step seeds of a chunk, from its z (`zs`) and dy (`gs`): `g` =
    /// ∂L/∂out = dy · silu(z) (y = out · silu(z); 0 past the sequence, where dy loads 0),
    /// `out` = D·u (the gate's input, completed by the state walk), `dus` = g·D, `ddt` = 0.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seed_chunk(
        zs: &Array<f32>,
        gs: &Array<f32>,
        uu: &Array<f32>,
        dv: f32,
        g: &mut Array<f32>,
        out: &mut Array<f32>,
        dus: &mut Array<f32>,
        ddt: &mut Array<f32>,
        #[comptime] items: usize,
    ) {
        #[unroll]
        for i in 0..items {
            let zz = zs[i];
            g[i] = gs[i] * zz * sigmoid(zz);
            out[i] = dv * uu[i];
            dus[i] = g[i] * dv;
            ddt[i] = 0.0;
        }
    }

    /// The backward's last pass over a chunk, from its delta (`ds`), z (`zs`) and dy (`gs`):
    /// `ddt` (∂L/∂Δ) becomes ∂L/∂delta through the softplus (identity above 20, as the
    /// forward's rule) and `out` (the gate's input) becomes dz; returns the chunk's
    /// contributions `(Σ ∂L/∂delta, Σ g·u)` to d(delta_bias) and dD over steps inside the
    /// sequence.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_chunk(
        ds: &Array<f32>,
        zs: &Array<f32>,
        gs: &Array<f32>,
        g: &Array<f32>,
        uu: &Array<f32>,
        bias: f32,
        ddt: &mut Array<f32>,
        out: &mut Array<f32>,
        t_first: usize,
        len: usize,
        #[comptime] items: usize,
    ) -> (f32, f32) {
        let mut d_bias = 0.0f32;
        let mut d_d = 0.0f32;
        #[unroll]
        for i in 0..items {
            let x = ds[i] + bias;
            let mut dx = ddt[i];
            if x <= 20.0 {
                dx = ddt[i] * sigmoid(x);
            }
            let zz = zs[i];
            let sz = sigmoid(zz);
            let dzv = gs[i] * out[i] * sz * (1.0 + zz * (1.0 - sz));
            if t_first + i < len {
                d_bias += dx;
                d_d += g[i] * uu[i];
            }
            ddt[i] = dx;
            out[i] = dzv;
        }
        (d_bias, d_d)
    }

    /// Stores `items` consecutive f32 steps from `t_first` into a `[b, c, T]` row in its
    /// dtype, `N` steps per access, skipping steps past the sequence; the counterpart of
    /// [`load_steps`], under the same conditions.
    #[cube]
    pub(crate) fn store_steps<F: Float, N: Size>(
        x: &mut Tensor<Vector<F, N>>,
        base: usize,
        t_first: usize,
        len: usize,
        vals: &Array<f32>,
        #[comptime] items: usize,
    ) {
        let vec = x.vector_size();
        let stride = x.stride(2);
        #[unroll]
        for j in 0..comptime!(items / vec) {
            let t = t_first + j * vec;
            if t < len {
                let mut v = Vector::<F, N>::empty();
                #[unroll]
                for i in 0..vec {
                    v[i] = F::cast_from(vals[j * vec + i]);
                }
                x[(base + t * stride) / vec] = v;
            }
        }
    }

    /// One cube per (group of channels, batch); see the module docs. `d_params[b, c, :]` =
    /// `[dA (S) | adjoint carry → d initial_state (S) | dD | d delta_bias]`, slot `p` owned
    /// (written and read) by unit `p mod threads` only; `bounds[b, c, k, s]` (the state at
    /// the start of chunk k), owned by unit `s mod threads`.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_backward_parallel_kernel<F: Float>(
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
        #[comptime] threads: usize,
        #[comptime] items: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[comptime] has_d_last: bool,
        #[comptime] planes: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let g = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let lane = UNIT_POS_X as usize;
        let group = (channels + CUBE_COUNT_X as usize - 1) / CUBE_COUNT_X as usize;
        let chunk = comptime!(threads * items);
        let n_chunks = (len + chunk - 1) / chunk;
        let n_params = comptime!(2 * n_state + 2);
        let two_s = comptime!(2 * n_state);

        let mut sa = SharedMemory::<f32>::new(comptime!(2 * n_state * threads));
        let mut sb = SharedMemory::<f32>::new(comptime!(2 * n_state * threads));
        // The chunk's start state and incoming adjoint, shared by the cube.
        let mut sh = SharedMemory::<f32>::new(n_state);
        let mut sr = SharedMemory::<f32>::new(n_state);
        // Per-unit partial sums of dA, dD, d delta_bias, reduced over units per chunk.
        let mut red = SharedMemory::<f32>::new(comptime!((n_state + 2) * threads));

        let mut av = Array::<f32>::new(n_state);
        let mut uu = Array::<f32>::new(items);
        let mut dt = Array::<f32>::new(items);

        // 1. Per channel: the state at the start of every chunk, and the sums' initial values.
        for ci in 0..group {
            let c = g * group + ci;
            if c < channels {
                let bv = bias[c * bias.stride(0)];
                let u0 = b * u.stride(0) + c * u.stride(1);
                let d0 = b * delta.stride(0) + c * delta.stride(1);
                let b0 = b * bm.stride(0);
                let k0 = b * bounds.stride(0) + c * bounds.stride(1);
                let p0 = b * d_params.stride(0) + c * d_params.stride(1);
                #[unroll]
                for s in 0..n_state {
                    av[s] = a[c * a.stride(0) + s * a.stride(1)];
                }
                // Every unit keeps the same carry; unit s mod threads stores slot s.
                let mut carry = Array::<f32>::new(n_state);
                #[unroll]
                for s in 0..n_state {
                    carry[s] = 0.0;
                    if has_h0 {
                        carry[s] = h0[b * h0.stride(0) + c * h0.stride(1) + s * h0.stride(2)];
                    }
                }
                let mut p = lane;
                while p < n_params {
                    let mut v = 0.0f32;
                    if p >= n_state && p < two_s && has_d_last {
                        let s = p - n_state;
                        v = d_last
                            [b * d_last.stride(0) + c * d_last.stride(1) + s * d_last.stride(2)];
                    }
                    d_params[p0 + p * d_params.stride(2)] = v;
                    p += threads;
                }
                for k in 0..n_chunks {
                    let mut s = lane;
                    while s < n_state {
                        bounds[k0 + k * bounds.stride(2) + s * bounds.stride(3)] = carry[s];
                        s += threads;
                    }
                    let t_first = k * chunk + lane * items;
                    #[unroll]
                    for i in 0..items {
                        let t = t_first + i;
                        uu[i] = load::<F>(u, u0, t, u.stride(2), len);
                        let mut d = 0.0f32;
                        if t < len {
                            d = softplus(f32::cast_from(delta[d0 + t * delta.stride(2)]) + bv);
                        }
                        dt[i] = d;
                    }
                    let res = fold_and_scan::<F>(
                        bm, b0, t_first, len, &av, &dt, &uu, &mut sa, &mut sb, lane, n_state,
                        threads, items, planes,
                    );
                    #[unroll]
                    for s in 0..n_state {
                        let last = res + s * threads + threads - 1;
                        carry[s] = sa[last] * carry[s] + sb[last];
                    }
                    sync_cube();
                }
            }
        }

        // 2. Chunks last to first; in each, every channel of the group.
        let mut xs = Array::<f32>::new(items);
        let mut ev = Array::<f32>::new(items);
        let mut zv = Array::<f32>::new(items);
        let mut gv = Array::<f32>::new(items);
        let mut out = Array::<f32>::new(items);
        let mut dus = Array::<f32>::new(items);
        let mut ddt = Array::<f32>::new(items);
        let mut ea = Array::<f32>::new(items);
        let mut hv = Array::<f32>::new(comptime!(items + 1));
        let mut hst = Array::<f32>::new(n_state);
        let mut rin = Array::<f32>::new(n_state);
        let mut da = Array::<f32>::new(n_state);
        let mut db_acc = Array::<f32>::new(comptime!(n_state * items));
        let mut dc_acc = Array::<f32>::new(comptime!(n_state * items));
        let bc0 = (b * CUBE_COUNT_X as usize + g) * d_bc.stride(0);

        for kk in 0..n_chunks {
            let k = n_chunks - 1 - kk;
            let t_first = k * chunk + lane * items;
            #[unroll]
            for j in 0..comptime!(n_state * items) {
                db_acc[j] = 0.0;
                dc_acc[j] = 0.0;
            }
            for ci in 0..group {
                let c = g * group + ci;
                if c < channels {
                    let bv = bias[c * bias.stride(0)];
                    let dv = dskip[c * dskip.stride(0)];
                    let u0 = b * u.stride(0) + c * u.stride(1);
                    let d0 = b * delta.stride(0) + c * delta.stride(1);
                    let z0 = b * z.stride(0) + c * z.stride(1);
                    let g0 = b * dy.stride(0) + c * dy.stride(1);
                    let b0 = b * bm.stride(0);
                    let c0 = b * cm.stride(0);
                    let k0 = b * bounds.stride(0) + c * bounds.stride(1);
                    let p0 = b * d_params.stride(0) + c * d_params.stride(1);
                    let ps = d_params.stride(2);
                    #[unroll]
                    for s in 0..n_state {
                        av[s] = a[c * a.stride(0) + s * a.stride(1)];
                    }
                    // The owners publish the chunk's start state and incoming adjoint.
                    let mut s = lane;
                    while s < n_state {
                        sh[s] = bounds[k0 + k * bounds.stride(2) + s * bounds.stride(3)];
                        s += threads;
                    }
                    let mut p = lane;
                    while p < n_params {
                        if p >= n_state && p < two_s {
                            sr[p - n_state] = d_params[p0 + p * ps];
                        }
                        p += threads;
                    }
                    #[unroll]
                    for i in 0..items {
                        let t = t_first + i;
                        uu[i] = load::<F>(u, u0, t, u.stride(2), len);
                        let x = load::<F>(delta, d0, t, delta.stride(2), len) + bv;
                        let zz = load::<F>(z, z0, t, z.stride(2), len);
                        let gg = load::<F>(dy, g0, t, dy.stride(2), len);
                        let mut d = 0.0f32;
                        if t < len {
                            d = softplus(x);
                        }
                        xs[i] = x;
                        dt[i] = d;
                        zv[i] = zz;
                        gv[i] = gg;
                        // y = out · silu(z): e = ∂L/∂out (0 past the sequence).
                        ev[i] = gg * zz * sigmoid(zz);
                        out[i] = dv * uu[i];
                        dus[i] = ev[i] * dv;
                        ddt[i] = 0.0;
                    }
                    // Forward pairs → each unit's start state.
                    let res = fold_and_scan::<F>(
                        bm, b0, t_first, len, &av, &dt, &uu, &mut sa, &mut sb, lane, n_state,
                        threads, items, planes,
                    );
                    #[unroll]
                    for s in 0..n_state {
                        let mut h = sh[s];
                        if lane > 0 {
                            let j = res + s * threads + lane - 1;
                            h = sa[j] * sh[s] + sb[j];
                        }
                        hst[s] = h;
                    }
                    sync_cube();
                    // Reverse pairs → each unit's incoming adjoint r.
                    #[unroll]
                    for s in 0..n_state {
                        let mut pa = 1.0f32;
                        let mut pb = 0.0f32;
                        #[unroll]
                        for ii in 0..items {
                            let i = items - 1 - ii;
                            let cvv = load::<F>(
                                cm,
                                c0 + s * cm.stride(1),
                                t_first + i,
                                cm.stride(2),
                                len,
                            );
                            let e = f32::exp(dt[i] * av[s]);
                            pa *= e;
                            pb = e * (pb + ev[i] * cvv);
                        }
                        sa[s * threads + lane] = pa;
                        sb[s * threads + lane] = pb;
                    }
                    sync_cube();
                    let res = scan_units(&mut sa, &mut sb, lane, n_state, threads, true, planes);
                    #[unroll]
                    for s in 0..n_state {
                        let mut r = sr[s];
                        if lane + 1 < threads {
                            let j = res + s * threads + lane + 1;
                            r = sa[j] * sr[s] + sb[j];
                        }
                        rin[s] = r;
                    }
                    // The adjoint leaving the chunk at its first step: the next chunk's carry.
                    let mut p = lane;
                    while p < n_params {
                        if p >= n_state && p < two_s {
                            let s = p - n_state;
                            let j = res + s * threads;
                            d_params[p0 + p * ps] = sa[j] * sr[s] + sb[j];
                        }
                        p += threads;
                    }
                    // The walk: states forward, adjoint backward.
                    #[unroll]
                    for s in 0..n_state {
                        hv[0] = hst[s];
                        #[unroll]
                        for i in 0..items {
                            let t = t_first + i;
                            let bvv = load::<F>(bm, b0 + s * bm.stride(1), t, bm.stride(2), len);
                            let cvv = load::<F>(cm, c0 + s * cm.stride(1), t, cm.stride(2), len);
                            let e = f32::exp(dt[i] * av[s]);
                            ea[i] = e;
                            hv[i + 1] = e * hv[i] + dt[i] * uu[i] * bvv;
                            out[i] += cvv * hv[i + 1];
                        }
                        let mut r = rin[s];
                        let mut das = 0.0f32;
                        #[unroll]
                        for ii in 0..items {
                            let i = items - 1 - ii;
                            let t = t_first + i;
                            let bvv = load::<F>(bm, b0 + s * bm.stride(1), t, bm.stride(2), len);
                            let cvv = load::<F>(cm, c0 + s * cm.stride(1), t, cm.stride(2), len);
                            let gh = ev[i] * cvv + r;
                            ddt[i] += gh * (av[s] * ea[i] * hv[i] + bvv * uu[i]);
                            dus[i] += gh * dt[i] * bvv;
                            das += gh * dt[i] * ea[i] * hv[i];
                            let j = s * items + i;
                            db_acc[j] += gh * dt[i] * uu[i];
                            dc_acc[j] += ev[i] * hv[i + 1];
                            r = ea[i] * gh;
                        }
                        da[s] = das;
                    }
                    let mut d_d = 0.0f32;
                    let mut d_bias = 0.0f32;
                    #[unroll]
                    for i in 0..items {
                        let t = t_first + i;
                        if t < len {
                            let x = xs[i];
                            let mut dx = ddt[i];
                            if x <= 20.0 {
                                dx = ddt[i] * sigmoid(x);
                            }
                            d_bias += dx;
                            d_d += ev[i] * uu[i];
                            let zz = zv[i];
                            let sz = sigmoid(zz);
                            let dzv = gv[i] * out[i] * sz * (1.0 + zz * (1.0 - sz));
                            du[b * du.stride(0) + c * du.stride(1) + t * du.stride(2)] =
                                F::cast_from(dus[i]);
                            ddelta[b * ddelta.stride(0)
                                + c * ddelta.stride(1)
                                + t * ddelta.stride(2)] = F::cast_from(dx);
                            dz[b * dz.stride(0) + c * dz.stride(1) + t * dz.stride(2)] =
                                F::cast_from(dzv);
                        }
                    }
                    // Sum dA, dD, d delta_bias over the units into the channel's slots.
                    #[unroll]
                    for s in 0..n_state {
                        red[s * threads + lane] = da[s];
                    }
                    red[comptime!(n_state * threads) + lane] = d_d;
                    red[comptime!((n_state + 1) * threads) + lane] = d_bias;
                    sync_cube();
                    let mut p = lane;
                    while p < n_params {
                        // Rows of `red`: dA (0..S), then dD and d delta_bias (S, S + 1).
                        let mut row = p;
                        if p >= two_s {
                            row = p - n_state;
                        }
                        if p < n_state || p >= two_s {
                            let mut acc = 0.0f32;
                            for j in 0..threads {
                                acc += red[row * threads + j];
                            }
                            let old = d_params[p0 + p * ps];
                            d_params[p0 + p * ps] = old + acc;
                        }
                        p += threads;
                    }
                    // The next channel overwrites the shared arrays.
                    sync_cube();
                }
            }
            // dB and dC of this chunk, summed over the group's channels.
            #[unroll]
            for s in 0..n_state {
                #[unroll]
                for i in 0..items {
                    let t = t_first + i;
                    if t < len {
                        let j = s * items + i;
                        d_bc[bc0 + s * d_bc.stride(1) + t * d_bc.stride(2)] = db_acc[j];
                        d_bc[bc0 + (n_state + s) * d_bc.stride(1) + t * d_bc.stride(2)] = dc_acc[j];
                    }
                }
            }
        }
    }
}
