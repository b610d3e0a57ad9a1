//! [`MatmulBackend`] on the bare CubeCL backends: cuBLAS when the runtime is CUDA (and the
//! library loads), burn's own kernel otherwise (wgpu).
//!
//! One generic impl with a run-time type check rather than one impl per runtime: the
//! scan's impl is generic over the runtime too, and this keeps the two in step.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::MatmulBackend;

#[cfg(feature = "cuda")]
fn is_cuda<R: CubeRuntime>() -> bool {
    std::any::TypeId::of::<R>() == std::any::TypeId::of::<cubecl::cuda::CudaRuntime>()
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> MatmulBackend
    for CubeBackend<R, F, I, BT>
{
    fn has_fast_matmul() -> bool {
        #[cfg(feature = "cuda")]
        if is_cuda::<R>() {
            return super::cublas::available();
        }
        false
    }

    fn matmul_dim_multiple() -> usize {
        #[cfg(feature = "cuda")]
        if Self::has_fast_matmul() {
            return super::cublas::DIM_MULTIPLE;
        }
        1
    }

    fn fast_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[cfg(feature = "cuda")]
        if Self::has_fast_matmul() {
            use burn_cubecl::tensor::CubeTensor;
            use cubecl::cuda::CudaRuntime;
            use std::any::Any;
            // `R` is `CudaRuntime` (checked above): move the tensors across by value.
            let to_cuda = |t: CubeTensor<R>| -> CubeTensor<CudaRuntime> {
                *(Box::new(t) as Box<dyn Any>)
                    .downcast()
                    .expect("R is CudaRuntime")
            };
            let (l, r) = (to_cuda(lhs), to_cuda(rhs));
            if super::cublas::supports(&l, &r) {
                let out = super::cublas::matmul(l, r);
                return *(Box::new(out) as Box<dyn Any>)
                    .downcast::<CubeTensor<R>>()
                    .expect("R is CudaRuntime");
            }
            let back = |t: CubeTensor<CudaRuntime>| -> CubeTensor<R> {
                *(Box::new(t) as Box<dyn Any>)
                    .downcast()
                    .expect("R is CudaRuntime")
            };
            return <Self as FloatTensorOps<Self>>::float_matmul(back(l), back(r));
        }
        <Self as FloatTensorOps<Self>>::float_matmul(lhs, rhs)
    }
}
