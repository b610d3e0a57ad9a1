//! The time-parallel backward on devices with planes of 32 (CUDA): one cube per (channel,
//! batch), as `mamba_ssm`'s backward, with dB and dC added atomically.
//!
//! # Why not the shared-memory backward ([`super::parallel`])
//! That one sums dB and dC over a cube's channels in registers (2·S per step), so each unit
//! holds 2 steps per chunk: at T = 2048 a channel spans 8 chunks, and every chunk pays its
//! cube scans and barriers again; per (step, state) it evaluates the exponential three
//! times. Here each unit holds [`ITEMS`] steps (a chunk of 1,024 at 128 units), computes
//! one exponential per (step, state) and chunk, and adds its dB and dC into a
//! `[batch, 2S, T]` f32 buffer with atomic adds: after a transpose through shared memory,
//! so that a plane's 32 adds hit 32 consecutive floats (`mamba_ssm` does the same).
//!
//! # Per chunk, last to first, state by state
//! 1. The unit's steps' decays `e = exp(Δ·A)` and inputs `x = Δ·u·B`, folded into one
//!    forward pair; the reverse pair folds `r ← e·(g·C + r)` (`g` = ∂L/∂out) from its last
//!    step to its first.
//! 2. Both pairs are scanned across the plane with shuffles; the planes' totals meet in
//!    shared memory behind one barrier. Each unit gets its start state (from the chunk's
//!    start state, computed by a first forward sweep and kept in global memory, O(T/chunk·S)
//!    floats per channel) and its incoming adjoint (from the chunk's, double-buffered by
//!    parity in shared memory as the forward's carry).
//! 3. The walk: states forward, adjoint backward, accumulating du, dΔ, dA, and the unit's
//!    dB and dC, which go out through the transpose.
//!
//! Inputs are read in vectors of `N` steps where time is innermost ([`super::parallel::vector_width`]).

use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::{CubeCount, CubeDim};

use self::cube::scan_backward_plane_kernel;
use super::kernel::SOURCE;
use super::parallel::{BackwardOut, Launch, PLANE, threads_for, vector_width};

/// Steps per unit per chunk.
pub const ITEMS: usize = 8;

/// Steps per unit per chunk in use: [`ITEMS`], or `HYMBA_SCAN_BWD_ITEMS` (4, 8 or 16; read
/// once per process) for comparisons in `bench scan`: fewer steps per unit hold fewer
/// registers (more cubes per SM) and pay the cross-unit scans more often.
pub fn items() -> usize {
    static ITEMS_IN_USE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ITEMS_IN_USE.get_or_init(|| super::parallel::items_from_env("HYMBA_SCAN_BWD_ITEMS", ITEMS))
}

/// Whether [`backward`] can run on `client`'s device at this cube size: the plane paths are
/// allowed ([`super::parallel::use_planes`]) and the device adds f32 atomically.
pub fn usable<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>, threads: usize) -> bool {
    super::parallel::use_planes(client, threads) && super::parallel::adds_f32_atomically(client)
}

/// Units per cube for a sequence of `len` steps at `states` states: whole planes as
/// [`super::parallel::plane_threads`] picks them, up to [`super::parallel::MAX_THREADS`] (or
/// as [`super::parallel::set_parallel_threads`] says), within the device's shared memory
/// (per unit: the dB/dC transpose and the dA sums). Under one plane (sequences of up to 128
/// steps) [`usable`] says no: the shared-memory backward runs.
pub fn threads<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    len: usize,
    states: usize,
) -> usize {
    let max_shared = client.properties().hardware.max_shared_memory_size;
    // Per unit: the dB/dC transpose and the dA sums. Per cube, at most MAX_THREADS / PLANE
    // planes: the four plane-total arrays and `red`, plus A, the two carries and the start
    // states (f32 each).
    let items = items();
    let per_unit = 2 * (items + 1) + states;
    let warps = super::parallel::MAX_THREADS / PLANE;
    let fixed = 4 * (4 * states * warps + (states + 2) * warps + 4 * states);
    let max = threads_for(len, items, per_unit, max_shared.saturating_sub(fixed));
    super::parallel::plane_threads(len, items, max)
}

