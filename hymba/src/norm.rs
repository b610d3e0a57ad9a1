//! `RmsNorm` with the reference numerics: normalise in f32, cast back to the input dtype,
//! *then* multiply by the weight (HF `HymbaRMSNorm`, spec §2.3 "Numerics").

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;

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

    /// `x · rsqrt(mean(x²) + eps) · weight`.
    ///
    /// # Shapes
    /// - `x`: `[..., d]` → `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let rms = x32
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt();
        let normed = x32.div(rms).cast(dtype);
        normed.mul(self.weight.val().unsqueeze::<D>())
    }
}
