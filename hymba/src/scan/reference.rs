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

use super::ScanInput;
use crate::precision::{silu, upcast};

/// Chunk length of the reference scan.
pub const DEFAULT_CHUNK: usize = 16;

/// `softplus(x) = log(1 + eˣ)`, written as `max(x, 0) + log1p(e^{−|x|})` so that it never
/// overflows (the kernel's `x > 20 ? x : log1p(exp(x))` agrees to f32 precision).
pub fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

/// Runs the scan in chunks of `chunk` steps; returns `(y, last_state)` in `u`'s dtype.
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
    let (b, c) = (upcast(input.b), upcast(input.c));
    let mut h = match input.initial_state {
        Some(h) => upcast(h),
        None => Tensor::zeros([batch, channels, states], &device),
    };
    let a = a.reshape([1, channels, states, 1]);
    let chunk = chunk.max(1);
    let mut ys = Vec::with_capacity(len.div_ceil(chunk));
    for start in (0..len).step_by(chunk) {
        let l = chunk.min(len - start);
        let dt = delta.clone().narrow(2, start, l); // [b, d, l]
        let uc = u.clone().narrow(2, start, l);
        let bc = b.clone().narrow(2, start, l).unsqueeze_dim::<4>(1); // [b, 1, s, l]
        let cc = c.clone().narrow(2, start, l).unsqueeze_dim::<4>(1);
        let cum = (dt.clone().unsqueeze_dim::<4>(2) * a.clone()).cumsum(3); // [b, d, s, l]
        // decay[t, τ] = exp(cum_t − cum_τ) for τ ≤ t, 0 above the diagonal.
        let seg = cum.clone().unsqueeze_dim::<5>(4) - cum.clone().unsqueeze_dim::<5>(3);
        let future = Tensor::<B, 2, Bool>::tril_mask([l, l], 0, &device) // true above the diagonal
            .reshape([1, 1, 1, l, l])
            .expand([batch, channels, states, l, l]);
        let decay = seg.mask_fill(future, f32::NEG_INFINITY).exp();
        let dbu = (dt * uc).unsqueeze_dim::<4>(2) * bc; // [b, d, s, l]
        let hs = decay.matmul(dbu.unsqueeze_dim::<5>(4)).squeeze_dim::<4>(4)
            + cum.exp() * h.unsqueeze_dim::<4>(3);
        ys.push((hs.clone() * cc).sum_dim(2).squeeze_dim::<3>(2));
        h = hs.narrow(3, l - 1, 1).squeeze_dim::<3>(3);
    }
    let y = Tensor::cat(ys, 2) + u * upcast(input.d).reshape([1, channels, 1]);
    let y = y * silu(upcast(input.z));
    (y.cast(dtype), h.cast(dtype))
}
