//! The selective-scan kernels for CUDA: one plane (warp) of 32 units owns one (batch,
//! channel) sequence and walks it in chunks of `32 · items` steps; a cube is [`WARPS`] such
//! planes, for neighbouring channels of one batch row. Devices without planes of 32 run
//! [`super::tiled`] instead.
//!
//! # Forward (`scan_forward_warp_kernel`)
//! The recurrence `h_t = a_t·h_{t−1} + b_t` is linear, hence associative under
//! `(a₂, b₂) ∘ (a₁, b₁) = (a₂a₁, a₂b₁ + b₂)`. Each unit folds its `items` consecutive steps
//! into one pair per state, the plane scans the pairs with 5 rounds of shuffles, and each
//! unit re-walks its steps from its start state accumulating y; the carry into the next
//! chunk travels by a shuffle too. No barrier and no shared memory.
//!
//! # Why one plane per channel
//! The design it replaced gave each channel a whole cube: 4 planes split a chunk of 1,024
//! steps, so every state of every chunk ended at a barrier where the planes' totals met in
//! shared memory (Nsight Compute: issue-bound at 50 % occupancy). Measured on an H100
//! (2026-12-07, bf16, time layout, forward / forward + backward): 1.34 / 5.83 ms against
//! 1.45 / 5.55 at batch 8 × 2048 × 3200, and 0.64 / 2.13 against 0.75 / 2.43 at × 1024
//! (`docs/performance.md`). It is the simpler base to make faster: no cross-plane
//! synchronisation, and its knobs (steps per unit, planes per cube) are independent.
//!
//! # Registers for the per-state values
//! A (per state), the carried state and, in the backward, the chunk's start state and the
//! adjoint carry live one state per lane (lane `s` holds state `s`; hence at most 32 states)
//! and reach the whole plane by a shuffle from lane `s`: the state loop stays a runtime loop
//! (unrolled states took 255 registers in an earlier design) without a memory round trip.
//!
//! # Backward (`scan_backward_warp_kernel`)
//! With `e_t = ∂L/∂out_t` the adjoint obeys the reverse recurrence
//! `r_t = a_t·(e_t·C_t + r_{t+1})`, the same kind of scan run backwards. A first sweep
//! computes the state at each chunk start (lane `s` writes state `s` to a `[b, d, chunks, S]`
//! buffer and reads it back itself: no fence needed). Then chunks go last to first; per
//! state the forward and the reverse (adjoint) pairs are folded and scanned across the
//! plane, and the walk yields du, dΔ, dz, dA, dD and d(delta bias) per channel. dB and dC
//! are shared by all channels: the planes of a cube leave theirs in shared memory, and after
//! one barrier per state the cube adds their sum with one atomic add per step, so the
//! atomics are `1 / WARPS` of one per channel (`mamba_ssm` adds each channel's directly).
//!
//! # Emulated planes
//! With `emulate` every plane operation ([`super::lanes`]) is a round trip through shared
//! memory between two barriers, so the same kernels run where there are no plane
//! operations: slowly, but with every index and carry of the real ones. That is how CI
//! checks them on lavapipe (`hymba/tests/scan_kernel.rs`).

use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::{CubeCount, CubeDim};

use self::cube::{scan_backward_warp_kernel, scan_forward_warp_kernel};
use super::launch::{
    BackwardOut, Launch, PLANE, SOURCE, adds_f32_atomically, has_planes_of_32, vector_width,
};

/// Steps per unit per chunk: a chunk is `32 · ITEMS` steps.
pub const ITEMS: usize = 8;
/// Planes (channels) per cube.
pub const WARPS: usize = 4;

/// How the warp kernels run: steps per unit, and whether plane operations are emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarpConfig {
    /// Steps per unit per chunk: 4, 8 or 16 (the tests use 4, so that short sequences span
    /// several chunks).
    pub items: usize,
    /// Every plane operation through shared memory, for devices without planes (slow: for
    /// checking the kernels' arithmetic on lavapipe).
    pub emulate: bool,
}

impl Default for WarpConfig {
    fn default() -> Self {
        WarpConfig {
            items: ITEMS,
            emulate: false,
        }
    }
}

/// Planes per cube for `channels` channels: [`WARPS`], never more than the channels need.
fn warps(channels: usize) -> usize {
    WARPS.min(channels.max(1).next_power_of_two())
}

