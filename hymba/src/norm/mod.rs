//! `RmsNorm` with the reference numerics: normalise in f32, cast back to the input dtype,
//! *then* multiply by the weight (HF `HymbaRMSNorm`, spec §2.3 "Numerics"), as one backend
//! operation each way.
//!
//! # Why an operation of its own
//! A Hymba layer normalises seven times: its input, the FFN's input, the attention and SSM
//! outputs before they are averaged (the paper's β1, β2), and the SSM's Δ, B and C; hymba-125m
//! runs 169 norms per forward. In tensor ops a norm is an upcast, a square, a mean, an add, a
//! square root, a division, a cast back and the weight product, and autodiff replays about
//! twice as many ops backwards: some 4,000 ops per training step that the autodiff graph and
//! burn-fusion's thread each handle, on the host threads that bound a CUDA step
//! (`bench/results/cpuprof-train_hymba-125m_bf16_b8_fixed-memory_h200_2026-12-04.txt`). As an operation it is
//! one kernel forward and two backward (the input's gradient per row, the weight's as column
//! sums), and autodiff saves the input and the weight instead of an f32 copy of the input
//! and the normalised rows.
//!
//! | backend | forward | backward |
//! |---|---|---|
//! | `NdArray` (any other backend) | tensor ops ([`rms_norm_reference`]) | tensor ops ([`rms_norm_backward_reference`]) |
//! | `CubeBackend<R, ..>` (CUDA, wgpu) | `kernel` (CubeCL) | `kernel` |
//! | `Fusion<B>` | custom op → `B`'s | custom op → `B`'s |
//! | `Autodiff<B, C>` | `B`'s, recorded as one op saving x and the weight | [`NormBackend::rms_norm_backward`] of `B` |

pub mod autodiff;
#[cfg(feature = "cube")]
pub mod fusion;
#[cfg(feature = "cube")]
pub mod kernel;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorMetadata, TensorPrimitive};

use crate::precision::upcast;

/// Root-mean-square normalisation over the last dim with a learned per-channel weight.
///
/// In the hybrid head, the weights of the two pre-average norms are the paper's β1 and β2
/// (Hymba eq. (3)).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel scale, `[d]`, initialised to 1.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm of width `d` with unit weight.
    pub fn new(d: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            eps,
        }
    }
}

impl<B: NormBackend> RmsNorm<B> {
    /// `x · rsqrt(mean(x²) + eps) · weight` ([`rms_norm`]).
    ///
    /// # Shapes
    /// - `x`: `[..., d]` → `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        rms_norm(x, self.weight.val(), self.eps)
    }
}

/// Backend extension for the RMS norm. The default bodies are tensor ops, correct on every
/// backend; CubeCL backends override them with kernels.
pub trait NormBackend: Backend {
    /// `cast(x / sqrt(mean(x²) + eps)) · weight` over the last dim: the mean square and the
    /// division in f32 (f64 stays f64), the quotient cast back to x's dtype before the
    /// product, as the reference does.
    ///
    /// # Shapes
    /// - `x`: `[..., d]`, `weight`: `[d]` → `[..., d]`
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        reference_primitive::<Self>(x, weight, eps)
    }

    /// The gradients `(dx, dweight)` of [`rms_norm`](Self::rms_norm) given the output's
    /// gradient, in the dtypes of x and the weight ([`rms_norm_backward_reference`]).
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_backward_primitive::<Self>(x, weight, grad, eps)
    }
}

/// [`rms_norm_reference`] on primitives of any rank: the trait's default body, and the
/// kernels' fallback for what they do not take.
pub fn reference_primitive<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    eps: f64,
) -> FloatTensor<B> {
    let shape = x.shape();
    let y = rms_norm_reference::<B, 2>(rows::<B>(x), vector::<B>(weight), eps);
    B::float_reshape(y.into_primitive().tensor(), shape)
}

/// [`rms_norm_backward_reference`] on primitives of any rank (as [`reference_primitive`]).
pub fn reference_backward_primitive<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let (dx, dw) =
        rms_norm_backward_reference(rows::<B>(x), vector::<B>(weight), rows::<B>(grad), eps);
    (
        B::float_reshape(dx.into_primitive().tensor(), shape),
        dw.into_primitive().tensor(),
    )
}

/// A `[..., d]` primitive as a `[rows, d]` tensor.
fn rows<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 2> {
    let shape = x.shape();
    let d = shape.as_slice().last().copied().unwrap_or(1);
    let n = shape.num_elements() / d.max(1);
    Tensor::from_primitive(TensorPrimitive::Float(B::float_reshape(x, [n, d].into())))
}

fn vector<B: Backend>(w: FloatTensor<B>) -> Tensor<B, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(w))
}

/// The tensor-op RMS norm over the last dim (the CPU path and the kernels' oracle): exactly
/// the chain the model ran before the operation existed.
pub fn rms_norm_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x32 = upcast(x);
    let rms = x32.clone().square().mean_dim(D - 1).add_scalar(eps).sqrt();
    let normed = x32.div(rms).cast(dtype);
    normed.mul(weight.unsqueeze::<D>())
}

