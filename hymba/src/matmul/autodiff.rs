//! [`MatmulBackend`] under `Autodiff<B, C>`: when `B` has a fast matmul, one recorded node
//! whose backward pass runs both gradient products through `B::fast_matmul` too; otherwise
//! burn's own differentiable `float_matmul`.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, broadcast_shape};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};

use super::MatmulBackend;

/// The backward step of `lhs · rhs`.
#[derive(Debug)]
struct FastMatmulBackward;

/// What the backward step keeps: `lhs` (needed for dW, only when `rhs` is tracked), `rhs`
/// (needed for dX, only when `lhs` is tracked), and both input shapes (for broadcasting).
type State<B> = (Option<FloatTensor<B>>, Option<FloatTensor<B>>, Shape, Shape);

impl<B: MatmulBackend> Backward<B, 2> for FastMatmulBackward {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (lhs, rhs, lhs_shape, rhs_shape) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let [lhs_parent, rhs_parent] = ops.parents;
        if let Some(node) = lhs_parent {
            let rhs = rhs.expect("rhs is kept when lhs is tracked");
            let d_lhs = B::fast_matmul(grad.clone(), B::float_transpose(rhs));
            grads.register::<B>(node.id, broadcast_shape::<B>(d_lhs, &lhs_shape));
        }
        if let Some(node) = rhs_parent {
            let lhs = lhs.expect("lhs is kept when rhs is tracked");
            grads.register::<B>(node.id, rhs_gradient::<B>(lhs, grad, &rhs_shape));
        }
    }
}

/// `dW = Xᵀ · dY`, reduced to `W`'s shape. When `W` is broadcast over every leading dim
/// (a projection weight `[1, k, n]` against activations `[b, m, k]`), the leading dims of
/// `X` and `dY` are folded into their rows first: one `[k, b·m] · [b·m, n]` product instead
/// of `b` products and a sum.
fn rhs_gradient<B: MatmulBackend>(
    lhs: FloatTensor<B>,
    grad: FloatTensor<B>,
    rhs_shape: &Shape,
) -> FloatTensor<B> {
    let dims = rhs_shape.as_slice();
    let rank = dims.len();
    let lhs_dims = lhs.shape();
    let lhs_dims = lhs_dims.as_slice();
    let batch: usize = lhs_dims[..rank - 2].iter().product();
    if rank > 2 && batch > 1 && dims[..rank - 2].iter().all(|&d| d == 1) {
        let (m, k, n) = (lhs_dims[rank - 2], lhs_dims[rank - 1], dims[rank - 1]);
        let flat = |last: usize| {
            let mut s = vec![1; rank];
            s[rank - 2] = batch * m;
            s[rank - 1] = last;
            Shape::from(s)
        };
        let lhs = B::float_reshape(lhs, flat(k));
        let grad = B::float_reshape(grad, flat(n));
        return B::fast_matmul(B::float_transpose(lhs), grad);
    }
    let d_rhs = B::fast_matmul(B::float_transpose(lhs), grad);
    broadcast_shape::<B>(d_rhs, rhs_shape)
}

impl<B: MatmulBackend, C: CheckpointStrategy> MatmulBackend for Autodiff<B, C> {
    fn has_fast_matmul() -> bool {
        B::has_fast_matmul()
    }

    fn matmul_dim_multiple() -> usize {
        B::matmul_dim_multiple()
    }

    fn fast_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn::tensor::ops::FloatTensorOps;
        if !B::has_fast_matmul() {
            return <Self as FloatTensorOps<Self>>::float_matmul(lhs, rhs);
        }
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        match FastMatmulBackward
            .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    rhs_tracked.then(|| lhs.primitive.clone()),
                    lhs_tracked.then(|| rhs.primitive.clone()),
                    lhs.primitive.shape(),
                    rhs.primitive.shape(),
                );
                prep.finish(state, B::fast_matmul(lhs.primitive, rhs.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_matmul(lhs.primitive, rhs.primitive)),
        }
    }
}
