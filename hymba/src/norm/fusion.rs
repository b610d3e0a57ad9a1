//! The RMS norm on `Fusion<B>` (what `burn::backend::{Wgpu, Cuda}` are): each call registers
//! one custom operation in the fusion stream, which runs `B`'s kernels when the stream
//! executes (the pattern of `crate::softmax::fusion`).

use core::marker::PhantomData;

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::TensorMetadata;
use burn::tensor::ops::FloatTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};

use super::NormBackend;

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// The forward as a fusion operation: inputs x and the weight, output y.
#[derive(Clone, Debug)]
struct ForwardOp<B> {
    desc: CustomOpIr,
    eps: f64,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + NormBackend> Operation<B::FusionRuntime> for ForwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let x = handles.get_float_tensor::<B>(&self.desc.inputs[0]);
        let weight = handles.get_float_tensor::<B>(&self.desc.inputs[1]);
        let y = B::rms_norm(x, weight, self.eps);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, y);
    }
}

/// The backward as a fusion operation: inputs x, the weight and dy, outputs dx and dweight.
#[derive(Clone, Debug)]
struct BackwardOp<B> {
    desc: CustomOpIr,
    eps: f64,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + NormBackend> Operation<B::FusionRuntime> for BackwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let x = handles.get_float_tensor::<B>(&self.desc.inputs[0]);
        let weight = handles.get_float_tensor::<B>(&self.desc.inputs[1]);
        let grad = handles.get_float_tensor::<B>(&self.desc.inputs[2]);
        let (dx, dw) = B::rms_norm_backward(x, weight, grad, self.eps);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, dx);
        handles.register_float_tensor::<B>(&self.desc.outputs[1].id, dw);
    }
}

impl<B: FusionBackend + NormBackend> NormBackend for Fusion<B> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let client = x.client.clone();
        let out = TensorIr::uninit(client.create_empty_handle(), x.shape(), x.dtype());
        let streams = OperationStreams::with_inputs([&x, &weight]);
        let desc = CustomOpIr::new("hymba_rms_norm", &[x.into_ir(), weight.into_ir()], &[out]);
        let op = ForwardOp::<B> {
            desc: desc.clone(),
            eps,
            _b: PhantomData,
        };
        let mut outs = client.register(streams, OperationIr::Custom(desc), op);
        outs.pop().expect("RMS norm op: one output")
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let client = x.client.clone();
        let dx = TensorIr::uninit(client.create_empty_handle(), x.shape(), x.dtype());
        let dw = TensorIr::uninit(client.create_empty_handle(), weight.shape(), weight.dtype());
        let streams = OperationStreams::with_inputs([&x, &weight, &grad]);
        let desc = CustomOpIr::new(
            "hymba_rms_norm_backward",
            &[x.into_ir(), weight.into_ir(), grad.into_ir()],
            &[dx, dw],
        );
        let op = BackwardOp::<B> {
            desc: desc.clone(),
            eps,
            _b: PhantomData,
        };
        let mut outs = client.register(streams, OperationIr::Custom(desc), op);
        let dw = outs.pop().expect("RMS norm backward op: two outputs");
        let dx = outs.pop().expect("RMS norm backward op: two outputs");
        (dx, dw)
    }
}
