//! The conv + SiLU under `Autodiff<B, C>`: one recorded operation that saves its three
//! inputs and whose backward calls the inner backend's
//! [`ConvBackend::causal_conv_silu_backward`].

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::ConvBackend;

/// The backward step: the saved state is (full, weight, bias).
#[derive(Debug)]
struct ConvBackward;

impl<B: ConvBackend> Backward<B, 3> for ConvBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let parents = ops.parents;
        if parents.iter().all(Option::is_none) {
            return;
        }
        let (full, weight, bias) = ops.state;
        let (df, dw, db) = B::causal_conv_silu_backward(full, weight, bias, grad);
        for (parent, g) in parents.into_iter().zip([df, dw, db]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn causal_conv_silu(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let y = B::causal_conv_silu(
            full.primitive.clone(),
            weight.primitive.clone(),
            bias.primitive.clone(),
        );
        match ConvBackward
            .prepare::<C>([full.node, weight.node, bias.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((full.primitive, weight.primitive, bias.primitive), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    /// Not differentiated again (no double backward): the inner backend's gradients, as
    /// untracked tensors.
    fn causal_conv_silu_backward(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (df, dw, db) = B::causal_conv_silu_backward(
            full.primitive,
            weight.primitive,
            bias.primitive,
            grad.primitive,
        );
        (
            <Self as AutodiffBackend>::from_inner(df),
            <Self as AutodiffBackend>::from_inner(dw),
            <Self as AutodiffBackend>::from_inner(db),
        )
    }
}
