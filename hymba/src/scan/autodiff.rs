//! The scan under `Autodiff<B, C>`: one recorded operation whose backward pass calls the
//! inner backend's [`ScanBackend::selective_scan_backward`] (a kernel on CubeCL backends, the
//! reference recomputed under autodiff elsewhere).
//!
//! burn's autodiff graph gives each operation a single output, and the scan has two (`y` and
//! the last state). Each output gets its own node over the same parents and the same saved
//! inputs; the forward runs once. In training only `y` reaches the loss, so only its backward
//! runs (with `d_last_state = None`); when both reach it, each backward contributes its part
//! and the gradients add up (the backward pass is linear in `(dy, d_last_state)`).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::TensorMetadata;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::{ScanBackend, ScanGrads, ScanPrimitives};

/// Which output of the scan a backward node stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Y,
    LastState,
}

/// The backward step of one scan output; `N` is 9 with an initial state, 8 without.
#[derive(Debug)]
struct ScanBackward;

impl<B: ScanBackend, const N: usize> Backward<B, N> for ScanBackward {
    type State = (ScanPrimitives<B>, Output);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (input, output) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dy, d_last_state) = match output {
            Output::Y => (grad, None),
            Output::LastState => {
                let dy = B::float_zeros(
                    input.u.shape(),
                    &B::float_device(&input.u),
                    input.u.dtype().into(),
                );
                (dy, Some(grad))
            }
        };
        let g = B::selective_scan_backward(input, dy, d_last_state);
        let mut per_parent = vec![g.u, g.delta, g.a, g.b, g.c, g.d, g.z, g.delta_bias];
        per_parent.extend(g.initial_state);
        for (parent, grad) in ops.parents.into_iter().zip(per_parent) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Records one output (`y` or the last state) as a node over the scan's inputs (a macro:
/// burn does not export the node type that a function signature would have to name).
macro_rules! record {
    ($parents:expr, $saved:expr, $which:expr, $value:expr) => {
        match ScanBackward
            .prepare::<C>($parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(($saved.clone(), $which), $value),
            OpsKind::UnTracked(prep) => prep.finish($value),
        }
    };
}

impl<B: ScanBackend, C: CheckpointStrategy> ScanBackend for Autodiff<B, C> {
    fn selective_scan(input: ScanPrimitives<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let inner = ScanPrimitives::<B> {
            u: input.u.primitive.clone(),
            delta: input.delta.primitive.clone(),
            a: input.a.primitive.clone(),
            b: input.b.primitive.clone(),
            c: input.c.primitive.clone(),
            d: input.d.primitive.clone(),
            z: input.z.primitive.clone(),
            delta_bias: input.delta_bias.primitive.clone(),
            initial_state: input.initial_state.as_ref().map(|h| h.primitive.clone()),
        };
        let (y, h) = B::selective_scan(inner.clone());
        let nodes = [
            input.u.node.clone(),
            input.delta.node.clone(),
            input.a.node.clone(),
            input.b.node.clone(),
            input.c.node.clone(),
            input.d.node.clone(),
            input.z.node.clone(),
            input.delta_bias.node.clone(),
        ];
        match &input.initial_state {
            None => (
                record!(nodes.clone(), inner, Output::Y, y),
                record!(nodes, inner, Output::LastState, h),
            ),
            Some(h0) => {
                let [n0, n1, n2, n3, n4, n5, n6, n7] = nodes;
                let nodes = [n0, n1, n2, n3, n4, n5, n6, n7, h0.node.clone()];
                (
                    record!(nodes.clone(), inner, Output::Y, y),
                    record!(nodes, inner, Output::LastState, h),
                )
            }
        }
    }

    /// The gradients themselves are not differentiated again (no double backward): they are
    /// the inner backend's, returned as untracked tensors.
    fn selective_scan_backward(
        input: ScanPrimitives<Self>,
        dy: FloatTensor<Self>,
        d_last_state: Option<FloatTensor<Self>>,
    ) -> ScanGrads<Self> {
        let inner = ScanPrimitives::<B> {
            u: input.u.primitive,
            delta: input.delta.primitive,
            a: input.a.primitive,
            b: input.b.primitive,
            c: input.c.primitive,
            d: input.d.primitive,
            z: input.z.primitive,
            delta_bias: input.delta_bias.primitive,
            initial_state: input.initial_state.map(|h| h.primitive),
        };
        let g = B::selective_scan_backward(inner, dy.primitive, d_last_state.map(|t| t.primitive));
        let lift = <Self as AutodiffBackend>::from_inner;
        ScanPrimitives {
            u: lift(g.u),
            delta: lift(g.delta),
            a: lift(g.a),
            b: lift(g.b),
            c: lift(g.c),
            d: lift(g.d),
            z: lift(g.z),
            delta_bias: lift(g.delta_bias),
            initial_state: g.initial_state.map(lift),
        }
    }
}
