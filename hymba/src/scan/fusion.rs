//! The scan on `Fusion<B>` (what `burn::backend::{Wgpu, Cuda}` are): each call registers one
//! custom operation in the fusion stream, which runs `B`'s implementation (the CubeCL kernel)
//! when the stream executes. The operation is a fusion barrier; the element-wise work around
//! it still fuses. Template: burn-vision 0.21's `connected_components`.

use core::marker::PhantomData;

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};

use super::{ScanBackend, ScanGrads, ScanPrimitives};

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// The inputs in a fixed order: u, delta, a, b, c, d, z, delta_bias[, initial_state].
fn input_list<T>(input: ScanPrimitives<T>) -> Vec<FloatTensor<T>>
where
    T: burn::tensor::backend::Backend,
{
    let mut v = vec![
        input.u,
        input.delta,
        input.a,
        input.b,
        input.c,
        input.d,
        input.z,
        input.delta_bias,
    ];
    v.extend(input.initial_state);
    v
}

/// Rebuilds the inputs from the list `input_list` made.
fn from_list<T: burn::tensor::backend::Backend>(v: Vec<FloatTensor<T>>) -> ScanPrimitives<T> {
    let mut it = v.into_iter();
    let mut next = || it.next().expect("scan op: missing input");
    ScanPrimitives {
        u: next(),
        delta: next(),
        a: next(),
        b: next(),
        c: next(),
        d: next(),
        z: next(),
        delta_bias: next(),
        initial_state: it.next(),
    }
}

/// The forward scan as a fusion operation.
#[derive(Clone, Debug)]
struct ScanForwardOp<B> {
    desc: CustomOpIr,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + ScanBackend> Operation<B::FusionRuntime> for ScanForwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let inputs = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<B>(t))
            .collect();
        let (y, h) = B::selective_scan(from_list(inputs));
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, y);
        handles.register_float_tensor::<B>(&self.desc.outputs[1].id, h);
    }
}

/// The backward scan as a fusion operation. Inputs: the scan inputs, then `dy`, then
/// `d_last_state` when `has_d_last`; outputs: one gradient per scan input.
#[derive(Clone, Debug)]
struct ScanBackwardOp<B> {
    desc: CustomOpIr,
    n_inputs: usize,
    has_d_last: bool,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + ScanBackend> Operation<B::FusionRuntime> for ScanBackwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let mut all: Vec<FloatTensor<B>> = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<B>(t))
            .collect();
        let d_last = if self.has_d_last { all.pop() } else { None };
        let dy = all.pop().expect("scan backward op: dy");
        debug_assert_eq!(all.len(), self.n_inputs);
        let g = B::selective_scan_backward(from_list(all), dy, d_last);
        for (out, grad) in self.desc.outputs.iter().zip(input_list(g)) {
            handles.register_float_tensor::<B>(&out.id, grad);
        }
    }
}

impl<B: FusionBackend + ScanBackend> ScanBackend for Fusion<B> {
    fn selective_scan(input: ScanPrimitives<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let client = input.u.client.clone();
        let [batch, channels, _] = input.u.shape().dims::<3>();
        let states = input.a.shape().dims::<2>()[1];
        let dtype = input.u.dtype();
        let y = TensorIr::uninit(client.create_empty_handle(), input.u.shape(), dtype);
        let h = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::new([batch, channels, states]),
            dtype,
        );
        let inputs = input_list(input);
        let streams = OperationStreams::with_inputs(inputs.iter());
        let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
        let desc = CustomOpIr::new("hymba_selective_scan", &irs, &[y, h]);
        let op = ScanForwardOp::<B> {
            desc: desc.clone(),
            _b: PhantomData,
        };
        let mut out = client.register(streams, OperationIr::Custom(desc), op);
        let h = out.pop().expect("scan op: last state");
        let y = out.pop().expect("scan op: y");
        (y, h)
    }

    fn selective_scan_backward(
        input: ScanPrimitives<Self>,
        dy: FloatTensor<Self>,
        d_last_state: Option<FloatTensor<Self>>,
    ) -> ScanGrads<Self> {
        let client = input.u.client.clone();
        let inputs = input_list(input);
        let n_inputs = inputs.len();
        // One gradient per input, with its shape and dtype.
        let outputs: Vec<TensorIr> = inputs
            .iter()
            .map(|t| TensorIr::uninit(client.create_empty_handle(), t.shape(), t.dtype()))
            .collect();
        let has_d_last = d_last_state.is_some();
        let mut all = inputs;
        all.push(dy);
        all.extend(d_last_state);
        let streams = OperationStreams::with_inputs(all.iter());
        let irs: Vec<TensorIr> = all.into_iter().map(|t| t.into_ir()).collect();
        let desc = CustomOpIr::new("hymba_selective_scan_backward", &irs, &outputs);
        let op = ScanBackwardOp::<B> {
            desc: desc.clone(),
            n_inputs,
            has_d_last,
            _b: PhantomData,
        };
        let grads = client.register(streams, OperationIr::Custom(desc), op);
        from_list(grads)
    }
}
