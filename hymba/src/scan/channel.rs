//! The channel-sequential selective-scan kernels ([`super::kernel::ScanKernel::Channel`]):
//! the units of a channel walk its whole sequence with its S states in registers, reading
//! the model's own layout — channels innermost (`[b, T, d]` storage seen as `[b, d, T]`) —
//! so that a plane's loads of one step are one run of memory and no time-innermost copy is
//! made.
//!
//! # Why
//! The recurrence `h_t = exp(Δ_t·A)·h_{t−1} + Δ_t·B_t·u_t` is one FMA deep per step, and its
//! exponentials (one per step and state: ~0.2 ms of an H100's MUFU throughput at batch 8 ×
//! 2048 × 3200 × 16) do not depend on the state. What limits a sequential unit is latency:
//! with one unit per channel an H200 held 1–2 warps per scheduler at the bench shapes and
//! every step took ~1 µs whatever the channel count (session 14's first build). So:
//!
//! - **lanes per channel**: on devices with planes of 32 a channel's states are split over
//!   [`lanes`] neighbouring units (4 at S = 16: four times the warps), whose parts of y (and
//!   of the backward's per-step sums) are added with shuffles;
//! - **per-step scalars once**: per tile of steps the cube loads u, Δ, z (and dy), B, C with
//!   coalesced loads and computes `softplus(Δ + bias)`, `silu(z)` and the gate's derivative
//!   once per channel and step into shared memory, instead of once per unit;
//! - **forward** (`scan_forward_channel_kernel`): tiles of [`FWD_TILE`] steps, the next
//!   tile's loads in flight into registers while this one is scanned, two shared buffers,
//!   one barrier per tile;
//! - **backward** (`scan_backward_channel_kernel`): a forward sweep stores the state at the
//!   start of every chunk of [`BWD_CHUNK`] steps (scratch in global memory, read back only by
//!   the unit that wrote it); then chunk by chunk, last to first, the cube stages the chunk,
//!   each unit recomputes its states over the chunk into registers and runs the adjoint
//!   `∂L/∂h_t = e_t·C_t + exp(Δ_{t+1}A)·∂L/∂h_{t+1}` back over it. dB and dC are sums over
//!   channels: a butterfly reduce-scatter over each plane's channels leaves one value per
//!   lane, and the cube's planes are added in shared memory per chunk; one partial per cube,
//!   summed by a tensor op as for the other backward kernels. Without planes (lavapipe) one
//!   unit per channel and the sums go through shared memory with two barriers per step —
//!   correct everywhere, fast where it matters.
//!
//! Global memory a unit writes and reads back (the chunk-start states) is only ever read by
//! that unit, so no cross-unit memory fence is needed (Vulkan's barrier does not order buffer
//! memory); units share values through shared memory and shuffles only.

use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::{CubeCount, CubeDim};

use self::cube::{scan_backward_channel_kernel, scan_forward_channel_kernel};
use super::kernel::SOURCE;
use super::parallel::{BackwardOut, Launch, PLANE, use_planes};

/// Channels per cube of both kernels (a cube is `CHANNELS · lanes` units).
pub const CHANNELS: usize = 32;
/// Steps per tile of the forward (the scan of a tile is unrolled).
pub const FWD_TILE: usize = 16;
/// Steps per tile and chunk without plane operations (one unit per channel): software
/// Vulkan drivers such as lavapipe compile the unrolled steps with LLVM, and 16 steps of 16
/// states took them minutes.
pub const SMALL_TILE: usize = 4;
/// Steps per chunk of the backward: the chunk's states live in registers
/// (`(BWD_CHUNK + 1) · S / lanes` per unit), its inputs in shared memory, and one state per
/// chunk in global scratch.
pub const BWD_CHUNK: usize = 16;
/// The largest state these kernels take (the plane reduction of dB | dC has one lane per
/// value); larger states run the other kernels.
pub const MAX_STATE: usize = 16;
/// Whether [`super::kernel::ScanKernel::Auto`] picks these kernels for the model's layout.
/// Not by default: on an H200 they beat the time-parallel kernels on the model's layout in
/// isolation (hymba-125m's scan part of `bench step` 67.3–68.9 ms against 81.3–81.5, bf16,
/// batch 8; a profile of three trainer steps: 179 ms of scan kernels against 156 ms plus
/// 134 ms of time-innermost copies), yet hymba-125m training steps measured slower with them
/// (`bench step` 607.6 and 606.5 ms against 518.9 and 552.2, alternating in one call; trainer
/// 22,146 and 22,183 text tokens/s against 22,563 and 24,768; in a later call `bench step
/// --step-only` medians 672.7 vs 660.6 ms over three alternating pairs), for a reason the
/// profile does not show (its other kernels varied by 5–20 % between runs).
/// `HYMBA_SCAN_KERNEL=channel` selects them.
pub const AUTO: bool = false;

