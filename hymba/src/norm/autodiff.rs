//! The RMS norm under `Autodiff<B, C>`: one recorded operation that saves its input and its
//! weight and whose backward calls the inner backend's [`NormBackend::rms_norm_backward`].

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::NormBackend;

/// The backward step: the saved state is (x, weight, eps).
#[derive(Debug)]
struct RmsNormBackward;

impl<B: NormBackend> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_parent, w_parent] = ops.parents;
        if x_parent.is_none() && w_parent.is_none() {
            return;
        }
        let (x, weight, eps) = ops.state;
        let (dx, dw) = B::rms_norm_backward(x, weight, grad, eps);
        if let Some(node) = x_parent {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = w_parent {
            grads.register::<B>(node.id, dw);
        }
    }
}

impl<B: NormBackend, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let y = B::rms_norm(x.primitive.clone(), weight.primitive.clone(), eps);
        match RmsNormBackward
            .prepare::<C>([x.node, weight.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive, eps), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    /// Not differentiated again (no double backward): the inner backend's gradients, as
    /// untracked tensors.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) = B::rms_norm_backward(x.primitive, weight.primitive, grad.primitive, eps);
        (
            <Self as AutodiffBackend>::from_inner(dx),
            <Self as AutodiffBackend>::from_inner(dw),
        )
    }
}
