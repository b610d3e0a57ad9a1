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
//! override the trait method for their backend without touching the model:
//!
//! | backend | forward | backward |
//! |---|---|---|
//! | `NdArray` (any other backend) | [`reference`] | [`reference_vjp`] (hand-derived, tensor ops) |
//! | `CubeBackend<R, ..>` (CUDA, wgpu) | `cube`: `warp` (CUDA) or `tiled` | the same (chunked recompute) |
//! | `Fusion<B>` (`burn::backend::{Cuda, Wgpu}`) | custom op → `B`'s | custom op → `B`'s |
//! | `Autodiff<B, C>` | `B`'s, recorded as one op | [`ScanBackend::selective_scan_backward`] of `B` |

//!
//! The files, in the direction they import each other: `mod.rs` (this: the trait and the
//! function) ← `reference.rs`, `reference_vjp.rs` (the oracle), `cpu.rs` (ndarray's host
//! loops), `autodiff.rs`, `fusion.rs` (wrappers that record one op); and for CubeCL
//! backends `cube.rs` (the dispatcher) → `warp.rs` (CUDA; its plane operations in
//! `lanes.rs`), `tiled.rs` (portable) → `launch.rs` (what the two share).

pub mod autodiff;
pub mod cpu;
#[cfg(feature = "cube")]
pub mod cube;
#[cfg(feature = "cube")]
pub mod fusion;
#[cfg(feature = "cube")]
pub mod lanes;
#[cfg(feature = "cube")]
pub mod launch;
pub mod reference;
pub mod reference_vjp;
#[cfg(feature = "cube")]
pub mod tiled;
#[cfg(feature = "cube")]
pub mod warp;

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
    /// To backend primitives (what [`ScanBackend`] methods take).
    pub fn into_primitives(self) -> ScanPrimitives<B> {
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

/// Gradients of a scan's inputs, field by field (each has its input's shape and dtype;
/// `initial_state` is `Some` exactly when the input had one).
pub type ScanGrads<B> = ScanPrimitives<B>;

/// Backend extension for the selective scan. The default bodies are the tensor-op reference,
/// which is correct on every backend; GPU backends override them with kernels.
pub trait ScanBackend: Backend {
    /// Runs the scan; returns `(y [batch, d_inner, T], last state [batch, d_inner, S])`.
    fn selective_scan(input: ScanPrimitives<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::selective_scan_reference_primitives(input)
    }

    /// The scan's vector-Jacobian product: given the inputs and the gradients of the outputs
    /// (`dy [batch, d_inner, T]`, and `d_last_state [batch, d_inner, S]` when the last state
    /// was used), returns the gradients of every input. `Autodiff<Self>` calls it in its
    /// backward pass. The default body is the hand-derived tensor-op VJP
    /// ([`reference_vjp::selective_scan_reference_backward`]).
    fn selective_scan_backward(
        input: ScanPrimitives<Self>,
        dy: FloatTensor<Self>,
        d_last_state: Option<FloatTensor<Self>>,
    ) -> ScanGrads<Self> {
        reference_vjp::selective_scan_reference_backward(input, dy, d_last_state)
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

/// The backward pass of [`selective_scan`] as a function (what `Autodiff` calls, exposed for
/// tests and benchmarks): the gradients of every input, packed in a [`ScanInput`] (field
/// `u` holds dL/du, and so on), given `dy` and optionally `d_last_state`.
pub fn selective_scan_backward<B: ScanBackend>(
    input: ScanInput<B>,
    dy: Tensor<B, 3>,
    d_last_state: Option<Tensor<B, 3>>,
) -> ScanInput<B> {
    B::selective_scan_backward(
        input.into_primitives(),
        dy.into_primitive().tensor(),
        d_last_state.map(|t| t.into_primitive().tensor()),
    )
    .into_tensors()
}

/// Chooses the CubeCL scan kernels by name (`auto`, `warp`, `tiled`; see `cube::ScanKernel`)
/// for every later call, process-wide: `hymba-eval bench scan --kernel` compares the
/// designs with it. Returns false for an unknown name, and in a build without a CubeCL
/// backend (where there is only the reference). It exists outside the `cube` feature so
/// that tools built against any backend set can call it.
pub fn select_kernel(name: &str) -> bool {
    #[cfg(feature = "cube")]
    {
        match cube::ScanKernel::from_name(name) {
            Some(k) => {
                cube::select_kernel(k);
                true
            }
            None => false,
        }
    }
    #[cfg(not(feature = "cube"))]
    {
        let _ = name;
        false
    }
}

/// ndarray f32: the scan as host loops ([`cpu`]).
#[cfg(feature = "ndarray")]
impl ScanBackend for burn::backend::NdArray<f32> {
    fn selective_scan(input: ScanPrimitives<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        cpu::selective_scan(input)
    }

    fn selective_scan_backward(
        input: ScanPrimitives<Self>,
        dy: FloatTensor<Self>,
        d_last_state: Option<FloatTensor<Self>>,
    ) -> ScanGrads<Self> {
        cpu::selective_scan_backward(input, dy, d_last_state)
    }
}

/// f64 on the CPU: used by the finite-difference gradient checks.
#[cfg(feature = "ndarray")]
impl ScanBackend for burn::backend::NdArray<f64> {}