/// Whether the channel kernels take a scan with `states` states.
pub fn supports(states: usize) -> bool {
    (1..=MAX_STATE).contains(&states)
}

/// Whether `t` (`[b, d, T]`) is stored with channels innermost (the model's layout).
pub fn channels_inner<R: CubeRuntime>(t: &CubeTensor<R>) -> bool {
    let strides = t.meta.strides();
    let [_, d, len] = t.shape().dims::<3>();
    d > 1 && (len == 1 || strides[1] < strides[2])
}

/// Units per (batch, channel) sequence. The forward takes enough to put [`FILL`] units in
/// flight — 4 for Hymba-1.5B at batch 8 (25,600 sequences), 8 for hymba-125m at batch 8
/// (8,192) — among those of 4 and 8 that divide S; the `backward` takes 8, since each unit
/// holds `(BWD_CHUNK + 1)·S / lanes` recomputed states in registers (at 4 lanes 127
/// registers, 25 % occupancy). Else the largest of 2 or 1 that divides S; 1 without plane
/// operations. `HYMBA_SCAN_LANES=1|2|4|8|16` overrides it for both where it divides S.
///
/// On an H200 (bf16, model layout, `bench/results/scan_channel_{lanes4,lanes8,}_s14_h200.json`,
/// forward / forward + backward): at 25,600 sequences 4 lanes took 1.52 / 9.40 ms, 8 lanes
/// 1.44 / 6.58, this rule 1.51 / 6.57; at 8,192 sequences 4 lanes 1.10 / 4.06, 8 lanes
/// 0.81 / 2.61, this rule (8) 0.69 / 2.64 — runs of one configuration differ by up to 15 %.
pub fn lanes(states: usize, planes: bool, rows: usize, backward: bool) -> usize {
    if !planes {
        return 1;
    }
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var("HYMBA_SCAN_LANES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|l: &usize| l.is_power_of_two() && *l <= 16)
    });
    match forced {
        Some(l) if states.is_multiple_of(l) => l,
        _ => {
            let fits = |l: usize| states.is_multiple_of(l);
            match (fits(4), fits(8)) {
                (true, true) if backward || rows * 4 < FILL => 8,
                (true, _) => 4,
                _ => [2, 1].into_iter().find(|&l| fits(l)).unwrap_or(1),
            }
        }
    }
}

/// Units in flight [`lanes`] aims for: ~100k, six warps per scheduler of an H100 or H200.
pub const FILL: usize = 96 * 1024;

/// Whether this client runs the plane paths of these kernels (whole planes of 32).
fn planes<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    use_planes(client, PLANE)
}

/// Runs the forward kernel into `y` (`[b, d, T]`, u's dtype) and `h_last` (`[b, d, S]`, f32).
pub(super) fn forward<R: CubeRuntime>(x: Launch<R>, y: &CubeTensor<R>, h_last: &CubeTensor<R>) {
    let [batch, channels, _] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    let planes = planes(&client);
    let lanes = lanes(states, planes, batch * channels, false);
    let units = CHANNELS * lanes;
    let tile = if planes { FWD_TILE } else { SMALL_TILE };
    let count = CubeCount::Static(channels.div_ceil(CHANNELS) as u32, batch as u32, 1);
    // SAFETY: every index is in bounds: channels past the last are clamped for reads and
    // guarded for writes, steps past the end are guarded, and the shared buffers hold
    // exactly the indices the kernel computes (see the kernel).
    unsafe {
        scan_forward_channel_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(units as u32),
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
            units,
            lanes,
            tile,
            SOURCE,
            x.has_h0,
            dtype.into(),
        );
    }
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
    let planes = planes(&client);
    let lanes = lanes(states, planes, batch * channels, true);
    let units = CHANNELS * lanes;
    let blocks = channels.div_ceil(CHANNELS);
    let chunk = if planes { BWD_CHUNK } else { SMALL_TILE };
    let n_chunks = len.div_ceil(chunk);
    let has_d_last = d_last.is_some();
    let d_last = d_last.unwrap_or_else(|| x.a.clone());
    let out = BackwardOut {
        du: alloc_like(dtype),
        ddelta: alloc_like(dtype),
        dz: alloc_like(dtype),
        d_bc: alloc(&[batch * blocks, 2 * states, len], DType::F32),
        groups: blocks,
        d_params: alloc(&[batch, channels, 2 * states + 2], DType::F32),
    };
    // Chunk-start states, channels innermost so that a plane's stores are one run.
    let bounds = alloc(&[batch, n_chunks, states, blocks * CHANNELS], DType::F32);
    // SAFETY: as for the forward; `bounds` has a slot for every channel slot of every cube,
    // active or not, and `d_bc` a row for every cube.
    unsafe {
        scan_backward_channel_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(blocks as u32, batch as u32, 1),
            CubeDim::new_1d(units as u32),
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
            chunk,
            units,
            lanes,
            planes,
            SOURCE,
            x.has_h0,
            has_d_last,
            dtype.into(),
        );
    }
    out
}

