//! The one matmul every projection and attention product of the model goes through.
//!
//! burn's CUDA matmul reaches ≈ 11 % of an H100 (`reference/gpu_matmul_notes.md`); a faster
//! kernel drops in here, at one place, without touching the model.

use burn::prelude::*;

/// Batched matrix product `lhs · rhs` over the last two dims, broadcasting leading dims.
///
/// # Shapes
/// - `lhs`: `[..., m, k]`, `rhs`: `[..., k, n]` → `[..., m, n]`
pub fn matmul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    lhs.matmul(rhs)
}
