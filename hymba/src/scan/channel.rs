//! The channel-sequential selective-scan kernels ([`super::kernel::ScanKernel::Channel`]):
//! one unit per (batch, channel) walks the whole sequence with all S states in registers,
//! reading the model's own layout — channels innermost (`[b, T, d]` storage seen as
//! `[b, d, T]`) — so that a plane's loads of one step are one run of memory and no
//! time-innermost copy is made.
//!
//! # Why
//! The recurrence `h_t = exp(Δ_t·A)·h_{t−1} + Δ_t·B_t·u_t` is one FMA deep per step: a unit
//! that owns a channel has no cross-unit traffic at all in the forward, and its exponentials
//! (one per step and state, the real cost: ~0.2 ms of an H100's MUFU throughput at batch 8 ×
//! 2048 × 3200 × 16) are independent of the state, so 16 of them are in flight per step. What
//! limits such a unit is memory latency, which these kernels hide explicitly:
//!
//! - **forward** (`scan_forward_channel_kernel`): time in tiles of [`FWD_TILE`] steps; while
//!   a unit scans tile k from registers (u, Δ, z) and shared memory (B, C: the same for all
//!   channels, loaded once per cube), the loads of tile k + 1 are already in flight into a
//!   second set of registers and a second shared buffer. One barrier per tile.
//! - **backward** (`scan_backward_channel_kernel`): a forward sweep stores the state at the
//!   start of every chunk of [`BWD_CHUNK`] steps (scratch in global memory, read back only by
//!   the unit that wrote it); then chunk by chunk, last to first, the cube stages the chunk's
//!   inputs in shared memory, each unit re-walks the chunk storing the state every [`BWD_SUB`]
//!   steps, and for each such sub-chunk (last to first) recomputes its states into registers
//!   and runs the adjoint recurrence `∂L/∂h_t = e_t·C_t + exp(Δ_{t+1}A)·∂L/∂h_{t+1}` back over
//!   it. dB and dC are sums over channels: with planes of 32 units (CUDA) a butterfly
//!   reduce-scatter leaves lane o the cube's sum of value o (31 shuffles per step for all 2S
//!   values); without planes (lavapipe) they go through shared memory with two barriers per
//!   step — correct everywhere, fast where it matters. One partial per cube, summed by a
//!   tensor op, as the other backward kernels do.
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

/// Channels (units) per cube of both kernels: one plane on CUDA. Small cubes spread a
/// 25,600-channel scan evenly over an H100's 132 SMs (800 cubes, 6–7 per SM).
pub const UNITS: usize = 32;
/// Steps per tile of the forward (registers: 6 per step, the current and the next tile).
pub const FWD_TILE: usize = 16;
/// Steps per chunk of the backward: the chunk's inputs live in shared memory (~25 KB per
/// cube at S = 16) and one state per chunk is stored in global scratch.
pub const BWD_CHUNK: usize = 32;
/// Steps per sub-chunk of the backward, whose states are recomputed into registers
/// (`(BWD_SUB + 1)·S` of them).
pub const BWD_SUB: usize = 4;
/// Whether [`super::kernel::ScanKernel::Auto`] picks these kernels for the model's layout.
/// Not yet: on an H200 at the bench shapes one unit per channel leaves 1–2 warps per
/// scheduler, so every step's instruction latencies are exposed (forward 2.06 ms at batch 8
/// × 2048 × 3200, f32, against 2.70 ms for the time-parallel kernels *with* their
/// time-innermost copies; `bench/results/scan_channel_s14_h200.json`).
pub const AUTO: bool = false;
/// The largest state these kernels take (registers); larger states run the other kernels.
pub const MAX_STATE: usize = 16;

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

