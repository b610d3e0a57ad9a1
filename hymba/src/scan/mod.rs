//! The selective scan of the SSM heads (Mamba-1, spec §2.3 "SSM branch" step 6):
//!
//! ```text
//! Δ_t = softplus(delta_t + delta_bias)
//! h_t = exp(Δ_t·A) ⊙ h_{t−1} + Δ_t·B_t·u_t          (per channel c, state s)
//! y_t = Σ_s C_t[s]·h_t[s] + D·u_t,   y_t ← y_t · silu(z_t)
//! ```
//!
//! The model calls it through one function, [`selective_scan`], which dispatches to the
//! backend extension [`ScanBackend`]. Its default body is the tensor-op reference in
//! [`reference`] — the CPU path and the oracle every kernel is tested against. GPU kernels
//! override the trait method for their backend without touching the model.

pub mod reference;

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

/// Inputs of one scan, as the reference `selective_scan_fn` takes them.
///
/// # Shapes
/// - `u`, `delta`, `z`: `[batch, d_inner, T]`
/// - `a`: `[d_inner, S]` (A = −exp(A_log), f32), `b`, `c`: `[batch, S, T]`
/// - `d`, `delta_bias`: `[d_inner]`
/// - `initial_state`: `[batch, d_inner, S]` (zeros when `None`): the state carried in from a
///   cache, so that a prompt can be scanned in pieces and decode is a scan of length 1.
#[derive(Debug, Clone)]
pub struct ScanInput<B: Backend> {
    /// Input x after the conv (u).
    pub u: Tensor<B, 3>,
    /// Δ before bias and softplus.
    pub delta: Tensor<B, 3>,
    /// State matrix A (negative), per channel.
    pub a: Tensor<B, 2>,
    /// Input-dependent B_t, shared across channels.
    pub b: Tensor<B, 3>,
    /// Input-dependent C_t, shared across channels.
    pub c: Tensor<B, 3>,
    /// Skip connection D.
    pub d: Tensor<B, 1>,
    /// Gate z (y is multiplied by silu(z)).
    pub z: Tensor<B, 3>,
    /// Bias added to Δ before softplus (`dt_proj.bias`).
    pub delta_bias: Tensor<B, 1>,
    /// State before the first step.
    pub initial_state: Option<Tensor<B, 3>>,
}

/// The same inputs as backend primitives, for [`ScanBackend`] implementations.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct ScanPrimitives<B: Backend> {
    pub u: FloatTensor<B>,
    pub delta: FloatTensor<B>,
    pub a: FloatTensor<B>,
    pub b: FloatTensor<B>,
    pub c: FloatTensor<B>,
    pub d: FloatTensor<B>,
    pub z: FloatTensor<B>,
    pub delta_bias: FloatTensor<B>,
    pub initial_state: Option<FloatTensor<B>>,
}

impl<B: Backend> ScanInput<B> {
    fn into_primitives(self) -> ScanPrimitives<B> {
        ScanPrimitives {
            u: self.u.into_primitive().tensor(),
            delta: self.delta.into_primitive().tensor(),
            a: self.a.into_primitive().tensor(),
            b: self.b.into_primitive().tensor(),
            c: self.c.into_primitive().tensor(),
            d: self.d.into_primitive().tensor(),
            z: self.z.into_primitive().tensor(),
            delta_bias: self.delta_bias.into_primitive().tensor(),
            initial_state: self.initial_state.map(|h| h.into_primitive().tensor()),
        }
    }
}

impl<B: Backend> ScanPrimitives<B> {
    /// Back to tensors (used by default bodies written in tensor ops).
    pub fn into_tensors(self) -> ScanInput<B> {
        fn t<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
            Tensor::from_primitive(TensorPrimitive::Float(p))
        }
        ScanInput {
            u: t(self.u),
            delta: t(self.delta),
            a: t(self.a),
            b: t(self.b),
            c: t(self.c),
            d: t(self.d),
            z: t(self.z),
            delta_bias: t(self.delta_bias),
            initial_state: self.initial_state.map(t),
        }
    }
}

/// Backend extension for the selective scan. The default body is the tensor-op reference,
/// which is correct on every backend (and differentiable under `Autodiff`); GPU backends
/// override it with a kernel.
pub trait ScanBackend: Backend {
    /// Runs the scan; returns `(y [batch, d_inner, T], last state [batch, d_inner, S])`.
    fn selective_scan(input: ScanPrimitives<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (y, h) = reference::selective_scan_reference(
            input.into_tensors(),
            reference::DEFAULT_CHUNK,
        );
        (y.into_primitive().tensor(), h.into_primitive().tensor())
    }
}

/// The selective scan the SSM heads call; see the module docs for the recurrence.
///
/// Returns `(y, last_state)` with `y: [batch, d_inner, T]` (D skip and silu(z) gate applied)
/// and `last_state: [batch, d_inner, S]` (for the cache).
pub fn selective_scan<B: ScanBackend>(input: ScanInput<B>) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let (y, h) = B::selective_scan(input.into_primitives());
    (
        Tensor::from_primitive(TensorPrimitive::Float(y)),
        Tensor::from_primitive(TensorPrimitive::Float(h)),
    )
}

#[cfg(feature = "ndarray")]
impl ScanBackend for burn::backend::NdArray<f32> {}

/// f64 on the CPU: used by the finite-difference gradient checks.
#[cfg(feature = "ndarray")]
impl ScanBackend for burn::backend::NdArray<f64> {}

impl<B: ScanBackend, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy>
    ScanBackend for burn::backend::Autodiff<B, C>
{
}
