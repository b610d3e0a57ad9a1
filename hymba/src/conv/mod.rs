//! The SSM heads' causal depthwise convolution followed by SiLU, as one backend operation
//! (what `causal_conv1d_fn(x, w, b, activation="silu")` is in the reference; spec §2.3).
//!
//! # Why an operation of its own
//! Written in tensor ops (channels innermost, as `in_proj` produces them), the conv is a sum
//! of `d_conv` shifted copies of its input, each scaled per channel: four slices (each a
//! copy of the `[batch, T, d_inner]` activations), four products, three sums, the bias and a
//! SiLU, and autodiff replays about twice as many ops backwards. That is some 60 ops per
//! layer and a dozen full passes over the activations, where the reference's kernel reads its
//! input once and writes its output once. As an operation it is one kernel forward and three
//! backward (the pre-activation's gradient, the input's, and the taps' and bias's as column
//! sums), all in f32 whatever the storage dtype, as `causal_conv1d` computes.
//!
//! The input is `[history; x]` along time (`full`, `[batch, d_conv − 1 + T, d]`): the same
//! operation serves training (a zero history), prefill and decode, and the history's
//! gradient falls out of the concatenation's.
//!
//! | backend | forward | backward |
//! |---|---|---|
//! | `NdArray` (any other backend) | tensor ops ([`causal_conv_silu_reference`]) | tensor ops ([`causal_conv_silu_backward_reference`]) |
//! | `CubeBackend<R, ..>` (CUDA, wgpu) | `kernel` (CubeCL) | `kernel` |
//! | `Fusion<B>` | custom op → `B`'s | custom op → `B`'s |
//! | `Autodiff<B, C>` | `B`'s, recorded as one op saving its inputs | [`ConvBackend::causal_conv_silu_backward`] of `B` |

pub mod autodiff;
#[cfg(feature = "cube")]
pub mod fusion;
#[cfg(feature = "cube")]
pub mod kernel;

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

use crate::precision::{silu, upcast};

/// Backend extension for the SSM heads' causal conv + SiLU. The default bodies are tensor
/// ops, correct on every backend; CubeCL backends override them with kernels.
pub trait ConvBackend: Backend {
    /// `y[b, t, c] = silu(bias[c] + Σ_j weight[c, j] · full[b, t + j, c])` for
    /// `t < T = L − (k − 1)`.
    ///
    /// # Shapes
    /// - `full`: `[batch, L, d]`, `weight`: `[d, k]`, `bias`: `[d]` → `[batch, L − k + 1, d]`
    fn causal_conv_silu(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference_primitive::<Self>(full, weight, bias)
    }

    /// The gradients `(dfull, dweight, dbias)` of
    /// [`causal_conv_silu`](Self::causal_conv_silu) given the output's gradient, in the
    /// dtypes of the inputs ([`causal_conv_silu_backward_reference`]).
    fn causal_conv_silu_backward(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference_backward_primitive::<Self>(full, weight, bias, grad)
    }
}

/// [`causal_conv_silu_reference`] on primitives: the trait's default body, and the kernels'
/// fallback for what they do not take.
pub fn reference_primitive<B: Backend>(
    full: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    causal_conv_silu_reference(tensor::<B, 3>(full), tensor(weight), tensor(bias))
        .into_primitive()
        .tensor()
}

/// [`causal_conv_silu_backward_reference`] on primitives (as [`reference_primitive`]).
pub fn reference_backward_primitive<B: Backend>(
    full: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (df, dw, db) = causal_conv_silu_backward_reference(
        tensor::<B, 3>(full),
        tensor(weight),
        tensor(bias),
        tensor(grad),
    );
    (
        df.into_primitive().tensor(),
        dw.into_primitive().tensor(),
        db.into_primitive().tensor(),
    )
}

fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// The pre-activation `bias + Σ_j weight[:, j] · full[:, j..j + T, :]` in the inputs' dtype:
/// the tensor-op form the model ran before the operation existed.
fn conv_taps<B: Backend>(
    full: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let [_, len, d] = full.dims();
    let k = weight.dims()[1];
    let t = len + 1 - k;
    let tap = |j: usize| weight.clone().narrow(1, j, 1).reshape([1, 1, d]);
    let mut y = full.clone().narrow(1, 0, t) * tap(0);
    for j in 1..k {
        y = y + full.clone().narrow(1, j, t) * tap(j);
    }
    y + bias.reshape([1, 1, d])
}