/// The RMS norm's gradients over rows, derived by hand (the CPU path and the kernels'
/// oracle), in f32: with `r = sqrt(mean(x²) + eps)`, `n = x / r` and `ñ = cast(n)` (what the
/// forward multiplies by the weight),
///
/// - `dweight = Σ_rows dy ⊙ ñ`,
/// - `dx = (dn − n · mean(dn ⊙ n)) / r` with `dn = dy ⊙ weight`
///
/// (the cast's gradient is the identity, as autodiff's).
pub fn rms_norm_backward_reference<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    grad: Tensor<B, 2>,
    eps: f64,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let (dtype, w_dtype) = (x.dtype(), weight.dtype());
    let [_, d] = x.dims();
    let x32 = upcast(x);
    let rms = x32.clone().square().mean_dim(1).add_scalar(eps).sqrt();
    let n = x32.div(rms.clone());
    let rounded = upcast(n.clone().cast(dtype));
    let g = upcast(grad);
    let dw = (g.clone() * rounded).sum_dim(0).reshape([d]).cast(w_dtype);
    let dn = g * upcast(weight).unsqueeze::<2>();
    let dot = (dn.clone() * n.clone()).mean_dim(1);
    let dx = (dn - n * dot).div(rms).cast(dtype);
    (dx, dw)
}

/// The RMS norm the model calls ([`NormBackend::rms_norm`]).
///
/// # Shapes
/// - `x`: `[..., d]`, `weight`: `[d]` → `[..., d]`
pub fn rms_norm<B: NormBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::rms_norm(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        eps,
    )))
}

/// The backward of [`rms_norm`] as a function (what `Autodiff` calls; exposed for tests and
/// benchmarks): `(dx, dweight)`.
pub fn rms_norm_backward<B: NormBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    grad: Tensor<B, D>,
    eps: f64,
) -> (Tensor<B, D>, Tensor<B, 1>) {
    let (dx, dw) = B::rms_norm_backward(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        grad.into_primitive().tensor(),
        eps,
    );
    (
        Tensor::from_primitive(TensorPrimitive::Float(dx)),
        Tensor::from_primitive(TensorPrimitive::Float(dw)),
    )
}

/// ndarray f32: the tensor-op bodies.
#[cfg(feature = "ndarray")]
impl NormBackend for burn::backend::NdArray<f32> {}

/// ndarray f64 (the finite-difference gradient checks): the tensor-op bodies.
#[cfg(feature = "ndarray")]
impl NormBackend for burn::backend::NdArray<f64> {}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tolerance};

    type B = NdArray<f64>;
    type A = Autodiff<B>;

    /// The op under autodiff (its hand-derived backward) gives the gradients that autodiff
    /// of the tensor-op chain gives, for a rank-3 input whose rows are no power of two.
    #[test]
    fn backward_matches_autodiff_of_the_tensor_ops() {
        let device = Default::default();
        let x = Tensor::<B, 3>::random([2, 5, 37], Distribution::Normal(0.3, 2.0), &device);
        let w = Tensor::<B, 1>::random([37], Distribution::Normal(1.0, 0.5), &device);
        let up = Tensor::<B, 3>::random([2, 5, 37], Distribution::Normal(0.0, 1.0), &device);
        let eps = 1e-5;
        let grads_of = |op: bool| {
            let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
            let wa = Tensor::<A, 1>::from_inner(w.clone()).require_grad();
            let y = if op {
                rms_norm(xa.clone(), wa.clone(), eps)
            } else {
                rms_norm_reference(xa.clone(), wa.clone(), eps)
            };
            let g = (y * Tensor::from_inner(up.clone())).sum().backward();
            (xa.grad(&g).unwrap(), wa.grad(&g).unwrap())
        };
        let ((dx, dw), (want_dx, want_dw)) = (grads_of(true), grads_of(false));
        let tol = Tolerance::absolute(1e-12);
        dx.into_data()
            .assert_approx_eq::<f64>(&want_dx.into_data(), tol);
        dw.into_data()
            .assert_approx_eq::<f64>(&want_dw.into_data(), tol);
    }

    /// Each row of the output has a unit root mean square before the weight: with a unit
    /// weight and a negligible eps, `mean(y²) = 1` for every row, whatever its scale.
    #[test]
    fn rows_come_out_with_unit_rms() {
        let device = Default::default();
        let x = Tensor::<B, 2>::random([4, 24], Distribution::Normal(0.0, 1.0), &device)
            * Tensor::<B, 1>::from_floats([0.01, 1.0, 30.0, 1000.0], &device).reshape([4, 1]);
        let y = rms_norm(x, Tensor::ones([24], &device), 1e-30);
        let ms: Vec<f64> = y.square().mean_dim(1).into_data().to_vec().unwrap();
        for m in ms {
            assert!((m - 1.0).abs() < 1e-12, "mean square {m}");
        }
    }
}