/// Runs the plane backward; the outputs are those of [`super::parallel::backward`] with one
/// group per batch row (`d_bc` is `[batch, 2S, T]`, already summed over channels).
pub(super) fn backward<R: CubeRuntime>(
    x: Launch<R>,
    dy: CubeTensor<R>,
    d_last: Option<CubeTensor<R>>,
    threads: usize,
    alloc_like: impl Fn(DType) -> CubeTensor<R>,
    alloc: impl Fn(&[usize], DType) -> CubeTensor<R>,
) -> BackwardOut<R> {
    let [batch, channels, len] = x.u.shape().dims::<3>();
    let states = x.a.shape().dims::<2>()[1];
    let dtype = x.u.dtype();
    let client = x.u.client.clone();
    let items = items();
    let n_chunks = len.div_ceil(threads * items);
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
    let bounds = alloc(&[batch, channels, n_chunks, states], DType::F32);
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
    // SAFETY: the cube grid is exactly channels × batch, steps past the sequence are masked
    // (with `vec > 1` a vector is wholly inside or past it, and aligned: `vector_width`), the
    // cube is whole planes (`usable`), and the outputs have the shapes indexed.
    unsafe {
        scan_backward_plane_kernel::launch_unchecked::<R>(
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
            items,
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

    use super::PLANE;
    use crate::scan::parallel::cube::{
        finish_chunk, load_dt, load_steps, plane_scan_pair, seed_chunk, store_steps,
    };

    /// One cube per (channel, batch); see the module docs. `d_params[b, c, :]` =
    /// `[dA (S) | d initial_state (S) | dD | d delta_bias]`; `bounds[b, c, k, s]` (the state
    /// at the start of chunk k) is written and read by unit `s` only; `d_bc` must be zero.
    #[cube(
        launch_unchecked,
        fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
    )]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan_backward_plane_kernel<F: Float, N: Size>(
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
        #[comptime] threads: usize,
        #[comptime] items: usize,
        #[comptime] _source: u64,
        #[comptime] has_h0: bool,
        #[comptime] has_d_last: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let len = u.shape(2);
        let c = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let lane = UNIT_POS_X as usize;
        let pl = UNIT_POS_PLANE;
        let warps = comptime!(threads / PLANE);
        let plane = comptime!(PLANE);
        let last_lane = comptime!(PLANE as u32 - 1);
        let w = lane / plane;
        let chunk = comptime!(threads * items);
        let n_chunks = (len + chunk - 1) / chunk;

        // Plane totals: forward (wa, wb) and reverse (ra, rb) pairs of every state.
        let mut wa = SharedMemory::<f32>::new(comptime!(n_state * warps));
        let mut wb = SharedMemory::<f32>::new(comptime!(n_state * warps));
        let mut ra = SharedMemory::<f32>::new(comptime!(n_state * warps));
        let mut rb = SharedMemory::<f32>::new(comptime!(n_state * warps));
        let mut sav = SharedMemory::<f32>::new(n_state);
        // State carry (first sweep) and adjoint carry (second), double-buffered by parity.
        let mut carry = SharedMemory::<f32>::new(comptime!(2 * n_state));
        // The chunk's start states (from `bounds`).
        let mut sh = SharedMemory::<f32>::new(n_state);
        // dB and dC of one state, unit-major with a pad (no bank conflicts on either side).
        let stride_u = comptime!(items + 1);
        let mut xb = SharedMemory::<f32>::new(comptime!(threads * (items + 1)));
        let mut xc = SharedMemory::<f32>::new(comptime!(threads * (items + 1)));
        // Per-unit dA (time-summed over its steps), reduced over units at the end.
        let mut sda = SharedMemory::<f32>::new(comptime!(n_state * threads));
        let mut red = SharedMemory::<f32>::new(comptime!((n_state + 2) * warps));

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
        for s in 0..n_state {
            sda[s * threads + lane] = 0.0;
        }
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
        let k0 = b * bounds.stride(0) + c * bounds.stride(1);
        let bc0 = b * d_bc.stride(0);

        let mut uu = Array::<f32>::new(items);
        let mut dt = Array::<f32>::new(items);
        let mut bb = Array::<f32>::new(items);
        let mut cc = Array::<f32>::new(items);
        let mut ev = Array::<f32>::new(items);
        let mut xv = Array::<f32>::new(items);
        sync_cube();

        // 1. The state at the start of every chunk (the last chunk's end is not needed).
        for k in 0..n_chunks {
            let cur = (k % 2) * n_state;
            let next = comptime!(n_state) - cur;
            let mut s1 = lane;
            while s1 < n_state {
                bounds[k0 + k * bounds.stride(2) + s1 * bounds.stride(3)] = carry[cur + s1];
                s1 += threads;
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
                    let av = sav[s];
                    load_steps::<F, N>(bm, b0 + s * bs, t_first, len, &mut bb, items);
                    // Π exp(Δ·A) = exp(A·ΣΔ); `uu` holds Δ·u in this sweep.
                    let pa = f32::exp(av * sum_dt);
                    let mut pb = 0.0f32;
                    #[unroll]
                    for i in 0..items {
                        pb = f32::exp(dt[i] * av) * pb + uu[i] * bb[i];
                    }
                    let (ia, ib) = plane_scan_pair(pa, pb, false);
                    if pl == last_lane {
                        wa[s * warps + w] = ia;
                        wb[s * warps + w] = ib;
                    }
                    sync_cube();
                    if lane == 0 {
                        let mut hc = carry[cur + s];
                        for v in 0..warps {
                            hc = wa[s * warps + v] * hc + wb[s * warps + v];
                        }
                        carry[next + s] = hc;
                    }
                }
            }
            sync_cube();
        }

        // 2. Chunks last to first. The adjoint carry starts at ∂L/∂h_last.
        let mut s2 = lane;
        while s2 < n_state {
            let mut r = 0.0f32;
            if has_d_last {
                r = d_last[b * d_last.stride(0) + c * d_last.stride(1) + s2 * d_last.stride(2)];
            }
            carry[s2] = r;
            s2 += threads;
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
            let cur = (kk % 2) * n_state;
            let next = comptime!(n_state) - cur;
            let t_first = k * chunk + lane * items;
            let mut s3 = lane;
            while s3 < n_state {
                sh[s3] = bounds[k0 + k * bounds.stride(2) + s3 * bounds.stride(3)];
                s3 += threads;
            }
            load_steps::<F, N>(u, u0, t_first, len, &mut uu, items);
            let sum_dt = load_dt::<F, N>(delta, d0, t_first, len, bv, &mut dt, items);
            load_steps::<F, N>(z, z0, t_first, len, &mut bb, items);
            load_steps::<F, N>(dy, g0, t_first, len, &mut cc, items);
            seed_chunk(
                &bb, &cc, &uu, dv, &mut ev, &mut out, &mut dus, &mut ddt, items,
            );
            for s in 0..n_state {
                let av = sav[s];
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
                let (ia, ib) = plane_scan_pair(pa, pb, false);
                let (ja, jb) = plane_scan_pair(pa, qb, true);
                // This unit's start within its plane: the previous lane's inclusive forward
                // pair, and the next lane's inclusive reverse pair.
                let fa = plane_shuffle_up(ia, 1u32);
                let fb = plane_shuffle_up(ib, 1u32);
                let ga = plane_shuffle_down(ja, 1u32);
                let gb = plane_shuffle_down(jb, 1u32);
                if pl == last_lane {
                    wa[s * warps + w] = ia;
                    wb[s * warps + w] = ib;
                }
                if pl == 0 {
                    ra[s * warps + w] = ja;
                    rb[s * warps + w] = jb;
                }
                sync_cube();
                let mut h = sh[s];
                #[unroll]
                for v in 0..warps {
                    if v < w {
                        h = wa[s * warps + v] * h + wb[s * warps + v];
                    }
                }
                if pl > 0 {
                    h = fa * h + fb;
                }
                let mut r = carry[cur + s];
                #[unroll]
                for vv in 0..warps {
                    let v = warps - 1 - vv;
                    if v > w {
                        r = ra[s * warps + v] * r + rb[s * warps + v];
                    }
                }
                if pl < last_lane {
                    r = ga * r + gb;
                }
                if lane == 0 {
                    let mut rc = carry[cur + s];
                    for vv in 0..warps {
                        let v = warps - 1 - vv;
                        rc = ra[s * warps + v] * rc + rb[s * warps + v];
                    }
                    carry[next + s] = rc;
                }
                // The walk: hv[i] is the state before step i (hv[items] after the last).
                hv[0] = h;
                #[unroll]
                for i in 0..items {
                    hv[i + 1] = ea[i] * hv[i] + xv[i];
                    out[i] += cc[i] * hv[i + 1];
                }
                let mut das = 0.0f32;
                #[unroll]
                for ii in 0..items {
                    let i = items - 1 - ii;
                    let gh = ev[i] * cc[i] + r;
                    let e = ea[i];
                    ddt[i] += gh * (av * e * hv[i] + bb[i] * uu[i]);
                    dus[i] += gh * dt[i] * bb[i];
                    das += gh * dt[i] * e * hv[i];
                    xb[lane * stride_u + i] = gh * dt[i] * uu[i];
                    xc[lane * stride_u + i] = ev[i] * hv[i + 1];
                    r = e * gh;
                }
                sda[s * threads + lane] += das;
                sync_cube();
                // The transpose: plane-consecutive steps, so each add hits one run of floats.
                #[unroll]
                for i in 0..items {
                    let local = i * threads + lane;
                    let t = k * chunk + local;
                    if t < len {
                        let slot = (local / items) * stride_u + local % items;
                        d_bc[bc0 + s * d_bc.stride(1) + t].fetch_add(xb[slot]);
                        d_bc[bc0 + (n_state + s) * d_bc.stride(1) + t].fetch_add(xc[slot]);
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
            store_steps::<F, N>(du, du0, t_first, len, &dus, items);
            store_steps::<F, N>(ddelta, dd0, t_first, len, &ddt, items);
            store_steps::<F, N>(dz, dz0, t_first, len, &out, items);
            // The carries and plane totals are rewritten in the next chunk.
            sync_cube();
        }

        // 3. The per-channel sums over units: dA, dD, d delta_bias; the initial state's
        // gradient is the adjoint carry out of the first chunk.
        let p0 = b * d_params.stride(0) + c * d_params.stride(1);
        let ps = d_params.stride(2);
        for s in 0..n_state {
            let v = plane_sum(sda[s * threads + lane]);
            if pl == 0 {
                red[s * warps + w] = v;
            }
        }
        let vd = plane_sum(d_d);
        let vb = plane_sum(d_bias);
        if pl == 0 {
            red[comptime!(n_state * warps) + w] = vd;
            red[comptime!((n_state + 1) * warps) + w] = vb;
        }
        sync_cube();
        let fin = (n_chunks % 2) * n_state;
        let mut p = lane;
        while p < comptime!(2 * n_state + 2) {
            let mut v = 0.0f32;
            if p < n_state || p >= comptime!(2 * n_state) {
                let mut row = p;
                if p >= comptime!(2 * n_state) {
                    row = p - n_state;
                }
                for j in 0..warps {
                    v += red[row * warps + j];
                }
            } else {
                v = carry[fin + p - n_state];
            }
            d_params[p0 + p * ps] = v;
            p += threads;
        }
    }
}
