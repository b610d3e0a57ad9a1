//! The scan's backward pass written out in tensor ops (no autodiff): the CPU path of
//! `ScanBackend::selective_scan_backward` and the oracle for backward kernels.
//!
//! Why not recompute the reference under `Autodiff` and call `backward()`? Because a
//! `backward()` inside another backward step deadlocks burn 0.21's autodiff graph lock
//! (tracel-ai/burn#5193). So the gradients are derived by hand. With `Δ_t = softplus(δ_t +
//! bias)`, `ā_t = exp(Δ_t·A)`, `h_t = ā_t·h_{t−1} + Δ_t·B_t·u_t`, `y'_t = Σ_s C_t·h_t + D·u_t`,
//! `y_t = y'_t·silu(z_t)`, and `g_t = ∂L/∂h_t`, which obeys the reverse recurrence
//! `g_t = ā_{t+1}·g_{t+1} + dy'_t·C_t` (plus `∂L/∂h_last` at the end):
//!
//! ```text
//! dz = dy·y'·silu'(z)          dD = Σ dy'·u          du = dy'·D + Δ·Σ_s g·B
//! dB_t = Σ_d g_t·Δ_t·u_t       dC_t = Σ_d dy'_t·h_t
//! dΔ_t = Σ_s g_t·(A·ā_t·h_{t−1} + B_t·u_t)            dδ = dΔ·σ(δ + bias)
//! dA = Σ_{b,t} g_t·ā_t·h_{t−1}·Δ_t                     dh_0 = ā_1·g_1
//! ```
//!
//! Both recurrences (h forward, g backward on the time-reversed sequence) run through the
//! reference's [`linear_scan_states`].

use burn::prelude::*;
use burn::tensor::{TensorMetadata, TensorPrimitive};
use burn::tensor::ops::FloatTensor;

use super::{ScanGrads, ScanPrimitives};
use super::reference::linear_scan_states;
use crate::precision::upcast;

/// σ(x) as `(1 + tanh(x/2)) / 2`: stable, and exact in the tensor's own dtype.
fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.div_scalar(2.0).tanh().add_scalar(1.0).div_scalar(2.0)
}

/// Gradients of every scan input given `dy` (and `d_last_state`), by the formulas in the
/// module docs.
pub fn selective_scan_vjp<B: Backend>(
    input: ScanPrimitives<B>,
    dy: FloatTensor<B>,
    d_last_state: Option<FloatTensor<B>>,
    chunk: usize,
) -> ScanGrads<B> {
    fn t<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
        upcast(Tensor::from_primitive(TensorPrimitive::Float(p)))
    }
    fn p<B: Backend, const D: usize>(x: Tensor<B, D>, like: burn::tensor::DType) -> FloatTensor<B> {
        x.cast(like).into_primitive().tensor()
    }
    let dtype = input.u.dtype();
    let a_dtype = input.a.dtype();
    let v_dtype = input.d.dtype();
    let had_state = input.initial_state.is_some();
    let u: Tensor<B, 3> = t(input.u);
    let [batch, d, len] = u.dims();
    let a: Tensor<B, 2> = t(input.a);
    let s = a.dims()[1];
    let device = u.device();
    let bias = t::<B, 1>(input.delta_bias).reshape([1, d, 1]);
    let pre = t::<B, 3>(input.delta) + bias;
    let dt = super::reference::softplus(pre.clone());
    let a4 = a.reshape([1, d, s, 1]);
    let log_decay = dt.clone().unsqueeze_dim::<4>(2) * a4.clone(); // Δ·A, [b, d, S, T]
    let b4 = t::<B, 3>(input.b).unsqueeze_dim::<4>(1); // [b, 1, S, T]
    let c4 = t::<B, 3>(input.c).unsqueeze_dim::<4>(1);
    let dtu = dt.clone() * u.clone();
    let h0: Tensor<B, 3> = input
        .initial_state
        .map_or_else(|| Tensor::zeros([batch, d, s], &device), t);
    let hs = linear_scan_states(
        log_decay.clone(),
        b4.clone() * dtu.clone().unsqueeze_dim::<4>(2),
        h0.clone(),
        chunk,
    );
    let d_skip: Tensor<B, 1> = t(input.d);
    let y_pre = (hs.clone() * c4.clone()).sum_dim(2).squeeze_dim::<3>(2)
        + u.clone() * d_skip.clone().reshape([1, d, 1]);
    let z: Tensor<B, 3> = t(input.z);
    let sig = sigmoid(z.clone());
    let silu = z.clone() * sig.clone();
    let dsilu = sig.clone() * (z * (sig.neg().add_scalar(1.0))).add_scalar(1.0);
    let dy: Tensor<B, 3> = t(dy);
    let dz = dy.clone() * y_pre * dsilu;
    let dyp = dy * silu; // ∂L/∂y'

    // g_t = ā_{t+1}·g_{t+1} + dy'_t·C_t, run forward on the reversed sequence.
    let next = Tensor::cat(
        vec![
            log_decay.clone().narrow(3, 1, len - 1),
            Tensor::zeros([batch, d, s, 1], &device),
        ],
        3,
    );
    let e = dyp.clone().unsqueeze_dim::<4>(2) * c4;
    let dh_last: Tensor<B, 3> = d_last_state.map_or_else(|| Tensor::zeros([batch, d, s], &device), t);
    let g = linear_scan_states(next.flip([3]), e.flip([3]), dh_last, chunk).flip([3]);

    let decay = log_decay.exp();
    let h_prev = Tensor::cat(vec![h0.unsqueeze_dim::<4>(3), hs.clone().narrow(3, 0, len - 1)], 3);
    let gh = g.clone() * decay.clone() * h_prev; // g_t·ā_t·h_{t−1}
    let du = dyp.clone() * d_skip.reshape([1, d, 1])
        + (g.clone() * b4.clone()).sum_dim(2).squeeze_dim::<3>(2) * dt.clone();
    let d_delta = (gh.clone() * a4 + g.clone() * b4 * u.clone().unsqueeze_dim::<4>(2))
        .sum_dim(2)
        .squeeze_dim::<3>(2);
    let d_pre = d_delta * sigmoid(pre);
    let da = (gh * dt.clone().unsqueeze_dim::<4>(2))
        .sum_dim(3)
        .sum_dim(0)
        .reshape([d, s]);
    let db = (g.clone() * dtu.unsqueeze_dim::<4>(2)).sum_dim(1).reshape([batch, s, len]);
    let dc = (hs * dyp.clone().unsqueeze_dim::<4>(2)).sum_dim(1).reshape([batch, s, len]);
    let dd = (dyp * u).sum_dim(2).sum_dim(0).reshape([d]);
    let dbias = d_pre.clone().sum_dim(2).sum_dim(0).reshape([d]);
    let dh0 = had_state.then(|| {
        (decay.narrow(3, 0, 1) * g.narrow(3, 0, 1)).squeeze_dim::<3>(3)
    });
    ScanPrimitives {
        u: p(du, dtype),
        delta: p(d_pre, dtype),
        a: p(da, a_dtype),
        b: p(db, dtype),
        c: p(dc, dtype),
        d: p(dd, v_dtype),
        z: p(dz, dtype),
        delta_bias: p(dbias, v_dtype),
        initial_state: dh0.map(|h| p(h, dtype)),
    }
}
