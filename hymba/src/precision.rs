//! Compute-precision helpers: the reference computes norms, softmax-adjacent math and the
//! selective scan in f32 whatever the storage dtype (spec §2.3 "Numerics").

use burn::module::{ModuleMapper, Param};
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

/// Casts every float parameter of `module` to `dtype`, keeping each parameter's id and its
/// place in the autodiff graph: the cast is an op like any other, so the gradients of a
/// forward pass through the cast copy flow back, in the master dtype, to the parameters of
/// `module`. This is mixed precision as Megatron-LM's `--bf16` does it: the whole forward and
/// backward run on bf16 weights and activations (norms, softmax, the scan and the loss still
/// compute in f32, see [`upcast`]), while the optimizer updates f32 master weights with f32
/// state. Parameters already in `dtype` are returned as they are.
pub fn cast_params<B: Backend, M: Module<B>>(module: M, dtype: DType) -> M {
    struct CastParams(DType);
    impl<B: Backend> ModuleMapper<B> for CastParams {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let dtype = self.0;
            param.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
        }
    }
    module.map(&mut CastParams(dtype))
}