/// The tensor-op conv + SiLU (the CPU path and the kernels' oracle).
pub fn causal_conv_silu_reference<B: Backend>(
    full: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 3> {
    silu(conv_taps(full, weight, bias))
}

/// The conv + SiLU's gradients by hand (the CPU path and the kernels' oracle), in f32:
/// with `z` the pre-activation and `σ = sigmoid(z)`, `dz = dy · σ · (1 + z · (1 − σ))`, then
///
/// - `dfull[:, s, :] = Σ_j weight[:, j] · dz[:, s − j, :]` over the `j` with `0 ≤ s − j < T`,
/// - `dweight[:, j] = Σ_{b, t} dz[b, t, :] · full[b, t + j, :]`,
/// - `dbias = Σ_{b, t} dz[b, t, :]`.
pub fn causal_conv_silu_backward_reference<B: Backend>(
    full: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    grad: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 1>) {
    let (f_dtype, w_dtype, b_dtype) = (full.dtype(), weight.dtype(), bias.dtype());
    let [batch, len, d] = full.dims();
    let k = weight.dims()[1];
    let t = len + 1 - k;
    let (full, weight) = (upcast(full), upcast(weight));
    let z = conv_taps(full.clone(), weight.clone(), upcast(bias));
    let sig = z
        .clone()
        .mul_scalar(0.5)
        .tanh()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    let dsilu = sig.clone() * (z * (sig.neg().add_scalar(1.0))).add_scalar(1.0);
    let dz = upcast(grad) * dsilu;
    // dz with k − 1 zero steps on either side: dfull[:, s] = Σ_j w_j · padded[:, s − j + k − 1].
    let pad = Tensor::<B, 3>::zeros([batch, k - 1, d], &dz.device()).cast(dz.dtype());
    let padded = Tensor::cat(vec![pad.clone(), dz.clone(), pad], 1);
    let tap = |j: usize| weight.clone().narrow(1, j, 1).reshape([1, 1, d]);
    let mut dfull = padded.clone().narrow(1, k - 1, len) * tap(0);
    for j in 1..k {
        dfull = dfull + padded.clone().narrow(1, k - 1 - j, len) * tap(j);
    }
    let dw: Vec<Tensor<B, 2>> = (0..k)
        .map(|j| {
            (dz.clone() * full.clone().narrow(1, j, t))
                .sum_dim(1)
                .sum_dim(0)
                .reshape([d, 1])
        })
        .collect();
    let db = dz.sum_dim(1).sum_dim(0).reshape([d]);
    (
        dfull.cast(f_dtype),
        Tensor::cat(dw, 1).cast(w_dtype),
        db.cast(b_dtype),
    )
}

/// The conv + SiLU the SSM heads call ([`ConvBackend::causal_conv_silu`]).
///
/// # Shapes
/// - `full`: `[batch, L, d]`, `weight`: `[d, k]`, `bias`: `[d]` → `[batch, L − k + 1, d]`
pub fn causal_conv_silu<B: ConvBackend>(
    full: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 3> {
    tensor(B::causal_conv_silu(
        full.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
    ))
}

/// The backward of [`causal_conv_silu`] as a function (what `Autodiff` calls; exposed for
/// tests and benchmarks): `(dfull, dweight, dbias)`.
pub fn causal_conv_silu_backward<B: ConvBackend>(
    full: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    grad: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 1>) {
    let (df, dw, db) = B::causal_conv_silu_backward(
        full.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
        grad.into_primitive().tensor(),
    );
    (tensor(df), tensor(dw), tensor(db))
}

/// ndarray f32: the tensor-op bodies.
#[cfg(feature = "ndarray")]
impl ConvBackend for burn::backend::NdArray<f32> {}

/// ndarray f64 (the finite-difference gradient checks): the tensor-op bodies.
#[cfg(feature = "ndarray")]
impl ConvBackend for burn::backend::NdArray<f64> {}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tolerance};

    type B = NdArray<f64>;
    type A = Autodiff<B>;

    /// The op under autodiff (its hand-derived backward) gives the gradients that autodiff
    /// of the tensor-op chain gives, history included.
    #[test]
    fn backward_matches_autodiff_of_the_tensor_ops() {
        let device = Default::default();
        let (batch, t, d, k) = (2, 7, 5, 4);
        let full = Tensor::<B, 3>::random(
            [batch, t + k - 1, d],
            Distribution::Normal(0.0, 1.5),
            &device,
        );
        let w = Tensor::<B, 2>::random([d, k], Distribution::Normal(0.0, 0.7), &device);
        let bias = Tensor::<B, 1>::random([d], Distribution::Normal(0.0, 0.5), &device);
        let up = Tensor::<B, 3>::random([batch, t, d], Distribution::Normal(0.0, 1.0), &device);
        let grads_of = |op: bool| {
            let fa = Tensor::<A, 3>::from_inner(full.clone()).require_grad();
            let wa = Tensor::<A, 2>::from_inner(w.clone()).require_grad();
            let ba = Tensor::<A, 1>::from_inner(bias.clone()).require_grad();
            let y = if op {
                causal_conv_silu(fa.clone(), wa.clone(), ba.clone())
            } else {
                causal_conv_silu_reference(fa.clone(), wa.clone(), ba.clone())
            };
            assert_eq!(y.dims(), [batch, t, d]);
            let g = (y * Tensor::from_inner(up.clone())).sum().backward();
            [
                fa.grad(&g).unwrap().into_data(),
                wa.grad(&g).unwrap().into_data(),
                ba.grad(&g).unwrap().into_data(),
            ]
        };
        let (ours, theirs) = (grads_of(true), grads_of(false));
        for (got, want) in ours.iter().zip(&theirs) {
            got.assert_approx_eq::<f64>(want, Tolerance::absolute(1e-12));
        }
    }

    /// Both outputs of a one-channel conv against the definition, summed on the host.
    #[test]
    fn forward_is_the_causal_conv_then_silu() {
        let device = Default::default();
        let (xs, taps, bias) = (
            vec![1.0, 2.0, -1.0, 0.5, 3.0],
            vec![0.5, -1.0, 2.0, 0.25],
            0.1,
        );
        let full = Tensor::<B, 3>::from_data(TensorData::new(xs.clone(), [1, 5, 1]), &device);
        let w = Tensor::<B, 2>::from_data(TensorData::new(taps.clone(), [1, 4]), &device);
        let b = Tensor::<B, 1>::from_data(TensorData::new(vec![bias], [1]), &device);
        let y: Vec<f64> = causal_conv_silu(full, w, b).into_data().to_vec().unwrap();
        assert_eq!(y.len(), 2);
        for (t, got) in y.iter().enumerate() {
            let z = bias + (0..4).map(|j| taps[j] * xs[t + j]).sum::<f64>();
            let want = z / (1.0 + (-z).exp());
            assert!((got - want).abs() < 1e-12, "y[{t}] = {got}, want {want}");
        }
    }
}
