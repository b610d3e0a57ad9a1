//! The masked softmax under `Autodiff<B, C>`: one recorded operation that saves its output P
//! (the buffer the next product reads anyway) and whose backward calls the inner backend's
//! [`AttentionBackend::masked_softmax_backward`].

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::{AttentionBackend, MaskRule};

/// The backward step: the saved state is P.
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: AttentionBackend> Backward<B, 1> for SoftmaxBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::masked_softmax_backward(ops.state, grad));
        }
    }
}

impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    fn masked_softmax(scores: FloatTensor<Self>, rule: MaskRule) -> FloatTensor<Self> {
        let probs = B::masked_softmax(scores.primitive, rule);
        match SoftmaxBackward
            .prepare::<C>([scores.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(probs.clone(), probs),
            OpsKind::UnTracked(prep) => prep.finish(probs),
        }
    }

    /// Not differentiated again (no double backward): the inner backend's gradient, as an
    /// untracked tensor.
    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::masked_softmax_backward(
            probs.primitive,
            grad.primitive,
        ))
    }
}
