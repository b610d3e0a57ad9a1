//! The conv + SiLU on `Fusion<B>` (what `burn::backend::{Wgpu, Cuda}` are): each call
//! registers one custom operation in the fusion stream, which runs `B`'s kernels when the
//! stream executes (the pattern of `crate::softmax::fusion`).

use core::marker::PhantomData;

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::TensorMetadata;
use burn::tensor::ops::FloatTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};

use super::ConvBackend;

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// The forward as a fusion operation: inputs full, weight and bias, output y.
#[derive(Clone, Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + ConvBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let [full, weight, bias] =
            [0, 1, 2].map(|i| handles.get_float_tensor::<B>(&self.desc.inputs[i]));
        let y = B::causal_conv_silu(full, weight, bias);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, y);
    }
}

/// The backward as a fusion operation: inputs full, weight, bias and dy, outputs the three
/// gradients.
#[derive(Clone, Debug)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + ConvBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let [full, weight, bias, grad] =
            [0, 1, 2, 3].map(|i| handles.get_float_tensor::<B>(&self.desc.inputs[i]));
        let (df, dw, db) = B::causal_conv_silu_backward(full, weight, bias, grad);
        for (out, g) in self.desc.outputs.iter().zip([df, dw, db]) {
            handles.register_float_tensor::<B>(&out.id, g);
        }
    }
}

impl<B: FusionBackend + ConvBackend> ConvBackend for Fusion<B> {
    fn causal_conv_silu(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let client = full.client.clone();
        let [batch, len, d] = full.shape().dims::<3>();
        let k = weight.shape().dims::<2>()[1];
        let shape = [batch, len + 1 - k, d].into();
        let out = TensorIr::uninit(client.create_empty_handle(), shape, full.dtype());
        let streams = OperationStreams::with_inputs([&full, &weight, &bias]);
        let desc = CustomOpIr::new(
            "hymba_causal_conv_silu",
            &[full.into_ir(), weight.into_ir(), bias.into_ir()],
            &[out],
        );
        let op = ForwardOp::<B> {
            desc: desc.clone(),
            _b: PhantomData,
        };
        let mut outs = client.register(streams, OperationIr::Custom(desc), op);
        outs.pop().expect("conv op: one output")
    }

    fn causal_conv_silu_backward(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let client = full.client.clone();
        let like = |t: &FloatTensor<Self>| {
            TensorIr::uninit(client.create_empty_handle(), t.shape(), t.dtype())
        };
        let outs = [like(&full), like(&weight), like(&bias)];
        let streams = OperationStreams::with_inputs([&full, &weight, &bias, &grad]);
        let desc = CustomOpIr::new(
            "hymba_causal_conv_silu_backward",
            &[
                full.into_ir(),
                weight.into_ir(),
                bias.into_ir(),
                grad.into_ir(),
            ],
            &outs,
        );
        let op = BackwardOp::<B> {
            desc: desc.clone(),
            _b: PhantomData,
        };
        let mut outs = client.register(streams, OperationIr::Custom(desc), op);
        let db = outs.pop().expect("conv backward op: three outputs");
        let dw = outs.pop().expect("conv backward op: three outputs");
        let df = outs.pop().expect("conv backward op: three outputs");
        (df, dw, db)
    }
}
