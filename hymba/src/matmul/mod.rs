//! The one matmul every projection of the model goes through, as a backend extension.
//!
//! burn 0.21's CUDA matmul reaches ≈ 87 TFLOP/s in bf16 on an H100, ≈ 11 % of the card
//! (cubek has no Hopper `wgmma` path; `docs/gpu_matmul_notes.md`). In Hymba nearly all
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
//! [`matmul`] is the only entry point the model uses. Two process-wide settings change
//! what it runs on CUDA: [`set_tf32`] (f32 products as TF32, a run-config choice of the
//! trainer) and [`set_cublas`] (burn's kernel instead of cuBLAS, for benchmark comparisons).

pub mod autodiff;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cuda")]
pub mod cublas;
#[cfg(feature = "cube")]
mod fusion;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

/// Whether cuBLAS may run the CUDA products ([`set_cublas`]).
static CUBLAS: AtomicBool = AtomicBool::new(true);
/// Whether cuBLAS may multiply f32 as TF32 ([`set_tf32`]).
static TF32: AtomicBool = AtomicBool::new(false);

/// Benchmark comparison switch: `false` makes CUDA run burn's own matmul kernel for every
/// product (as on every other backend), `true` (the default) cuBLAS where it takes the
/// product. `hymba-eval bench step --matmul burn` uses it to measure what cuBLAS buys; the
/// model and the trainer never turn it off. Call it before the first product: the fusion
/// and autodiff wrappers choose their op per product from it.
pub fn set_cublas(on: bool) {
    CUBLAS.store(on, Ordering::Relaxed);
}

/// Whether [`set_cublas`] leaves cuBLAS on.
pub fn cublas_enabled() -> bool {
    CUBLAS.load(Ordering::Relaxed)
}

/// Lets cuBLAS multiply f32 products as TF32 (10-bit mantissa, f32 accumulation;
/// `CUBLAS_COMPUTE_32F_FAST_TF32`), as burn's own CUDA matmul does, instead of exact f32
/// (the default). bf16 and f16 products are unaffected; so are backends without cuBLAS.
/// hymba-train sets it from the run config's `allow_tf32`.
pub fn set_tf32(allowed: bool) {
    TF32.store(allowed, Ordering::Relaxed);
}

/// Whether [`set_tf32`] allows TF32.
pub fn tf32_allowed() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// A burn backend with the model's matmul. The default body is burn's own `float_matmul`.
pub trait MatmulBackend: Backend {
    /// Whether [`fast_matmul`](Self::fast_matmul) runs something other than burn's
    /// `float_matmul` on this backend. Wrappers (`Fusion`, `Autodiff`) keep burn's own op —
    /// and with it burn's matmul fusion and backward — when it does not.
    fn has_fast_matmul() -> bool {
        false
    }

    /// The multiple that every dimension of a product should be for
    /// [`fast_matmul`](Self::fast_matmul) to run at full speed; 1 when any size is as fast.
    /// On CUDA it is 8: cuBLAS's tensor-core kernels need 16-byte rows (8 bf16 values), and
    /// `cublas::supports` sends products with another dimension to burn's own kernel,
    /// 2–4× slower. The LM head pads its 32,001-word vocabulary to it ([`matmul_wt_padded`]).
    fn matmul_dim_multiple() -> usize {
        1
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

/// [`matmul_wt`] with W's rows — the output's columns — padded with zero rows to a
/// multiple of `multiple`, and those columns cut off the result (a view).
///
/// This is how the tied LM head reaches cuBLAS: with a vocabulary of 32,001 its three
/// products (logits, dX, dW) have a dimension that is no multiple of 8 and run burn's own
/// kernel at about 200 TFLOP/s on an H200; padding the leading dimensions alone does not
/// help, as cuBLAS picks its slow kernels for the size itself (91–148 TFLOP/s,
/// `bench/results/matmul_hymba-125m_bf16_pitched_h200_2026-12-04.json`). Padded to 32,008, every product is
/// aligned: the forward multiplies by seven zero rows, the backward's gradient of the cut
/// is the logits' gradient with seven zero columns, so dX gains nothing from them and dW's
/// extra rows are dropped with the padding. The cost is a copy of W per call and a
/// zero-padded copy of the logits' gradient.
///
/// # Shapes
/// - `x`: `[..., in]`, `w`: `[out, in]` → `[..., out]`
pub fn matmul_wt_padded<B: MatmulBackend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    multiple: usize,
) -> Tensor<B, D> {
    let [out, d_in] = w.dims();
    let padded = out.next_multiple_of(multiple.max(1));
    if padded == out {
        return matmul_wt(x, w);
    }
    // In W's dtype: under mixed precision W is bf16, a fresh tensor the device's default.
    let zeros = Tensor::<B, 2>::zeros([padded - out, d_in], &w.device()).cast(w.dtype());
    matmul_wt(x, Tensor::cat(vec![w, zeros], 0)).narrow(D - 1, 0, out)
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