/// Whether the warp kernels run on `client`'s device for `states` states with `config`:
/// the device has planes of 32 (or they are emulated), adds f32 atomically (the backward's dB
/// and dC) and has the backward's shared memory, the states fit one per lane, and `items` is
/// 4, 8 or 16.
pub fn usable<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    states: usize,
    config: WarpConfig,
) -> bool {
    let device = config.emulate || has_planes_of_32(client);
    // The backward's dB/dC exchange: two buffers of dB and dC per plane, a pad per unit.
    let shared = 4 * 4 * WARPS * PLANE * (config.items + 1);
    let fits = shared <= client.properties().hardware.max_shared_memory_size;
    device
        && adds_f32_atomically(client)
        && fits
        && (1..=PLANE).contains(&states)
        && [4, 8, 16].contains(&config.items)
}

/// Runs the forward into `y` (`[b, d, T]`, u's dtype) and `h_last` (`[b, d, S]`, f32); the
/// inputs are best stored with time innermost (then loads are vectors of steps).
pub fn forward<R: CubeRuntime>(
    x: Launch<R>,
    y: &CubeTensor<R>,
    h_last: &CubeTensor<R>,
    config: WarpConfig,
) {
    let [batch, channels, _] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    let items = config.items;
    let warps = warps(channels);
    let vec = vector_width(&[&x.u, &x.delta, &x.z, &x.bm, &x.cm, y], items);
    // SAFETY: planes past the last channel write nothing, steps past the sequence are masked
    // (with `vec > 1` a vector is wholly inside or past it, and aligned: `vector_width`),
    // the cube is whole planes of 32, and the outputs have the shapes indexed.
    unsafe {
        scan_forward_warp_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(channels.div_ceil(warps) as u32, batch as u32, 1),
            CubeDim::new_1d((warps * PLANE) as u32),
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
            warps,
            items,
            SOURCE,
            x.has_h0,
            config.emulate,
            dtype.into(),
        );
    }
}

/// Runs the backward: one group per batch row (`d_bc` is `[batch, 2S, T]`, already summed
/// over channels). `alloc_like` allocates a `[b, d, T]` gradient in the layout the caller
/// wants; `alloc` a contiguous buffer of the given shape and dtype.
pub fn backward<R: CubeRuntime>(
    x: Launch<R>,
    dy: CubeTensor<R>,
    d_last: Option<CubeTensor<R>>,
    config: WarpConfig,
    alloc_like: impl Fn(DType) -> CubeTensor<R>,
    alloc: impl Fn(&[usize], DType) -> CubeTensor<R>,
) -> BackwardOut<R> {
    let [batch, channels, len] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    let items = config.items;
    let warps = warps(channels);
    let cubes = channels.div_ceil(warps);
    let n_chunks = len.div_ceil(PLANE * items);
    let has_d_last = d_last.is_some();
    let d_last = d_last.unwrap_or_else(|| x.a.clone());
    let d_bc = burn_cubecl::ops::numeric::zeros_client(
        client.clone(),
        x.u.device.clone(),
        [batch, 2 * states, len].into(),
        DType::F32,
    );
    let out = BackwardOut {
        du: alloc_like(dtype),
        ddelta: alloc_like(dtype),
        dz: alloc_like(dtype),
        d_bc,
        groups: 1,
        d_params: alloc(&[batch, channels, 2 * states + 2], DType::F32),
    };
    // Rows for the idle planes of the last cube too, so that every plane writes its own.
    let bounds = alloc(&[batch, cubes * warps, n_chunks, states], DType::F32);
    let vec = vector_width(
        &[
            &x.u,
            &x.delta,
            &x.z,
            &x.bm,
            &x.cm,
            &dy,
            &out.du,
            &out.ddelta,
            &out.dz,
        ],
        items,
    );
    // SAFETY: as for the forward; idle planes read the last channel and write only their
    // own rows of `bounds`.
    unsafe {
        scan_backward_warp_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(cubes as u32, batch as u32, 1),
            CubeDim::new_1d((warps * PLANE) as u32),
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
            dy.into_tensor_arg(),
            d_last.into_tensor_arg(),
            out.du.clone().into_tensor_arg(),
            out.ddelta.clone().into_tensor_arg(),
            out.dz.clone().into_tensor_arg(),
            out.d_bc.clone().into_tensor_arg(),
            out.d_params.clone().into_tensor_arg(),
            bounds.into_tensor_arg(),
            states,
            warps,
            items,
            SOURCE,
            x.has_h0,
            has_d_last,
            config.emulate,
            dtype.into(),
        );
    }
    out
}

