//! [`MatmulBackend`] on `Fusion<B>` (what `burn::backend::Cuda` is): when `B` has a fast
//! matmul, each call registers one custom operation in the fusion stream that runs
//! `B::fast_matmul` when the stream executes (a fusion barrier: element-wise work before
//! and after still fuses). Otherwise burn's own fused `float_matmul`.

use core::marker::PhantomData;

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, TensorMetadata};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};

use super::MatmulBackend;

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// `lhs · rhs` as a fusion operation.
#[derive(Clone, Debug)]
struct FastMatmulOp<B> {
    desc: CustomOpIr,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + MatmulBackend> Operation<B::FusionRuntime> for FastMatmulOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let ([lhs, rhs], [out]) = self.desc.as_fixed();
        let lhs = handles.get_float_tensor::<B>(lhs);
        let rhs = handles.get_float_tensor::<B>(rhs);
        handles.register_float_tensor::<B>(&out.id, B::fast_matmul(lhs, rhs));
    }
}

/// The broadcast output shape of `[.., m, k] · [.., k, n]`.
pub(crate) fn matmul_shape(lhs: &Shape, rhs: &Shape) -> Shape {
    let (l, r) = (lhs.as_slice(), rhs.as_slice());
    let rank = l.len();
    let mut out: Vec<usize> = l[..rank - 2]
        .iter()
        .zip(&r[..rank - 2])
        .map(|(&a, &b)| a.max(b))
        .collect();
    out.push(l[rank - 2]);
    out.push(r[rank - 1]);
    Shape::from(out)
}

impl<B: FusionBackend + MatmulBackend> MatmulBackend for Fusion<B> {
    fn has_fast_matmul() -> bool {
        B::has_fast_matmul()
    }

    fn matmul_dim_multiple() -> usize {
        B::matmul_dim_multiple()
    }

    fn fast_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        if !B::has_fast_matmul() {
            return <Self as FloatTensorOps<Self>>::float_matmul(lhs, rhs);
        }
        let client = lhs.client.clone();
        let out = TensorIr::uninit(
            client.create_empty_handle(),
            matmul_shape(&lhs.shape(), &rhs.shape()),
            lhs.dtype(),
        );
        let streams = OperationStreams::with_inputs([&lhs, &rhs]);
        let desc = CustomOpIr::new("hymba_fast_matmul", &[lhs.into_ir(), rhs.into_ir()], &[out]);
        let op = FastMatmulOp::<B> {
            desc: desc.clone(),
            _b: PhantomData,
        };
        client
            .register(streams, OperationIr::Custom(desc), op)
            .pop()
            .expect("one output registered")
    }
}