// `div_ceil` is not a cube function.
#[allow(clippy::manual_div_ceil)]
mod cube {
    use cubecl::prelude::*;

    use crate::scan::kernel::cube::{sigmoid, softplus};

    /// `v` summed over the `lanes` neighbouring lanes of a channel (all of them get it).
    #[cube]
    pub fn sum_lanes(v: f32, #[comptime] lanes: usize) -> f32 {
        let mut r = v;
        if comptime!(lanes >= 2) {
            r += plane_shuffle_xor(r, 1u32);
        }
        if comptime!(lanes >= 4) {
            r += plane_shuffle_xor(r, 2u32);
        }
        if comptime!(lanes >= 8) {
            r += plane_shuffle_xor(r, 4u32);
        }
        if comptime!(lanes >= 16) {
            r += plane_shuffle_xor(r, 8u32);
        }
        r
    }

    /// One round of the butterfly reduce-scatter over the channels of a plane: the lanes
    /// with bit `mask` set keep the upper half of `vals[..2·half]` and send the lower, their
    /// partners the converse, and each adds what it receives.
    #[cube]
    fn fold_half(vals: &mut Array<f32>, #[comptime] half: usize, #[comptime] mask: u32) {
        let upper = (UNIT_POS_PLANE & mask) != 0;
        #[unroll]
        for o in 0..half {
            let lo = vals[o];
            let hi = vals[o + half];
            let send = select(upper, lo, hi);
            let keep = select(upper, hi, lo);
            vals[o] = keep + plane_shuffle_xor(send, mask);
        }
    }

    /// Reduce-scatter of `vals[..32 / lanes]` over the `32 / lanes` channels of a plane
    /// (lane = channel · lanes + group): afterwards `vals[0]` of the lane of channel v is the
    /// plane's sum of value v.
    #[cube]
    fn reduce_scatter(vals: &mut Array<f32>, #[comptime] lanes: usize) {
        if comptime!(lanes <= 16) {
            fold_half(vals, comptime!(16 / lanes), 16u32);
        }
        if comptime!(lanes <= 8) {
            fold_half(vals, comptime!(8 / lanes), 8u32);
        }
        if comptime!(lanes <= 4) {
            fold_half(vals, comptime!(4 / lanes), 4u32);
        }
        if comptime!(lanes <= 2) {
            fold_half(vals, comptime!(2 / lanes), 2u32);
        }
        if comptime!(lanes <= 1) {
            fold_half(vals, 1usize, 1u32);
        }
    }