// `div_ceil` is not a cube function.
#[allow(clippy::manual_div_ceil)]
mod cube {
    use cubecl::prelude::*;

    use super::PLANE;
    use crate::scan::lanes::cube::{lane_pair, lane_scan, lane_shift, lane_sum, lane_value};
    use crate::scan::launch::cube::{
        finish_chunk, load_dt, load_steps, seed_chunk, sigmoid, store_steps,
    };

    /// `(c_row, c)`: the channel of this unit's plane, and the one it computes. Planes past
    /// the last channel compute the last channel's values (with `emulate` every unit must
    /// reach every barrier) and write nothing of theirs (`c_row ≥ channels`).
    #[cube]
    fn plane_channel(channels: usize, #[comptime] warps: usize) -> (usize, usize) {
        let c_row = CUBE_POS_X as usize * warps + UNIT_POS_X as usize / comptime!(PLANE);
        let mut c = c_row;
        if c_row >= channels {
            c = channels - 1;
        }
        (c_row, c)
    }

    /// `(A, initial state)` of state `lane` of channel `c` (batch row `b`) for lanes below
    /// `n_state` (lane s holds state s's), zeros elsewhere or without `has_h0`.
    #[cube]
    fn lane_states(
        a: &Tensor<f32>,
        h0: &Tensor<f32>,
        b: usize,
        c: usize,
        #[comptime] n_state: usize,
        #[comptime] has_h0: bool,
    ) -> (f32, f32) {
        let lane = UNIT_POS_X as usize % comptime!(PLANE);
        let mut a_lane = 0.0f32;
        let mut h = 0.0f32;
        if lane < n_state {
            a_lane = a[c * a.stride(0) + lane * a.stride(1)];
            if has_h0 {
                h = h0[b * h0.stride(0) + c * h0.stride(1) + lane * h0.stride(2)];
            }
        }
        (a_lane, h)
    }

