//! The tensor-op reference of the selective scan: chunked, exact, differentiable, and the
//! oracle every scan kernel is compared against.
//!
//! Within a chunk of `L` steps the recurrence is unrolled in closed form (the "segment sum"
//! view of an SSM): with `cum_t = Σ_{τ≤t} Δ_τ·A` (non-increasing, since A < 0 and Δ > 0),
//!
//! ```text
//! h_t = exp(cum_t)·h_0 + Σ_{τ≤t} exp(cum_t − cum_τ)·Δ_τ·B_τ·u_τ
//! ```
//!
//! Every exponent is ≤ 0, so nothing overflows. Chunks are chained through their last
//! state. Memory is O(batch · d_inner · S · L²) per chunk, which keeps this a CPU and test
//! path; GPU backends replace it with a kernel (`ScanBackend`).

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;

use super::{ScanInput, ScanPrimitives};
use crate::precision::{silu, upcast};

/// Chunk length of the reference scan.
pub const DEFAULT_CHUNK: usize = 1;

/// `softplus(x) = log(1 + eˣ)`, written as `max(x, 0) + log1p(e^{−|x|})` so that it never
/// overflows (the kernel's `x > 20 ? x : log1p(exp(x))` agrees to f32 precision).
pub fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

/// Every state of `h_t = exp(a_t)·h_{t−1} + x_t` (t = 0..T−1) from `h_{−1} = h0`.
///
/// `chunk = 1` steps through time one element-wise update at a time: the fastest form on a
/// CPU. Larger chunks unroll `chunk` steps in closed form, `h_t = exp(cum_t)·h_0 +
/// Σ_{τ≤t} exp(cum_t − cum_τ)·x_τ` with `cum_t = Σ_{τ≤t} a_τ` (every exponent ≤ 0 when
/// `a ≤ 0`, so nothing overflows), trading O(chunk²) memory for fewer, larger ops.
///
/// # Shapes
/// - `a`, `x`: `[batch, d, S, T]`, `h0`: `[batch, d, S]` → `[batch, d, S, T]`
pub fn linear_scan_states<B: Backend>(
    a: Tensor<B, 4>,
    x: Tensor<B, 4>,
    h0: Tensor<B, 3>,
    chunk: usize,
) -> Tensor<B, 4> {
    let [batch, d, s, t] = a.dims();
    let device = a.device();
    let chunk = chunk.max(1);
    let mut h = h0;
    if chunk == 1 {
        // Time-major, contiguous rows: each step is three small element-wise ops.
        let n = batch * d * s;
        let time_major = |x: Tensor<B, 4>| x.permute([3, 0, 1, 2]).reshape([t, n]);
        let (a, x) = (time_major(a), time_major(x));
        let mut h = h.reshape([1, n]);
        let mut out = Vec::with_capacity(t);
        for i in 0..t {
            h = a.clone().narrow(0, i, 1).exp() * h + x.clone().narrow(0, i, 1);
            out.push(h.clone());
        }
        return Tensor::cat(out, 0)
            .reshape([t, batch, d, s])
            .permute([1, 2, 3, 0]);
    }
    let mut out = Vec::with_capacity(t.div_ceil(chunk));
    for start in (0..t).step_by(chunk) {
        let l = chunk.min(t - start);
        let cum = a.clone().narrow(3, start, l).cumsum(3);
        let seg = cum.clone().unsqueeze_dim::<5>(4) - cum.clone().unsqueeze_dim::<5>(3);
        let future = Tensor::<B, 2, Bool>::tril_mask([l, l], 0, &device) // true above the diagonal
            .reshape([1, 1, 1, l, l])
            .expand([batch, d, s, l, l]);
        let decay = seg.mask_fill(future, f32::NEG_INFINITY).exp();
        let xc = x.clone().narrow(3, start, l).unsqueeze_dim::<5>(4);
        let hs = decay.matmul(xc).squeeze_dim::<4>(4) + cum.exp() * h.unsqueeze_dim::<4>(3);
        h = hs.clone().narrow(3, l - 1, 1).squeeze_dim::<3>(3);
        out.push(hs);
    }
    Tensor::cat(out, 3)
}

/// Runs the scan (see [`linear_scan_states`] for `chunk`); returns `(y, last_state)` in
/// `u`'s dtype.
pub fn selective_scan_reference<B: Backend>(
    input: ScanInput<B>,
    chunk: usize,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let dtype = input.u.dtype();
    let u = upcast(input.u);
    let [batch, channels, len] = u.dims();
    let a = upcast(input.a);
    let states = a.dims()[1];
    let device = u.device();
    let bias = upcast(input.delta_bias).reshape([1, channels, 1]);
    let delta = softplus(upcast(input.delta) + bias);
    let h0 = match input.initial_state {
        Some(h) => upcast(h),
        None => Tensor::zeros([batch, channels, states], &device),
    };
    if chunk > 1 {
        let log_decay = delta.clone().unsqueeze_dim::<4>(2) * a.reshape([1, channels, states, 1]);
        let b = upcast(input.b).unsqueeze_dim::<4>(1); // [b, 1, S, T]
        let c = upcast(input.c).unsqueeze_dim::<4>(1);
        let x = b * (delta * u.clone()).unsqueeze_dim::<4>(2);
        let hs = linear_scan_states(log_decay, x, h0, chunk);
        let last = hs.clone().narrow(3, len - 1, 1).squeeze_dim::<3>(3);
        let y =
            (hs * c).sum_dim(2).squeeze_dim::<3>(2) + u * upcast(input.d).reshape([1, channels, 1]);
        let y = y * silu(upcast(input.z));
        return (y.cast(dtype), last.cast(dtype));
    }
    // Step by step, time-major, without materialising the [batch, d, S, T] states.
    let time_major = |x: Tensor<B, 3>| {
        let [b0, w, t0] = x.dims();
        x.permute([2, 0, 1]).reshape([t0, b0, w])
    };
    let (dt_t, du_t) = (time_major(delta.clone()), time_major(delta * u.clone()));
    let (b_t, c_t) = (time_major(upcast(input.b)), time_major(upcast(input.c)));
    let a = a.reshape([1, channels, states]);
    let mut h = h0;
    let mut ys = Vec::with_capacity(len);
    for i in 0..len {
        let dt = dt_t.clone().narrow(0, i, 1).reshape([batch, channels, 1]);
        let du = du_t.clone().narrow(0, i, 1).reshape([batch, channels, 1]);
        let bi = b_t.clone().narrow(0, i, 1).reshape([batch, 1, states]);
        let ci = c_t.clone().narrow(0, i, 1).reshape([batch, 1, states]);
        h = (dt * a.clone()).exp() * h + du * bi;
        ys.push((h.clone() * ci).sum_dim(2));
    }
    let y = Tensor::cat(ys, 2) + u * upcast(input.d).reshape([1, channels, 1]);
    let y = y * silu(upcast(input.z));
    let last = h;
    (y.cast(dtype), last.cast(dtype))
}

/// [`selective_scan_reference`] on backend primitives (the default body of
/// [`ScanBackend::selective_scan`](super::ScanBackend::selective_scan)).
pub fn selective_scan_reference_primitives<B: Backend>(
    input: ScanPrimitives<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (y, h) = selective_scan_reference(input.into_tensors(), DEFAULT_CHUNK);
    (y.into_primitive().tensor(), h.into_primitive().tensor())
}
