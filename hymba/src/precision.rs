//! Compute-precision helpers: the reference computes norms, softmax-adjacent math and the
//! selective scan in f32 whatever the storage dtype (spec §2.3 "Numerics").

use burn::prelude::*;
use burn::tensor::DType;

/// Upcasts half-precision (bf16/f16) tensors to f32; f32 and f64 are left as they are, so
/// an f64 backend (used by the finite-difference tests) keeps its precision.
pub fn upcast<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.cast(DType::F32),
        _ => x,
    }
}

/// `silu(x) = x·σ(x)` with σ written as `(1 + tanh(x/2)) / 2`: stable for any x, and exact
/// in the tensor's own dtype (burn's `sigmoid` rounds through f32, which would blur the f64
/// finite-difference checks of the scan).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let sigma = x
        .clone()
        .div_scalar(2.0)
        .tanh()
        .add_scalar(1.0)
        .div_scalar(2.0);
    x * sigma
}
