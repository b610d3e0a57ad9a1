//! The portable selective-scan kernels: one unit per (batch, channel) walks the whole
//! sequence, with no plane (warp) operations, so they run on every CubeCL runtime — lavapipe
//! in CI, GPUs whose planes are not 32 wide. CUDA runs [`super::warp`] instead.
//!
//! # Forward (`scan_forward_kernel`)
//! [`FWD_UNITS`] channels per cube; the state `h[S]` lives in registers (S is a compile-time
//! constant, loops over it unrolled). Time goes in tiles of up to 32 steps: the cube first
//! copies the tile's u, delta, z (its channels) and B, C to shared memory — coalesced,
//! whichever dimension is innermost, all loads in flight at once — then each unit scans its
//! row from there, and y goes back to global memory the same way. Prologue and epilogue are
//! fused: `Δ = softplus(delta + bias)`, the D skip and the `silu(z)` gate. A decode step is
//! this kernel with T = 1 and an initial state.
//!
//! # Backward (`scan_backward_kernel`)
//! Same layout, [`BWD_UNITS`] channels per cube, chunks of steps staged in shared memory
//! like the forward tiles:
//! 1. a forward pass stores the state at the start of every chunk (O(T/chunk · S) floats per
//!    unit, not O(T · S));
//! 2. chunks are visited last to first: the chunk's states are recomputed from its start
//!    state into a local array, then a reverse sweep carries the adjoint `dh[S]` and
//!    produces du, dΔ → d(delta), dz, and the reductions: dA, dD and d(delta_bias) summed
//!    over time in registers (then over batch by a tensor op); dB and dC, shared by all
//!    channels, summed over the cube's channels in shared memory at each step and written
//!    per cube, then summed over cubes by a tensor op.
//!
//! Both read every tensor through its strides, so the transposed views the model passes
//! (`[b, T, d]` storage seen as `[b, d, T]`) need no copy.

use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::{CubeCount, CubeDim};

use self::cube::{scan_backward_kernel, scan_forward_kernel};
use super::launch::{BackwardOut, Launch, SOURCE};

/// Channels per cube of the forward kernel.
pub const FWD_UNITS: usize = 32;
/// Channels per cube of the backward kernel (one warp, so that its per-step reduction of dB
/// and dC over the cube's channels is cheap).
pub const BWD_UNITS: usize = 32;
/// The largest state size these kernels take (the state lives in registers).
pub const MAX_STATE: usize = 64;

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

/// Runs the forward into `y` (`[b, d, T]`, u's dtype, any layout) and `h_last`
/// (`[b, d, S]`, f32).
pub fn forward<R: CubeRuntime>(x: Launch<R>, y: &CubeTensor<R>, h_last: &CubeTensor<R>) {
    let [batch, channels, _] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    let tile = forward_tile(&client, states);
    let count = CubeCount::Static(channels.div_ceil(FWD_UNITS) as u32, batch as u32, 1);
    // SAFETY: every index is in bounds (units past the last channel are clamped to it and
    // write nothing; buffers are allocated with the sizes indexed), so the unchecked launch
    // only drops the bounds checks.
    unsafe {
        scan_forward_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(FWD_UNITS as u32),
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
            FWD_UNITS,
            tile,
            SOURCE,
            x.has_h0,
            dtype.into(),
        );
    }
}

/// Runs the backward in chunks of `chunk` steps ([`backward_chunk`]). `alloc_like` allocates a `[b, d, T]` gradient in the
/// layout the caller wants; `alloc` a contiguous buffer of the given shape and dtype.
pub fn backward<R: CubeRuntime>(
    x: Launch<R>,
    dy: CubeTensor<R>,
    d_last: Option<CubeTensor<R>>,
    chunk: usize,
    alloc_like: impl Fn(DType) -> CubeTensor<R>,
    alloc: impl Fn(&[usize], DType) -> CubeTensor<R>,
) -> BackwardOut<R> {
    let [batch, channels, len] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    let has_d_last = d_last.is_some();
    let d_last = d_last.unwrap_or_else(|| x.a.clone());
    let n_chunks = len.div_ceil(chunk);
    let blocks = channels.div_ceil(BWD_UNITS);
    let out = BackwardOut {
        du: alloc_like(dtype),
        ddelta: alloc_like(dtype),
        dz: alloc_like(dtype),
        d_bc: alloc(&[batch * blocks, 2 * states, len], DType::F32),
        groups: blocks,
        d_params: alloc(&[batch, channels, 2 * states + 2], DType::F32),
    };
    let bounds = alloc(&[batch, blocks * BWD_UNITS, n_chunks, states], DType::F32);
    // SAFETY: as for the forward.
    unsafe {
        scan_backward_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(blocks as u32, batch as u32, 1),
            CubeDim::new_1d(BWD_UNITS as u32),
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
            BWD_UNITS,
            SOURCE,
            x.has_h0,
            has_d_last,
            dtype.into(),
        );
    }
    out
}

/// The kernels (kept apart: cubecl's prelude has its own `Tensor`, `Shape`, ...).
// `div_ceil` is not a cube function.
#[allow(clippy::manual_div_ceil)]
mod cube {
    use cubecl::prelude::*;

    use crate::scan::launch::cube::{sigmoid, softplus};

    /// Copies `x[b, r0 + r, t0 + i]` (r < rows, i < width) into `tile[r·pitch + i]` as f32,
    /// zero past the tensor's end. Neighbouring units read neighbouring addresses of `x`,
    /// whichever of its last two dimensions is stored innermost.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_tile<F: Float>(
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
    fn store_tile<F: Float>(
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
}
