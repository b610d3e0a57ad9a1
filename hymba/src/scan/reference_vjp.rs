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
//! Both recurrences (h forward again, then g backward) run step by step.

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorMetadata, TensorPrimitive};

use super::{ScanGrads, ScanPrimitives};
use crate::precision::upcast;

/// σ(x) as `(1 + tanh(x/2)) / 2`: stable, and exact in the tensor's own dtype.
fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.div_scalar(2.0).tanh().add_scalar(1.0).div_scalar(2.0)
}

/// The reference backward pass: gradients of every scan input given `dy` (and
/// `d_last_state`), by the formulas in the module docs. The default body of
/// [`ScanBackend::selective_scan_backward`](super::ScanBackend::selective_scan_backward),
/// and the oracle of the backward kernels.
///
/// Hand-derived, not `backward()` under a nested `Autodiff`: that deadlocks inside an outer
/// backward step in burn 0.21 (tracel-ai/burn#5193). Runs step by step over time-major slices
/// (small element-wise ops, no `[batch, d, S, T]` temporaries besides the stored states),
/// which is what a CPU does best.
pub fn selective_scan_reference_backward<B: Backend>(
    input: ScanPrimitives<B>,
    dy: FloatTensor<B>,
    d_last_state: Option<FloatTensor<B>>,
) -> ScanGrads<B> {
    fn t<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
        upcast(Tensor::from_primitive(TensorPrimitive::Float(p)))
    }
    fn p<B: Backend, const D: usize>(x: Tensor<B, D>, like: DType) -> FloatTensor<B> {
        x.cast(like).into_primitive().tensor()
    }
    /// `[b, w, T]` → `T` contiguous `[b, w, 1]` slices (as a `[T, b, w]` tensor).
    fn time_major<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, w, len] = x.dims();
        x.permute([2, 0, 1]).reshape([len, b, w])
    }
    fn at<B: Backend, const D: usize>(
        x: &Tensor<B, 3>,
        i: usize,
        shape: [usize; D],
    ) -> Tensor<B, D> {
        x.clone().narrow(0, i, 1).reshape(shape)
    }
    let (dtype, a_dtype, v_dtype) = (input.u.dtype(), input.a.dtype(), input.d.dtype());
    let had_state = input.initial_state.is_some();
    let u: Tensor<B, 3> = t(input.u);
    let [batch, d, len] = u.dims();
    let a: Tensor<B, 2> = t(input.a);
    let s = a.dims()[1];
    let device = u.device();
    let pre = t::<B, 3>(input.delta) + t::<B, 1>(input.delta_bias).reshape([1, d, 1]);
    let dt = super::reference::softplus(pre.clone());
    let a3 = a.reshape([1, d, s]);
    let d_skip: Tensor<B, 1> = t(input.d);
    let z: Tensor<B, 3> = t(input.z);
    let dy: Tensor<B, 3> = t(dy);
    let h0: Tensor<B, 3> = input
        .initial_state
        .map_or_else(|| Tensor::zeros([batch, d, s], &device), t);
    let (dt_t, u_t) = (time_major(dt.clone()), time_major(u.clone()));
    let (b_t, c_t) = (time_major(t(input.b)), time_major(t(input.c)));
    let (sd, ss) = ([batch, d, 1], [batch, 1, s]);

    // Forward again, keeping every state and y' (the output before the gate).
    let mut hs = Vec::with_capacity(len);
    let mut y_pre = Vec::with_capacity(len);
    let mut h = h0.clone();
    for i in 0..len {
        let dti = at(&dt_t, i, sd);
        h = (dti.clone() * a3.clone()).exp() * h + dti * at(&u_t, i, sd) * at(&b_t, i, ss);
        y_pre.push((h.clone() * at(&c_t, i, ss)).sum_dim(2));
        hs.push(h.clone());
    }
    let y_pre = Tensor::cat(y_pre, 2) + u.clone() * d_skip.clone().reshape([1, d, 1]);
    let sig = sigmoid(z.clone());
    let dsilu = sig.clone() * (z.clone() * sig.clone().neg().add_scalar(1.0)).add_scalar(1.0);
    let dz = dy.clone() * y_pre * dsilu;
    let dyp = dy * z * sig; // ∂L/∂y'
    let dyp_t = time_major(dyp.clone());

    // Reverse: g_t = ā_{t+1}·g_{t+1} + dy'_t·C_t.
    let mut g: Tensor<B, 3> = d_last_state.map_or_else(|| Tensor::zeros([batch, d, s], &device), t);
    let mut next_decay: Option<Tensor<B, 3>> = None;
    let mut da = Tensor::<B, 3>::zeros([batch, d, s], &device);
    let (mut db, mut dc, mut du_s, mut d_delta) = (vec![], vec![], vec![], vec![]);
    for i in (0..len).rev() {
        let (dti, ui, bi) = (at(&dt_t, i, sd), at(&u_t, i, sd), at(&b_t, i, ss));
        let dypi = at(&dyp_t, i, sd);
        if let Some(decay) = next_decay.take() {
            g = decay * g;
        }
        g = g + dypi.clone() * at(&c_t, i, ss);
        let decay = (dti.clone() * a3.clone()).exp();
        let h_prev = if i > 0 { hs[i - 1].clone() } else { h0.clone() };
        let gh = g.clone() * decay.clone() * h_prev; // g_t·ā_t·h_{t−1}
        db.push((g.clone() * (dti.clone() * ui.clone())).sum_dim(1));
        dc.push((hs[i].clone() * dypi).sum_dim(1));
        du_s.push((g.clone() * bi.clone()).sum_dim(2));
        d_delta.push((gh.clone() * a3.clone() + g.clone() * bi * ui).sum_dim(2));
        da = da + gh * dti;
        next_decay = Some(decay);
    }
    let dh0 = had_state.then(|| next_decay.map_or(g.clone(), |decay| decay * g));
    let time = |mut v: Vec<Tensor<B, 3>>, dim: usize| {
        v.reverse();
        Tensor::cat(v, dim)
    };
    let du = dyp.clone() * d_skip.reshape([1, d, 1]) + time(du_s, 2) * dt;
    let d_pre = time(d_delta, 2) * sigmoid(pre);
    let db = time(db, 1).swap_dims(1, 2).reshape([batch, s, len]);
    let dc = time(dc, 1).swap_dims(1, 2).reshape([batch, s, len]);
    let dd = (dyp * u).sum_dim(2).sum_dim(0).reshape([d]);
    let dbias = d_pre.clone().sum_dim(2).sum_dim(0).reshape([d]);
    ScanPrimitives {
        u: p(du, dtype),
        delta: p(d_pre, dtype),
        a: p(da.sum_dim(0).reshape([d, s]), a_dtype),
        b: p(db, dtype),
        c: p(dc, dtype),
        d: p(dd, v_dtype),
        z: p(dz, dtype),
        delta_bias: p(dbias, v_dtype),
        initial_state: dh0.map(|h| p(h, dtype)),
    }
}