    /// One plane per (channel, batch), `warps` channels per cube; see the module docs.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_forward_warp_kernel<F: Float, N: Size>(
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
        #[comptime] warps: usize,
        #[comptime] items: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[comptime] emulate: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let len = u.shape(2);
        let channels = u.shape(1);
        let plane = comptime!(PLANE);
        let units = comptime!(warps * PLANE);
        let last = comptime!(PLANE as u32 - 1);
        let unit = UNIT_POS_X as usize;
        let lane = unit % plane;
        let pl = lane as u32;
        let mut lanes = SharedMemory::<f32>::new(comptime!(if emulate { 2 * units } else { 1 }));
        let (c_row, c) = plane_channel(channels, warps);
        let valid = c_row < channels;
        let b = CUBE_POS_Y as usize;
        let (a_lane, mut carry) = lane_states(a, h0, b, c, n_state, has_h0);
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
        let chunk = comptime!(PLANE * items);
        let n_chunks = (len + chunk - 1) / chunk;
        for k in 0..n_chunks {
            let t_first = k * chunk + lane * items;
            // Steps past the sequence get Δ = 0, u = 0: the identity (1, 0).
            load_steps::<F, N>(u, u0, t_first, len, &mut uu, items);
            // From here on `uu` holds Δ·u, and the unit's decay product is one exponential:
            // Π exp(Δ·A) = exp(A·ΣΔ).
            let sum_dt = load_dt::<F, N>(delta, d0, t_first, len, bv, &mut dt, items);
            #[unroll]
            for i in 0..items {
                yv[i] = dv * uu[i];
                uu[i] *= dt[i];
            }
            for s in 0..n_state {
                let su = s as u32;
                let av = lane_value(a_lane, su, &mut lanes, units, emulate);
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
                load_steps::<F, N>(cm, c0 + s * cs, t_first, len, &mut cc, items);
                let (ia, ib) = lane_scan(pa, pb, &mut lanes, false, units, emulate);
                // The unit's start: the previous lane's inclusive pair applied to the chunk's
                // carry; the next chunk's carry: the last lane's.
                let (xa, xb) = lane_shift(ia, ib, 1u32, &mut lanes, false, units, emulate);
                let (ta, tb) = lane_pair(ia, ib, last, &mut lanes, units, emulate);
                let hc = lane_value(carry, su, &mut lanes, units, emulate);
                let mut h = hc;
                if pl > 0 {
                    h = xa * hc + xb;
                }
                #[unroll]
                for i in 0..items {
                    h = ev[i] * h + bx[i];
                    yv[i] += h * cc[i];
                }
                if pl == su {
                    carry = ta * hc + tb;
                }
            }
            // y = (D·u + Σ h·C) · silu(z).
            load_steps::<F, N>(z, z0, t_first, len, &mut bb, items);
            #[unroll]
            for i in 0..items {
                let zz = bb[i];
                yv[i] *= zz * sigmoid(zz);
            }
            if valid {
                store_steps::<F, N>(y, y0, t_first, len, &yv, items);
            }
        }
        if valid && lane < n_state {
            h_last[b * h_last.stride(0) + c * h_last.stride(1) + lane * h_last.stride(2)] = carry;
        }
    }

    /// One plane per (channel, batch), `warps` channels per cube; see the module docs.
    /// `d_params[b, c, :]` = `[dA (S) | d initial_state (S) | dD | d delta_bias]`;
    /// `bounds[b, c, k, s]` (the state at the start of chunk k, a row per plane of every
    /// cube) is written and read by lane `s` of channel c's plane only; `d_bc` must be zero.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_backward_warp_kernel<F: Float, N: Size>(
        u: &Tensor<Vector<F, N>>,
        delta: &Tensor<Vector<F, N>>,
        z: &Tensor<Vector<F, N>>,
        bm: &Tensor<Vector<F, N>>,
        cm: &Tensor<Vector<F, N>>,
        a: &Tensor<f32>,
        dskip: &Tensor<f32>,
        bias: &Tensor<f32>,
        h0: &Tensor<f32>,
        dy: &Tensor<Vector<F, N>>,
        d_last: &Tensor<f32>,
        du: &mut Tensor<Vector<F, N>>,
        ddelta: &mut Tensor<Vector<F, N>>,
        dz: &mut Tensor<Vector<F, N>>,
        d_bc: &mut Tensor<Atomic<f32>>,
        d_params: &mut Tensor<f32>,
        bounds: &mut Tensor<f32>,
        #[comptime] n_state: usize,
        #[comptime] warps: usize,
        #[comptime] items: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[comptime] has_d_last: bool,
        #[comptime] emulate: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let len = u.shape(2);
        let channels = u.shape(1);
        let plane = comptime!(PLANE);
        let units = comptime!(warps * PLANE);
        let last = comptime!(PLANE as u32 - 1);
        let unit = UNIT_POS_X as usize;
        let lane = unit % plane;
        let pl = lane as u32;
        let w = unit / plane;
        let mut lanes = SharedMemory::<f32>::new(comptime!(if emulate { 2 * units } else { 1 }));
        let first_channel = CUBE_POS_X as usize * warps;
        // Idle planes also write their own `bounds` rows (indexed by `c_row`).
        let (c_row, c) = plane_channel(channels, warps);
        let valid = c_row < channels;
        let b = CUBE_POS_Y as usize;
        let chunk = comptime!(PLANE * items);
        let n_chunks = (len + chunk - 1) / chunk;

        // dB | dC of one state per plane, double-buffered (one barrier per state), with a
        // pad after each unit's steps (no bank conflicts on either side of the transpose).
        let pitch = comptime!(items + 1);
        let row = comptime!(PLANE * (items + 1));
        let half = comptime!(2 * warps * PLANE * (items + 1));
        let mut xs = SharedMemory::<f32>::new(comptime!(4 * warps * PLANE * (items + 1)));
        // The unit's dA per state (a local array: the state index is a runtime value),
        // summed over the plane at the end.
        let mut das_acc = Array::<f32>::new(n_state);
        for s in 0..n_state {
            das_acc[s] = 0.0;
        }

        let (a_lane, mut carry) = lane_states(a, h0, b, c, n_state, has_h0);
        let dv = dskip[c * dskip.stride(0)];
        let bv = bias[c * bias.stride(0)];
        let u0 = b * u.stride(0) + c * u.stride(1);
        let d0 = b * delta.stride(0) + c * delta.stride(1);
        let z0 = b * z.stride(0) + c * z.stride(1);
        let g0 = b * dy.stride(0) + c * dy.stride(1);
        let du0 = b * du.stride(0) + c * du.stride(1);
        let dd0 = b * ddelta.stride(0) + c * ddelta.stride(1);
        let dz0 = b * dz.stride(0) + c * dz.stride(1);
        let bs = bm.stride(1);
        let cs = cm.stride(1);
        let b0 = b * bm.stride(0);
        let c0 = b * cm.stride(0);
        let k0 = b * bounds.stride(0) + c_row * bounds.stride(1) + lane * bounds.stride(3);
        let ks = bounds.stride(2);
        let bc0 = b * d_bc.stride(0);
        let bcs = d_bc.stride(1);

        let mut uu = Array::<f32>::new(items);
        let mut dt = Array::<f32>::new(items);
        let mut bb = Array::<f32>::new(items);
        let mut cc = Array::<f32>::new(items);
        let mut ev = Array::<f32>::new(items);
        let mut xv = Array::<f32>::new(items);

        // 1. The state at the start of every chunk (the last chunk's end is not needed).
        for k in 0..n_chunks {
            if lane < n_state {
                bounds[k0 + k * ks] = carry;
            }
            if k + 1 < n_chunks {
                let t_first = k * chunk + lane * items;
                load_steps::<F, N>(u, u0, t_first, len, &mut uu, items);
                let sum_dt = load_dt::<F, N>(delta, d0, t_first, len, bv, &mut dt, items);
                #[unroll]
                for i in 0..items {
                    uu[i] *= dt[i];
                }
                for s in 0..n_state {
                    let su = s as u32;
                    let av = lane_value(a_lane, su, &mut lanes, units, emulate);
                    load_steps::<F, N>(bm, b0 + s * bs, t_first, len, &mut bb, items);
                    let pa = f32::exp(av * sum_dt);
                    let mut pb = 0.0f32;
                    #[unroll]
                    for i in 0..items {
                        pb = f32::exp(dt[i] * av) * pb + uu[i] * bb[i];
                    }
                    let (ia, ib) = lane_scan(pa, pb, &mut lanes, false, units, emulate);
                    let (ta, tb) = lane_pair(ia, ib, last, &mut lanes, units, emulate);
                    let hc = lane_value(carry, su, &mut lanes, units, emulate);
                    if pl == su {
                        carry = ta * hc + tb;
                    }
                }
            }
        }

        // 2. Chunks last to first. Lane s holds the adjoint carry of state s, from ∂L/∂h_last.
        let mut adj = 0.0f32;
        if has_d_last && lane < n_state {
            adj = d_last[b * d_last.stride(0) + c * d_last.stride(1) + lane * d_last.stride(2)];
        }
        let mut out = Array::<f32>::new(items);
        let mut dus = Array::<f32>::new(items);
        let mut ddt = Array::<f32>::new(items);
        let mut hv = Array::<f32>::new(comptime!(items + 1));
        let mut ea = Array::<f32>::new(items);
        let mut d_d = 0.0f32;
        let mut d_bias = 0.0f32;
        for kk in 0..n_chunks {
            let k = n_chunks - 1 - kk;
            let t_first = k * chunk + lane * items;
            let mut start = 0.0f32;
            if lane < n_state {
                start = bounds[k0 + k * ks];
            }
            load_steps::<F, N>(u, u0, t_first, len, &mut uu, items);
            let sum_dt = load_dt::<F, N>(delta, d0, t_first, len, bv, &mut dt, items);
            load_steps::<F, N>(z, z0, t_first, len, &mut bb, items);
            load_steps::<F, N>(dy, g0, t_first, len, &mut cc, items);
            seed_chunk(
                &bb, &cc, &uu, dv, &mut ev, &mut out, &mut dus, &mut ddt, items,
            );
            for s in 0..n_state {
                let su = s as u32;
                let av = lane_value(a_lane, su, &mut lanes, units, emulate);
                load_steps::<F, N>(bm, b0 + s * bs, t_first, len, &mut bb, items);
                load_steps::<F, N>(cm, c0 + s * cs, t_first, len, &mut cc, items);
                // Both folds' decay products are Π exp(Δ·A) = exp(A·ΣΔ).
                let pa = f32::exp(av * sum_dt);
                let mut pb = 0.0f32;
                #[unroll]
                for i in 0..items {
                    let e = f32::exp(dt[i] * av);
                    let x = dt[i] * uu[i] * bb[i];
                    ea[i] = e;
                    xv[i] = x;
                    pb = e * pb + x;
                }
                let mut qb = 0.0f32;
                #[unroll]
                for ii in 0..items {
                    let i = items - 1 - ii;
                    qb = ea[i] * (qb + ev[i] * cc[i]);
                }
                let (ia, ib) = lane_scan(pa, pb, &mut lanes, false, units, emulate);
                let (ja, jb) = lane_scan(pa, qb, &mut lanes, true, units, emulate);
                // The unit's start state: the previous lane's inclusive forward pair on the
                // chunk's start state; its incoming adjoint: the next lane's inclusive
                // reverse pair on the adjoint carry; the next carry: lane 0's reverse pair.
                let (fa, fb) = lane_shift(ia, ib, 1u32, &mut lanes, false, units, emulate);
                let (ga, gb) = lane_shift(ja, jb, 1u32, &mut lanes, true, units, emulate);
                let (qa0, qb0) = lane_pair(ja, jb, 0u32, &mut lanes, units, emulate);
                let (hc, rc) = lane_pair(start, adj, su, &mut lanes, units, emulate);
                let mut h = hc;
                if pl > 0 {
                    h = fa * hc + fb;
                }
                let mut r = rc;
                if pl < last {
                    r = ga * rc + gb;
                }
                if pl == su {
                    adj = qa0 * rc + qb0;
                }
                // The walk: hv[i] is the state before step i (hv[items] after the last).
                hv[0] = h;
                #[unroll]
                for i in 0..items {
                    hv[i + 1] = ea[i] * hv[i] + xv[i];
                    out[i] += cc[i] * hv[i + 1];
                }
                let buf = ((kk * n_state + s) % 2) * half;
                let mine = buf + w * 2 * row + lane * pitch;
                let mut das = 0.0f32;
                #[unroll]
                for ii in 0..items {
                    let i = items - 1 - ii;
                    let gh = ev[i] * cc[i] + r;
                    let e = ea[i];
                    ddt[i] += gh * (av * e * hv[i] + bb[i] * uu[i]);
                    dus[i] += gh * dt[i] * bb[i];
                    das += gh * dt[i] * e * hv[i];
                    xs[mine + i] = gh * dt[i] * uu[i];
                    xs[mine + row + i] = ev[i] * hv[i + 1];
                    r = e * gh;
                }
                das_acc[s] += das;
                sync_cube();
                // The cube's channels summed, one atomic add per step of dB and of dC; the
                // units take consecutive steps, so a plane's adds hit consecutive floats.
                #[unroll]
                for j in 0..comptime!(2 * items / warps) {
                    let e = j * comptime!(warps * PLANE) + unit;
                    let m = e / chunk;
                    let local = e % chunk;
                    let t = k * chunk + local;
                    if t < len {
                        let slot = buf + m * row + (local / items) * pitch + local % items;
                        let mut v = 0.0f32;
                        #[unroll]
                        for ww in 0..warps {
                            if first_channel + ww < channels {
                                v += xs[slot + ww * 2 * row];
                            }
                        }
                        d_bc[bc0 + (m * n_state + s) * bcs + t].fetch_add(v);
                    }
                }
            }
            // du, d(delta), dz of the chunk; d_d and d_bias summed over the unit's steps.
            load_steps::<F, N>(delta, d0, t_first, len, &mut bb, items);
            load_steps::<F, N>(z, z0, t_first, len, &mut cc, items);
            load_steps::<F, N>(dy, g0, t_first, len, &mut xv, items);
            let (chunk_bias, chunk_d) = finish_chunk(
                &bb, &cc, &xv, &ev, &uu, bv, &mut ddt, &mut out, t_first, len, items,
            );
            d_bias += chunk_bias;
            d_d += chunk_d;
            if valid {
                store_steps::<F, N>(du, du0, t_first, len, &dus, items);
                store_steps::<F, N>(ddelta, dd0, t_first, len, &ddt, items);
                store_steps::<F, N>(dz, dz0, t_first, len, &out, items);
            }
        }

        // 3. The per-channel sums over the plane: dA, dD, d delta_bias; the initial state's
        // gradient is the adjoint carry out of the first chunk.
        let p0 = b * d_params.stride(0) + c * d_params.stride(1);
        let ps = d_params.stride(2);
        for s in 0..n_state {
            let v = lane_sum(das_acc[s], &mut lanes, units, emulate);
            if valid && lane == s {
                d_params[p0 + s * ps] = v;
            }
        }
        let vd = lane_sum(d_d, &mut lanes, units, emulate);
        let vb = lane_sum(d_bias, &mut lanes, units, emulate);
        if valid {
            if lane < n_state {
                d_params[p0 + (n_state + lane) * ps] = adj;
            }
            if lane == 0 {
                d_params[p0 + comptime!(2 * n_state) * ps] = vd;
                d_params[p0 + comptime!(2 * n_state + 1) * ps] = vb;
            }
        }
    }
}