/// Runs the forward kernel into `y` (`[b, d, T]`, u's dtype) and `h_last` (`[b, d, S]`, f32).
pub(super) fn forward<R: CubeRuntime>(x: Launch<R>, y: &CubeTensor<R>, h_last: &CubeTensor<R>) {
    let [batch, channels, _] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    let count = CubeCount::Static(channels.div_ceil(UNITS) as u32, batch as u32, 1);
    // SAFETY: every index is in bounds: channels past the last are clamped for reads and
    // guarded for writes, steps past the end are guarded, and the shared buffers hold
    // exactly the indices the kernel computes (see the kernel).
    unsafe {
        scan_forward_channel_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(UNITS as u32),
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
            UNITS,
            FWD_TILE,
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
    let planes = use_planes(&client, UNITS) && UNITS == PLANE;
    let blocks = channels.div_ceil(UNITS);
    let n_chunks = len.div_ceil(BWD_CHUNK);
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
    let bounds = alloc(&[batch, n_chunks, states, blocks * UNITS], DType::F32);
    // SAFETY: as for the forward; `bounds` has a slot for every unit of every cube, active
    // or not, and `d_bc` a row for every cube.
    unsafe {
        scan_backward_channel_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(blocks as u32, batch as u32, 1),
            CubeDim::new_1d(UNITS as u32),
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
            BWD_CHUNK,
            BWD_SUB,
            UNITS,
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

    use crate::scan::kernel::cube::{load_tile, sigmoid, softplus, store_tile};

    /// Values reduced per step on the plane path: dB | dC padded to one per lane.
    const PLANE_VALUES: usize = 32;

    /// `out[i] = x[base + (t0 + i)·step]` as f32 for the `tile` steps from `t0`, zero past
    /// `len`: one unit's own inputs for a tile, all loads issued before any is used.
    #[cube]
    fn load_steps<F: Float>(
        x: &Tensor<F>,
        base: usize,
        step: usize,
        t0: usize,
        len: usize,
        out: &mut Array<f32>,
        #[comptime] tile: usize,
    ) {
        #[unroll]
        for i in 0..tile {
            let t = t0 + i;
            let mut v = 0.0f32;
            if t < len {
                v = f32::cast_from(x[base + t * step]);
            }
            out[i] = v;
        }
    }

    /// This unit's share of B and C for the `tile` steps from `t0` (element `idx = lane +
    /// p·units` of the tile `[step][B (S) | C (S)]`), zero past `len`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_bc<F: Float>(
        bm: &Tensor<F>,
        cm: &Tensor<F>,
        b: usize,
        t0: usize,
        len: usize,
        out: &mut Array<f32>,
        #[comptime] n_state: usize,
        #[comptime] tile: usize,
        #[comptime] units: usize,
    ) {
        let two_s = comptime!(2 * n_state);
        let span = comptime!(tile * 2 * n_state);
        let per = comptime!((tile * 2 * n_state + units - 1) / units);
        let lane = UNIT_POS_X as usize;
        #[unroll]
        for p in 0..per {
            let idx = lane + p * units;
            let t = t0 + idx / two_s;
            let o = idx % two_s;
            let mut v = 0.0f32;
            if idx < span && t < len {
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

    /// Publishes [`load_bc`]'s registers into `buf[offset + idx]`.
    #[cube]
    fn store_bc(
        regs: &Array<f32>,
        buf: &mut SharedMemory<f32>,
        offset: usize,
        #[comptime] n_state: usize,
        #[comptime] tile: usize,
        #[comptime] units: usize,
    ) {
        let span = comptime!(tile * 2 * n_state);
        let per = comptime!((tile * 2 * n_state + units - 1) / units);
        let lane = UNIT_POS_X as usize;
        #[unroll]
        for p in 0..per {
            let idx = lane + p * units;
            if idx < span {
                buf[offset + idx] = regs[p];
            }
        }
    }

    /// One unit per channel, `units` channels per cube, all states in registers; time in
    /// tiles of `tile` steps, the next tile's loads in flight while this one is scanned (see
    /// the module docs).
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
        #[comptime] tile: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let channels = u.shape(1);
        let len = u.shape(2);
        let lane = UNIT_POS_X as usize;
        let c = CUBE_POS_X as usize * units + lane;
        let b = CUBE_POS_Y as usize;
        // Units past the last channel load and synchronise with the cube on the last
        // channel's inputs; they write nothing.
        let active = c < channels;
        let mut cc = c;
        if !active {
            cc = channels - 1;
        }
        let two_s = comptime!(2 * n_state);
        let span = comptime!(tile * 2 * n_state);
        let per = comptime!((tile * 2 * n_state + units - 1) / units);
        // Two tiles of [step][B | C], alternating.
        let mut sbc = SharedMemory::<f32>::new(comptime!(2 * tile * 2 * n_state));

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
        let u0 = b * u.stride(0) + cc * u.stride(1);
        let d0 = b * delta.stride(0) + cc * delta.stride(1);
        let z0 = b * z.stride(0) + cc * z.stride(1);
        let y0 = b * y.stride(0) + cc * y.stride(1);
        let (ut, dt_, zt, yt) = (u.stride(2), delta.stride(2), z.stride(2), y.stride(2));

        // The next tile's inputs (registers) and the current one's.
        let mut nu = Array::<f32>::new(tile);
        let mut nd = Array::<f32>::new(tile);
        let mut nz = Array::<f32>::new(tile);
        let mut nbc = Array::<f32>::new(per);
        let mut cu = Array::<f32>::new(tile);
        let mut cd = Array::<f32>::new(tile);
        let mut cz = Array::<f32>::new(tile);
        load_steps::<F>(u, u0, ut, 0, len, &mut nu, tile);
        load_steps::<F>(delta, d0, dt_, 0, len, &mut nd, tile);
        load_steps::<F>(z, z0, zt, 0, len, &mut nz, tile);
        load_bc::<F>(bm, cm, b, 0, len, &mut nbc, n_state, tile, units);
        store_bc(&nbc, &mut sbc, 0, n_state, tile, units);
        sync_cube();

        let n_tiles = (len + tile - 1) / tile;
        for k in 0..n_tiles {
            let t0 = k * tile;
            #[unroll]
            for i in 0..tile {
                cu[i] = nu[i];
                cd[i] = nd[i];
                cz[i] = nz[i];
            }
            let t1 = t0 + tile;
            load_steps::<F>(u, u0, ut, t1, len, &mut nu, tile);
            load_steps::<F>(delta, d0, dt_, t1, len, &mut nd, tile);
            load_steps::<F>(z, z0, zt, t1, len, &mut nz, tile);
            load_bc::<F>(bm, cm, b, t1, len, &mut nbc, n_state, tile, units);

            let base = (k % 2) * span;
            #[unroll]
            for i in 0..tile {
                let t = t0 + i;
                if t < len {
                    let uu = cu[i];
                    let dt = softplus(cd[i] + bv);
                    let dtu = dt * uu;
                    let row = base + i * two_s;
                    let mut acc = 0.0f32;
                    #[unroll]
                    for s in 0..n_state {
                        let hs = f32::exp(dt * av[s]) * h[s] + dtu * sbc[row + s];
                        h[s] = hs;
                        acc += hs * sbc[row + n_state + s];
                    }
                    let zz = cz[i];
                    if active {
                        y[y0 + t * yt] = F::cast_from((acc + dv * uu) * (zz * sigmoid(zz)));
                    }
                }
            }
            // Tile k − 1's buffer is free: every unit passed the barrier after scanning it.
            store_bc(&nbc, &mut sbc, ((k + 1) % 2) * span, n_state, tile, units);
            sync_cube();
        }

        if active {
            #[unroll]
            for s in 0..n_state {
                h_last[b * h_last.stride(0) + c * h_last.stride(1) + s * h_last.stride(2)] = h[s];
            }
        }
    }

    /// One round of the butterfly reduce-scatter over a plane: the lanes with bit `half`
    /// set keep the upper half of `vals[..2·half]` and send the lower, their partners the
    /// converse, and each adds what it receives. After rounds 16, 8, 4, 2, 1, lane o holds
    /// in `vals[0]` the plane's sum of value o.
    #[cube]
    fn fold_half(vals: &mut Array<f32>, #[comptime] half: usize) {
        let upper = (UNIT_POS_PLANE & comptime!(half as u32)) != 0;
        #[unroll]
        for o in 0..half {
            let lo = vals[o];
            let hi = vals[o + half];
            let send = select(upper, lo, hi);
            let keep = select(upper, hi, lo);
            vals[o] = keep + plane_shuffle_xor(send, comptime!(half as u32));
        }
    }

    /// The backward of [`scan_forward_channel_kernel`] (see the module docs). Outputs as the
    /// other backward kernels: du, d(delta), dz per step; `d_bc[b·blocks + cube, :, t]` =
    /// `[dB (S) | dC (S)]` summed over the cube's channels; `d_params[b, c, :]` = `[dA (S) |
    /// d initial_state (S) | dD | d delta_bias]` summed over time. `bounds` is scratch:
    /// `[b, chunk, s, unit]`, the state at the start of every chunk.
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
        #[comptime] sub: usize,
        #[comptime] units: usize,
        #[comptime] planes: bool,
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
        // Units past the last channel run the same steps (shuffles and barriers need the
        // whole cube) on the last channel's parameters, and contribute nothing.
        let active = c < channels;
        let mut cc = c;
        if !active {
            cc = channels - 1;
        }
        let two_s = comptime!(2 * n_state);
        let pitch = comptime!(chunk + 1);
        let rpitch = comptime!(units + 1);
        let mut su = SharedMemory::<f32>::new(comptime!(units * (chunk + 1)));
        let mut sd = SharedMemory::<f32>::new(comptime!(units * (chunk + 1)));
        let mut sz = SharedMemory::<f32>::new(comptime!(units * (chunk + 1)));
        let mut sg = SharedMemory::<f32>::new(comptime!(units * (chunk + 1)));
        let mut sb = SharedMemory::<f32>::new(comptime!(n_state * (chunk + 1)));
        let mut sc = SharedMemory::<f32>::new(comptime!(n_state * (chunk + 1)));
        let mut sbc = SharedMemory::<f32>::new(comptime!(2 * n_state * (chunk + 1)));
        // dB | dC of one step, [value][unit] (the path without planes).
        let mut red = SharedMemory::<f32>::new(comptime!(if planes {
            1
        } else {
            2 * n_state * (units + 1)
        }));
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
        let k0 = b * bounds.stride(0) + c;
        let kst = bounds.stride(1);
        let ks = bounds.stride(2);
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
                bounds[k0 + k * kst + s * ks] = h[s];
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

        // 2. Reverse, chunk by chunk, sub-chunk by sub-chunk.
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
        // subs[j·S + s]: the state at the start of sub-chunk j (local memory).
        let mut subs = Array::<f32>::new(comptime!(chunk / sub * n_state));
        // hs[q·S + s]: the state before step q of the sub-chunk (registers).
        let mut hs = Array::<f32>::new(comptime!((sub + 1) * n_state));
        let mut vals = Array::<f32>::new(comptime!(if planes { PLANE_VALUES } else { 1 }));
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
                h[s] = bounds[k0 + k * kst + s * ks];
            }
            let n_sub = (n + sub - 1) / sub;
            // 2a. The state at the start of every sub-chunk.
            for j in 0..n_sub {
                #[unroll]
                for s in 0..n_state {
                    subs[j * n_state + s] = h[s];
                }
                #[unroll]
                for q in 0..sub {
                    let i = j * sub + q;
                    if i < n {
                        let dt = softplus(sd[row + i] + bv);
                        let dtu = dt * su[row + i];
                        #[unroll]
                        for s in 0..n_state {
                            h[s] = f32::exp(dt * av[s]) * h[s] + dtu * sb[s * pitch + i];
                        }
                    }
                }
            }
            // 2b. Sub-chunks last to first: states into registers, then the adjoint.
            for jj in 0..n_sub {
                let j = n_sub - 1 - jj;
                #[unroll]
                for s in 0..n_state {
                    hs[s] = subs[j * n_state + s];
                }
                #[unroll]
                for q in 0..sub {
                    let i = j * sub + q;
                    if i < n {
                        let dt = softplus(sd[row + i] + bv);
                        let dtu = dt * su[row + i];
                        #[unroll]
                        for s in 0..n_state {
                            hs[(q + 1) * n_state + s] = f32::exp(dt * av[s]) * hs[q * n_state + s]
                                + dtu * sb[s * pitch + i];
                        }
                    }
                }
                #[unroll]
                for qq in 0..sub {
                    let q = sub - 1 - qq;
                    let i = j * sub + q;
                    if i < n {
                        let x = sd[row + i] + bv;
                        let dt = softplus(x);
                        let uu = su[row + i];
                        let zz = sz[row + i];
                        let sgm = sigmoid(zz);
                        let g = sg[row + i];
                        let mut out = dv * uu;
                        #[unroll]
                        for s in 0..n_state {
                            out += sc[s * pitch + i] * hs[(q + 1) * n_state + s];
                        }
                        // y = out · silu(z): e = dL/d out.
                        let e = g * zz * sgm;
                        let dzv = g * out * sgm * (1.0 + zz * (1.0 - sgm));
                        d_d += e * uu;
                        let mut gb = 0.0f32;
                        let mut d_dt = 0.0f32;
                        let mut live = 0.0f32;
                        if active {
                            live = 1.0;
                        }
                        let dtu = dt * uu * live;
                        let el = e * live;
                        #[unroll]
                        for s in 0..n_state {
                            let cv = sc[s * pitch + i];
                            let bvv = sb[s * pitch + i];
                            let ea = f32::exp(dt * av[s]);
                            let eh = ea * hs[q * n_state + s];
                            // The full adjoint of h_t: from y_t and from h_{t+1}.
                            let gh = dh[s] + e * cv;
                            d_dt += gh * (av[s] * eh + bvv * uu);
                            da[s] += gh * dt * eh;
                            gb += gh * bvv;
                            let rb = gh * dtu;
                            let rc = el * hs[(q + 1) * n_state + s];
                            if planes {
                                vals[s] = rb;
                                vals[n_state + s] = rc;
                            } else {
                                red[s * rpitch + lane] = rb;
                                red[(n_state + s) * rpitch + lane] = rc;
                            }
                            dh[s] = gh * ea;
                        }
                        let mut dx = d_dt;
                        if x <= 20.0 {
                            dx = d_dt * sigmoid(x);
                        }
                        d_bias += dx;
                        // The gradients replace the inputs in the tiles (each unit owns
                        // its row, and step i is not read again in this chunk).
                        su[row + i] = e * dv + gb * dt;
                        sd[row + i] = dx;
                        sz[row + i] = dzv;
                        // dB and dC at step t, summed over the cube's channels.
                        if planes {
                            #[unroll]
                            for o in two_s..PLANE_VALUES {
                                vals[o] = 0.0;
                            }
                            fold_half(&mut vals, 16usize);
                            fold_half(&mut vals, 8usize);
                            fold_half(&mut vals, 4usize);
                            fold_half(&mut vals, 2usize);
                            fold_half(&mut vals, 1usize);
                            if lane < two_s {
                                sbc[lane * pitch + i] = vals[0];
                            }
                        } else {
                            sync_cube();
                            let mut o = lane;
                            while o < two_s {
                                let mut acc = 0.0f32;
                                for jl in 0..units {
                                    acc += red[o * rpitch + jl];
                                }
                                sbc[o * pitch + i] = acc;
                                o += units;
                            }
                            sync_cube();
                        }
                    }
                }
            }
            sync_cube();
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
}