    /// The cube's share of one tile's per-channel inputs, loaded into registers: element
    /// `e = lane + p·units` of `[step][channel]` (channels `c0..c0 + chans`, steps from
    /// `t0`), zero past the sequence, the last channel's past the last channel.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_x<F: Float>(
        x: &Tensor<F>,
        b: usize,
        c0: usize,
        t0: usize,
        out: &mut Array<f32>,
        #[comptime] chans: usize,
        #[comptime] tile: usize,
        #[comptime] units: usize,
    ) {
        let channels = x.shape(1);
        let len = x.shape(2);
        let lane = UNIT_POS_X as usize;
        let per = comptime!((tile * chans + units - 1) / units);
        let mut c = c0 + lane % chans;
        if c >= channels {
            c = channels - 1;
        }
        let base = b * x.stride(0) + c * x.stride(1);
        #[unroll]
        for p in 0..per {
            let e = lane + p * units;
            let t = t0 + e / chans;
            let mut v = 0.0f32;
            if e < comptime!(tile * chans) && t < len {
                v = f32::cast_from(x[base + t * x.stride(2)]);
            }
            out[p] = v;
        }
    }

    /// This unit's share of B and C for `tile` steps from `t0` (element `e = lane + p·units`
    /// of `[step][B (S) | C (S)]`), zero past the sequence.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_bc<F: Float>(
        bm: &Tensor<F>,
        cm: &Tensor<F>,
        b: usize,
        t0: usize,
        out: &mut Array<f32>,
        #[comptime] n_state: usize,
        #[comptime] tile: usize,
        #[comptime] units: usize,
    ) {
        let len = bm.shape(2);
        let two_s = comptime!(2 * n_state);
        let per = comptime!((tile * 2 * n_state + units - 1) / units);
        let lane = UNIT_POS_X as usize;
        #[unroll]
        for p in 0..per {
            let e = lane + p * units;
            let t = t0 + e / two_s;
            let o = e % two_s;
            let mut v = 0.0f32;
            if e < comptime!(tile * 2 * n_state) && t < len {
                if o < n_state {
                    v = f32::cast_from(bm[b * bm.stride(0) + o * bm.stride(1) + t * bm.stride(2)]);
                } else {
                    let s = o - n_state;
                    v = f32::cast_from(cm[b * cm.stride(0) + s * cm.stride(1) + t * cm.stride(2)]);
                }
            }
            out[p] = v;
        }
    }

    /// `buf[offset + e] = regs[p]` for this unit's elements `e = lane + p·units < count`.
    #[cube]
    fn publish(
        regs: &Array<f32>,
        buf: &mut SharedMemory<f32>,
        offset: usize,
        #[comptime] count: usize,
        #[comptime] units: usize,
    ) {
        let lane = UNIT_POS_X as usize;
        #[unroll]
        for p in 0..comptime!((count + units - 1) / units) {
            let e = lane + p * units;
            if e < count {
                buf[offset + e] = regs[p];
            }
        }
    }

    /// `x[b, c0 + e % chans, t0 + e / chans] = buf[offset + e]` for this unit's elements
    /// of a `[step][channel]` tile, where in bounds.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn store_x<F: Float>(
        x: &mut Tensor<F>,
        buf: &SharedMemory<f32>,
        offset: usize,
        b: usize,
        c0: usize,
        t0: usize,
        #[comptime] chans: usize,
        #[comptime] tile: usize,
        #[comptime] units: usize,
    ) {
        let channels = x.shape(1);
        let len = x.shape(2);
        let lane = UNIT_POS_X as usize;
        let c = c0 + lane % chans;
        let base = b * x.stride(0) + c * x.stride(1);
        #[unroll]
        for p in 0..comptime!((tile * chans + units - 1) / units) {
            let e = lane + p * units;
            let t = t0 + e / chans;
            if e < comptime!(tile * chans) && t < len && c < channels {
                x[base + t * x.stride(2)] = F::cast_from(buf[offset + e]);
            }
        }
    }

    /// This unit's share of A (`av`) and of the initial state (`h`: h0's, else zeros): the
    /// states `g·mine..(g + 1)·mine` of channel `cc`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn unit_states(
        a: &Tensor<f32>,
        h0: &Tensor<f32>,
        b: usize,
        cc: usize,
        g: usize,
        av: &mut Array<f32>,
        h: &mut Array<f32>,
        #[comptime] mine: usize,
        #[comptime] has_h0: bool,
    ) {
        #[unroll]
        for s in 0..mine {
            let st = g * mine + s;
            av[s] = a[cc * a.stride(0) + st * a.stride(1)];
            h[s] = 0.0;
        }
        if has_h0 {
            #[unroll]
            for s in 0..mine {
                let st = g * mine + s;
                h[s] = h0[b * h0.stride(0) + cc * h0.stride(1) + st * h0.stride(2)];
            }
        }
    }

    /// The bias of the channel this unit loads for in [`load_x`] (`c0 + lane % chans`,
    /// clamped to the last channel): the same for all its elements of a tile.
    #[cube]
    fn load_bias(bias: &Tensor<f32>, c0: usize, #[comptime] chans: usize) -> f32 {
        let channels = bias.shape(0);
        let mut c = c0 + UNIT_POS_X as usize % chans;
        if c >= channels {
            c = channels - 1;
        }
        bias[c * bias.stride(0)]
    }

    /// In place: `d ← softplus(d + bias)` (0 past the sequence, so that a step there leaves
    /// the state as it is) and `z ← silu(z)` for this unit's elements of a tile from `t0`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn softplus_silu(
        d: &mut Array<f32>,
        z: &mut Array<f32>,
        bias: f32,
        t0: usize,
        len: usize,
        #[comptime] chans: usize,
        #[comptime] tile: usize,
        #[comptime] units: usize,
    ) {
        let lane = UNIT_POS_X as usize;
        #[unroll]
        for p in 0..comptime!((tile * chans + units - 1) / units) {
            let mut dt = 0.0f32;
            if t0 + (lane + p * units) / chans < len {
                dt = softplus(d[p] + bias);
            }
            d[p] = dt;
            z[p] = z[p] * sigmoid(z[p]);
        }
    }

    /// `lanes` units per channel (each `S / lanes` of its states), `units / lanes` channels
    /// per cube; time in tiles of `tile` steps. Per tile the cube loads u, Δ, z, B and C
    /// once (the next tile's loads in flight while this one is scanned) and computes
    /// `Δ = softplus(delta + bias)` and `silu(z)` once per channel and step into shared
    /// memory; each unit then runs its states, and the channel's lanes add their parts of
    /// `y` with shuffles.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_forward_channel_kernel<F: Float>(
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
        #[comptime] lanes: usize,
        #[comptime] tile: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let lane = UNIT_POS_X as usize;
        let chans = comptime!(units / lanes);
        let mine = comptime!(n_state / lanes);
        let g = lane % lanes;
        let ch = lane / lanes;
        let c0 = CUBE_POS_X as usize * chans;
        let c = c0 + ch;
        let b = CUBE_POS_Y as usize;
        let active = c < channels;
        let mut cc = c;
        if !active {
            cc = channels - 1;
        }
        let two_s = comptime!(2 * n_state);
        let xs = comptime!(tile * (units / lanes));
        let bcs = comptime!(tile * 2 * n_state);
        // One buffer: Δ | u | silu(z) as [step][channel], then [step][B | C].
        let buf = comptime!(3 * tile * (units / lanes) + tile * 2 * n_state);
        let mut sh = SharedMemory::<f32>::new(comptime!(
            2 * (3 * tile * (units / lanes) + tile * 2 * n_state)
        ));

        let mut h = Array::<f32>::new(mine);
        let mut av = Array::<f32>::new(mine);
        unit_states(a, h0, b, cc, g, &mut av, &mut h, mine, has_h0);
        let dv = dskip[cc * dskip.stride(0)];
        let lbias = load_bias(bias, c0, chans);

        let per_x = comptime!((tile * (units / lanes) + units - 1) / units);
        let per_bc = comptime!((tile * 2 * n_state + units - 1) / units);
        let mut ru = Array::<f32>::new(per_x);
        let mut rd = Array::<f32>::new(per_x);
        let mut rz = Array::<f32>::new(per_x);
        let mut rbc = Array::<f32>::new(per_bc);
        load_x::<F>(u, b, c0, 0, &mut ru, chans, tile, units);
        load_x::<F>(delta, b, c0, 0, &mut rd, chans, tile, units);
        load_x::<F>(z, b, c0, 0, &mut rz, chans, tile, units);
        load_bc::<F>(bm, cm, b, 0, &mut rbc, n_state, tile, units);

        let n_tiles = (len + tile - 1) / tile;
        // Publish tile 0, then per tile: loads of the next in flight, scan, barrier, store y
        // and publish the next, barrier.
        softplus_silu(&mut rd, &mut rz, lbias, 0, len, chans, tile, units);
        publish(&rd, &mut sh, 0, xs, units);
        publish(&ru, &mut sh, xs, xs, units);
        publish(
            &rz,
            &mut sh,
            comptime!(2 * tile * (units / lanes)),
            xs,
            units,
        );
        publish(
            &rbc,
            &mut sh,
            comptime!(3 * tile * (units / lanes)),
            bcs,
            units,
        );
        sync_cube();
        for k in 0..n_tiles {
            let t0 = k * tile;
            let t1 = t0 + tile;
            load_x::<F>(u, b, c0, t1, &mut ru, chans, tile, units);
            load_x::<F>(delta, b, c0, t1, &mut rd, chans, tile, units);
            load_x::<F>(z, b, c0, t1, &mut rz, chans, tile, units);
            load_bc::<F>(bm, cm, b, t1, &mut rbc, n_state, tile, units);

            let kb = (k % 2) * buf;
            // No step is guarded: past the sequence Δ is 0, so the states stay as they are.
            #[unroll]
            for i in 0..tile {
                let x = kb + i * chans + ch;
                let dt = sh[x];
                let uu = sh[x + xs];
                let dtu = dt * uu;
                let row = kb + comptime!(3 * tile * (units / lanes)) + i * two_s + g * mine;
                let mut acc = 0.0f32;
                #[unroll]
                for s in 0..mine {
                    let hs = f32::exp(dt * av[s]) * h[s] + dtu * sh[row + s];
                    h[s] = hs;
                    acc += hs * sh[row + n_state + s];
                }
                let total = sum_lanes(acc, lanes);
                // y replaces silu(z) (every lane of the channel writes the same value).
                sh[x + 2 * xs] = (total + dv * uu) * sh[x + 2 * xs];
            }
            softplus_silu(&mut rd, &mut rz, lbias, t1, len, chans, tile, units);
            sync_cube();
            store_x::<F>(y, &sh, kb + 2 * xs, b, c0, t0, chans, tile, units);
            // Tile k − 1's buffer is free: every unit passed the barrier after scanning it.
            let nb = ((k + 1) % 2) * buf;
            publish(&rd, &mut sh, nb, xs, units);
            publish(&ru, &mut sh, nb + xs, xs, units);
            publish(&rz, &mut sh, nb + 2 * xs, xs, units);
            publish(
                &rbc,
                &mut sh,
                nb + comptime!(3 * tile * (units / lanes)),
                bcs,
                units,
            );
            sync_cube();
        }

        if active {
            #[unroll]
            for s in 0..mine {
                let st = g * mine + s;
                h_last[b * h_last.stride(0) + c * h_last.stride(1) + st * h_last.stride(2)] = h[s];
            }
        }
    }

    /// Stages one chunk of the backward into `sh` as `[step][channel]` arrays: Δ, u, σ(Δ's
    /// argument) (for d(delta)), and with `full` also `e = dy·silu(z)` (the adjoint of y
    /// before the gate) and `q = dy·σ(z)·(1 + z·(1 − σ(z)))` (dz = q · y before the gate);
    /// then `[step][B | C]`. Each channel's and step's values are computed once.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn stage_chunk<F: Float>(
        u: &Tensor<F>,
        delta: &Tensor<F>,
        z: &Tensor<F>,
        dy: &Tensor<F>,
        bm: &Tensor<F>,
        cm: &Tensor<F>,
        sh: &mut SharedMemory<f32>,
        lbias: f32,
        b: usize,
        c0: usize,
        t0: usize,
        #[comptime] full: bool,
        #[comptime] n_state: usize,
        #[comptime] chans: usize,
        #[comptime] chunk: usize,
        #[comptime] units: usize,
    ) {
        let xs = comptime!(chunk * chans);
        let per_x = comptime!((chunk * chans + units - 1) / units);
        let per_bc = comptime!((chunk * 2 * n_state + units - 1) / units);
        let mut r1 = Array::<f32>::new(per_x);
        let mut r2 = Array::<f32>::new(per_x);
        let mut r3 = Array::<f32>::new(per_x);
        let mut r4 = Array::<f32>::new(per_x);
        let mut rbc = Array::<f32>::new(per_bc);
        load_x::<F>(u, b, c0, t0, &mut r1, chans, chunk, units);
        load_x::<F>(delta, b, c0, t0, &mut r2, chans, chunk, units);
        if full {
            load_x::<F>(z, b, c0, t0, &mut r3, chans, chunk, units);
            load_x::<F>(dy, b, c0, t0, &mut r4, chans, chunk, units);
        }
        load_bc::<F>(bm, cm, b, t0, &mut rbc, n_state, chunk, units);
        publish(&r1, sh, xs, xs, units);
        let lane = UNIT_POS_X as usize;
        // Past the sequence Δ and σ are 0: a step there leaves the state and its adjoint as
        // they are and adds nothing to any gradient, so no step needs a guard.
        #[unroll]
        for p in 0..per_x {
            let x = r2[p] + lbias;
            let mut dt = 0.0f32;
            let mut sg = 0.0f32;
            if t0 + (lane + p * units) / chans < u.shape(2) {
                dt = softplus(x);
                sg = sigmoid(x);
            }
            r1[p] = dt;
            r2[p] = sg;
        }
        publish(&r1, sh, 0, xs, units);
        publish(&r2, sh, comptime!(2 * chunk * chans), xs, units);
        if full {
            #[unroll]
            for p in 0..per_x {
                let zz = r3[p];
                let g = r4[p];
                let sz = sigmoid(zz);
                r3[p] = g * zz * sz;
                r4[p] = g * sz * (1.0 + zz * (1.0 - sz));
            }
            publish(&r3, sh, comptime!(3 * chunk * chans), xs, units);
            publish(&r4, sh, comptime!(4 * chunk * chans), xs, units);
        }
        publish(
            &rbc,
            sh,
            comptime!(5 * chunk * chans),
            comptime!(chunk * 2 * n_state),
            units,
        );
    }

    /// The backward of [`scan_forward_channel_kernel`] (see the module docs), `lanes` units
    /// per channel. Outputs as the other backward kernels: du, d(delta), dz per step;
    /// `d_bc[b·blocks + cube, :, t]` = `[dB (S) | dC (S)]` summed over the cube's channels;
    /// `d_params[b, c, :]` = `[dA (S) | d initial_state (S) | dD | d delta_bias]` summed
    /// over time. `bounds` is scratch: `[b, chunk, s, channel slot]`, the state at the start
    /// of every chunk. With `planes` the channel's lanes add with shuffles and dB, dC are
    /// reduce-scattered over each plane's channels, then added over the cube's planes in
    /// shared memory; without, `lanes` is 1 and they are added in shared memory per step.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_backward_channel_kernel<F: Float>(
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
        #[comptime] lanes: usize,
        #[comptime] planes: bool,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[comptime] has_d_last: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let lane = UNIT_POS_X as usize;
        let chans = comptime!(units / lanes);
        let mine = comptime!(n_state / lanes);
        let g = lane % lanes;
        let ch = lane / lanes;
        let blk = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let c0 = blk * chans;
        let c = c0 + ch;
        // Units past the last channel run the same steps (shuffles and barriers need the
        // whole cube) on the last channel's parameters, and contribute nothing.
        let active = c < channels;
        let mut cc = c;
        if !active {
            cc = channels - 1;
        }
        let two_s = comptime!(2 * n_state);
        let xs = comptime!(chunk * (units / lanes));
        let bcb = comptime!(5 * chunk * (units / lanes));
        let stage = comptime!(5 * chunk * (units / lanes) + chunk * 2 * n_state);
        let warps = comptime!(if planes { units / 32 } else { 1 });
        // The staged chunk, then dB | dC: per plane `[plane][value][step]` (planes), or one
        // step's `[value][unit]` and the chunk's sums `[value][step]` (no planes).
        let red_len = comptime!(if planes {
            units / 32 * 2 * n_state * chunk
        } else {
            2 * n_state * (units + 1) + 2 * n_state * chunk
        });
        let mut sh = SharedMemory::<f32>::new(comptime!(
            5 * chunk * (units / lanes) + chunk * 2 * n_state + red_len
        ));

        let mut av = Array::<f32>::new(mine);
        let mut h = Array::<f32>::new(mine);
        unit_states(a, h0, b, cc, g, &mut av, &mut h, mine, has_h0);
        let dv = dskip[cc * dskip.stride(0)];
        let lbias = load_bias(bias, c0, chans);
        let k0 = b * bounds.stride(0) + c;
        let kst = bounds.stride(1);
        let ks = bounds.stride(2);
        let n_chunks = (len + chunk - 1) / chunk;

        // 1. Forward: the state at the start of every chunk.
        for k in 0..n_chunks {
            let t0 = k * chunk;
            #[unroll]
            for s in 0..mine {
                bounds[k0 + k * kst + (g * mine + s) * ks] = h[s];
            }
            stage_chunk::<F>(
                u, delta, z, dy, bm, cm, &mut sh, lbias, b, c0, t0, false, n_state, chans, chunk,
                units,
            );
            sync_cube();
            #[unroll]
            for i in 0..chunk {
                let dt = sh[i * chans + ch];
                let dtu = dt * sh[xs + i * chans + ch];
                let row = bcb + i * two_s + g * mine;
                #[unroll]
                for s in 0..mine {
                    h[s] = f32::exp(dt * av[s]) * h[s] + dtu * sh[row + s];
                }
            }
            sync_cube();
        }

        // 2. Reverse, chunk by chunk: states into registers, then the adjoint.
        let mut dh = Array::<f32>::new(mine);
        let mut da = Array::<f32>::new(mine);
        #[unroll]
        for s in 0..mine {
            dh[s] = 0.0;
            da[s] = 0.0;
        }
        if has_d_last {
            #[unroll]
            for s in 0..mine {
                let st = g * mine + s;
                dh[s] =
                    d_last[b * d_last.stride(0) + cc * d_last.stride(1) + st * d_last.stride(2)];
            }
        }
        let mut d_d = 0.0f32;
        let mut d_bias = 0.0f32;
        // hs[i·mine + s]: this unit's states before step i of the chunk.
        let mut hs = Array::<f32>::new(comptime!((chunk + 1) * (n_state / lanes)));
        let pv = comptime!(if planes { 32 / lanes } else { 1 });
        let mut vals = Array::<f32>::new(pv);
        let bc_row = b * (CUBE_COUNT_X as usize) + blk;
        let warp = lane / 32;
        let mut live = 0.0f32;
        if active {
            live = 1.0;
        }

        for kk in 0..n_chunks {
            let k = n_chunks - 1 - kk;
            let t0 = k * chunk;
            stage_chunk::<F>(
                u, delta, z, dy, bm, cm, &mut sh, lbias, b, c0, t0, true, n_state, chans, chunk,
                units,
            );
            sync_cube();
            #[unroll]
            for s in 0..mine {
                hs[s] = bounds[k0 + k * kst + (g * mine + s) * ks];
            }
            #[unroll]
            for i in 0..chunk {
                let dt = sh[i * chans + ch];
                let dtu = dt * sh[xs + i * chans + ch];
                let row = bcb + i * two_s + g * mine;
                #[unroll]
                for s in 0..mine {
                    hs[(i + 1) * mine + s] =
                        f32::exp(dt * av[s]) * hs[i * mine + s] + dtu * sh[row + s];
                }
            }
            #[unroll]
            for ii in 0..chunk {
                let i = chunk - 1 - ii;
                let x = i * chans + ch;
                let dt = sh[x];
                let uu = sh[xs + x];
                let sig = sh[2 * xs + x];
                let e = sh[3 * xs + x];
                let q = sh[4 * xs + x];
                let row = bcb + i * two_s + g * mine;
                let mut out = 0.0f32;
                #[unroll]
                for s in 0..mine {
                    out += sh[row + n_state + s] * hs[(i + 1) * mine + s];
                }
                let pre = sum_lanes(out, lanes) + dv * uu;
                let dzv = pre * q;
                d_d += e * uu;
                let mut gb = 0.0f32;
                let mut d_dt = 0.0f32;
                let dtu = dt * uu * live;
                let el = e * live;
                #[unroll]
                for s in 0..mine {
                    let bvv = sh[row + s];
                    let cv = sh[row + n_state + s];
                    let ea = f32::exp(dt * av[s]);
                    let eh = ea * hs[i * mine + s];
                    // The full adjoint of h_t: from y_t and from h_{t+1}.
                    let gh = dh[s] + e * cv;
                    d_dt += gh * (av[s] * eh + bvv * uu);
                    da[s] += gh * dt * eh;
                    gb += gh * bvv;
                    let rb = gh * dtu;
                    let rc = el * hs[(i + 1) * mine + s];
                    if planes {
                        vals[s] = rb;
                        vals[mine + s] = rc;
                    } else {
                        sh[stage + s * comptime!(units + 1) + lane] = rb;
                        sh[stage + (n_state + s) * comptime!(units + 1) + lane] = rc;
                    }
                    dh[s] = gh * ea;
                }
                let d_dt_all = sum_lanes(d_dt, lanes);
                let gb_all = sum_lanes(gb, lanes);
                let dx = d_dt_all * sig;
                d_bias += dx;
                // The gradients replace Δ, u and e of step i (read above by every lane of
                // the channel, before the shuffles; each lane writes the same values).
                sh[xs + x] = e * dv + gb_all * dt;
                sh[x] = dx;
                sh[3 * xs + x] = dzv;
                // dB and dC at step t, summed over the cube's channels.
                if planes {
                    #[unroll]
                    for o in comptime!(2 * n_state / lanes)..pv {
                        vals[o] = 0.0;
                    }
                    reduce_scatter(&mut vals, lanes);
                    // This lane now holds value v = its channel within the plane.
                    let v = (lane % 32) / lanes;
                    if v < comptime!(2 * n_state / lanes) {
                        let mut o = g * mine + v;
                        if v >= mine {
                            o = n_state + g * mine + v - mine;
                        }
                        sh[stage + (warp * two_s + o) * chunk + i] = vals[0];
                    }
                } else {
                    sync_cube();
                    let mut o = lane;
                    while o < two_s {
                        let mut acc = 0.0f32;
                        for j in 0..units {
                            acc += sh[stage + o * comptime!(units + 1) + j];
                        }
                        sh[stage + comptime!(2 * n_state * (units + 1)) + o * chunk + i] = acc;
                        o += units;
                    }
                    sync_cube();
                }
            }
            sync_cube();
            store_x::<F>(du, &sh, xs, b, c0, t0, chans, chunk, units);
            store_x::<F>(ddelta, &sh, 0, b, c0, t0, chans, chunk, units);
            store_x::<F>(
                dz,
                &sh,
                comptime!(3 * chunk * (units / lanes)),
                b,
                c0,
                t0,
                chans,
                chunk,
                units,
            );
            // dB | dC of the chunk: the planes' parts added (planes) or the sums (none).
            let mut e = lane;
            while e < comptime!(2 * n_state * chunk) {
                let o = e / chunk;
                let i = e % chunk;
                let mut acc = 0.0f32;
                if planes {
                    #[unroll]
                    for w in 0..warps {
                        acc += sh[stage + (w * two_s + o) * chunk + i];
                    }
                } else {
                    acc = sh[stage + comptime!(2 * n_state * (units + 1)) + o * chunk + i];
                }
                if t0 + i < len {
                    d_bc[bc_row * d_bc.stride(0)
                        + o * d_bc.stride(1)
                        + (t0 + i) * d_bc.stride(2)] = acc;
                }
                e += units;
            }
            sync_cube();
        }

        if active && g == 0 {
            let p0 = b * d_params.stride(0) + c * d_params.stride(1);
            let ps = d_params.stride(2);
            d_params[p0 + two_s * ps] = d_d;
            d_params[p0 + (two_s + 1) * ps] = d_bias;
        }
        if active {
            let p0 = b * d_params.stride(0) + c * d_params.stride(1);
            let ps = d_params.stride(2);
            #[unroll]
            for s in 0..mine {
                let st = g * mine + s;
                d_params[p0 + st * ps] = da[s];
                d_params[p0 + (n_state + st) * ps] = dh[s];
            }
        }
    }
}
