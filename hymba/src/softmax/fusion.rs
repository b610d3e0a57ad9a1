//! The masked softmax on `Fusion<B>` (what `burn::backend::{Wgpu, Cuda}` are): each call
//! registers one custom operation in the fusion stream, which runs `B`'s kernel when the
//! stream executes (the same pattern as the scan's, `crate::scan::fusion`).

use core::marker::PhantomData;

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::TensorMetadata;
use burn::tensor::ops::FloatTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};

use super::{AttentionBackend, MaskRule};

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// The forward as a fusion operation: input the scores, output P.
#[derive(Clone, Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    rule: MaskRule,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + AttentionBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let scores = handles.get_float_tensor::<B>(&self.desc.inputs[0]);
        let probs = B::masked_softmax(scores, self.rule);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, probs);
    }
}

/// The backward as a fusion operation: inputs P and dP, output dS.
#[derive(Clone, Debug)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + AttentionBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let probs = handles.get_float_tensor::<B>(&self.desc.inputs[0]);
        let grad = handles.get_float_tensor::<B>(&self.desc.inputs[1]);
        let ds = B::masked_softmax_backward(probs, grad);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, ds);
    }
}

impl<B: FusionBackend + AttentionBackend> AttentionBackend for Fusion<B> {
    fn masked_softmax(scores: FloatTensor<Self>, rule: MaskRule) -> FloatTensor<Self> {
        let client = scores.client.clone();
        let out = TensorIr::uninit(client.create_empty_handle(), scores.shape(), scores.dtype());
        let streams = OperationStreams::with_inputs([&scores]);
        let desc = CustomOpIr::new("hymba_masked_softmax", &[scores.into_ir()], &[out]);
        let op = ForwardOp::<B> {
            desc: desc.clone(),
            rule,
            _b: PhantomData,
        };
        let mut outs = client.register(streams, OperationIr::Custom(desc), op);
        outs.pop().expect("masked softmax op: one output")
    }

    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let client = probs.client.clone();
        let out = TensorIr::uninit(client.create_empty_handle(), probs.shape(), probs.dtype());
        let streams = OperationStreams::with_inputs([&probs, &grad]);
        let desc = CustomOpIr::new(
            "hymba_masked_softmax_backward",
            &[probs.into_ir(), grad.into_ir()],
            &[out],
        );
        let op = BackwardOp::<B> {
            desc: desc.clone(),
            _b: PhantomData,
        };
        let mut outs = client.register(streams, OperationIr::Custom(desc), op);
        outs.pop().expect("masked softmax backward op: one output")
    }
}
