//! `Linear`: the projection layer every Hymba weight matrix uses.
//!
//! The weight is stored `[out, in]`, exactly as HF/PyTorch `nn.Linear` stores it, so
//! checkpoint tensors load without transposition (burn's own `Linear` stores `[in, out]`).
//! Hymba's projections have no bias except `dt_proj`, whose bias is handed to the selective
//! scan as `delta_bias`, so this layer has none.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::matmul::{MatmulBackend, matmul_wt};

/// A bias-free linear map `y = x · Wᵀ` with `W: [out, in]`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out, in]`, HF layout.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Linear<B> {
    /// A layer with weights drawn from N(0, std²) (HF `_init_weights`, spec §1.3).
    pub fn new(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Self {
        let weight = Tensor::random([d_out, d_in], Distribution::Normal(0.0, std), device);
        Self {
            weight: Param::from_tensor(weight),
        }
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl<B: MatmulBackend> Linear<B> {
    /// Applies the map to the last dim.
    ///
    /// # Shapes
    /// - `x`: `[..., in]` → `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        matmul_wt(x, self.weight.val())
    }
}
