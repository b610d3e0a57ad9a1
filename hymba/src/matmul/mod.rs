//! The one matmul every projection of the model goes through, as a backend extension.
//!
//! burn 0.21's CUDA matmul reaches ≈ 87 TFLOP/s in bf16 on an H100, ≈ 11 % of the card
//! (cubek has no Hopper `wgmma` path; `reference/gpu_matmul_notes.md`). In Hymba nearly all
//! training FLOPs are these products (the fused input projection, out_proj, the SwiGLU FFN,
//! the tied LM head), so on CUDA they run on cuBLAS instead; every other backend keeps
//! burn's own kernel.
//!
//! | backend | [`MatmulBackend::fast_matmul`] |
//! |---|---|
//! | `NdArray`, wgpu (`CubeBackend<WgpuRuntime>` and its `Fusion`) | burn's `float_matmul` |
//! | `CubeBackend<CudaRuntime>` | cuBLAS `GemmEx` (`cublas`), f32 accumulation |
//! | `Fusion<CubeBackend<CudaRuntime>>` (`burn::backend::Cuda`) | a custom fusion op → the above |
//! | `Autodiff<B>` | one node whose backward runs `dX = dY·Wᵀ`, `dW = Xᵀ·dY` through `B` |
//!
//! [`matmul`] is the only entry point the model uses.

pub mod autodiff;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cuda")]
pub mod cublas;
#[cfg(feature = "cube")]
mod fusion;

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

/// A burn backend with the model's matmul. The default body is burn's own `float_matmul`.
pub trait MatmulBackend: Backend {
    /// Whether [`fast_matmul`](Self::fast_matmul) runs something other than burn's
    /// `float_matmul` on this backend. Wrappers (`Fusion`, `Autodiff`) keep burn's own op —
    /// and with it burn's matmul fusion and backward — when it does not.
    fn has_fast_matmul() -> bool {
        false
    }

    /// `lhs · rhs` over the last two dims, broadcasting leading dims (as `float_matmul`).
    fn fast_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
}

/// Batched matrix product `lhs · rhs` over the last two dims, broadcasting leading dims;
/// runs [`MatmulBackend::fast_matmul`].
///
/// # Shapes
/// - `lhs`: `[..., m, k]`, `rhs`: `[..., k, n]` → `[..., m, n]`
pub fn matmul<B: MatmulBackend, const D: usize>(
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
) -> Tensor<B, D> {
    let op = |l: Tensor<B, D>, r: Tensor<B, D>| -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(B::fast_matmul(
            l.into_primitive().tensor(),
            r.into_primitive().tensor(),
        )))
    };
    // A batch of single rows against a weight broadcast over that batch (every decode step:
    // `[b, 1, k] · [1, k, n]`) is one `[1, b, k] · [1, k, n]` product, as `Tensor::matmul`
    // does it. Besides being faster, this matters: burn 0.21's raw `float_matmul` on wgpu
    // gets the batched vector × broadcast matrix case wrong (max |diff| 0.69 on the tiny
    // model's decode logits, `tests/wgpu.rs`).
    if D >= 3 {
        let (batch, rows) = (D - 3, D - 2);
        let (l, r) = (lhs.dims(), rhs.dims());
        if l[rows] == 1 && l[batch] > 1 && r[batch] == 1 {
            return op(lhs.swap_dims(batch, rows), rhs).swap_dims(batch, rows);
        }
    }
    op(lhs, rhs)
}

/// `x · Wᵀ` for a weight stored `[out, in]` (the HF layout of every projection and of the
/// tied embedding): what `Linear` and the LM head compute.
///
/// x is flattened to `[rows, in]` and multiplied by the transposed *view* of W, so the weight
/// is never reshaped: a reshape of a transposed tensor is a copy on the CPU backend, and
/// giving W a unit batch dim was one too. Flattening x is free where x is contiguous.
///
/// # Shapes
/// - `x`: `[..., in]`, `w`: `[out, in]` → `[..., out]`
pub fn matmul_wt<B: MatmulBackend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = x.shape().num_elements() / d_in.max(1);
    dims[D - 1] = w.dims()[0];
    matmul(x.reshape([rows, d_in]), w.transpose()).reshape(dims)
}

#[cfg(feature = "ndarray")]
mod cpu;

/// f32 on the CPU: products on strided views ([`cpu`]), so transposed weights are not copied.
#[cfg(feature = "ndarray")]
impl MatmulBackend for burn::backend::NdArray<f32> {
    fn has_fast_matmul() -> bool {
        true
    }

    fn fast_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        cpu::matmul(lhs, rhs)
    }
}

/// f64 on the CPU (the precision-check backend) runs the same strided product, so that the
/// CPU tests check it and this module's backward node ([`autodiff`]) against burn's
/// differentiable matmul in f64 (`tests/matmul.rs`).
#[cfg(feature = "ndarray")]
impl MatmulBackend for burn::backend::NdArray<f64> {
    fn has_fast_matmul() -> bool {
        true
    }

    fn fast_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        cpu::matmul(lhs, rhs)
    }
}
