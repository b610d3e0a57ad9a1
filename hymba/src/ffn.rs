//! The SwiGLU feed-forward network of every layer (HF `moe.experts.0`; with one expert the
//! "MoE" is a plain FFN and has no router).

use crate::matmul::MatmulBackend;
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::config::HymbaConfig;
use crate::linear::Linear;

/// `down(silu(gate(u)) ⊙ up(u))`, D → F → D, no biases.
#[derive(Module, Debug)]
pub struct SwiGluFfn<B: Backend> {
    /// D → F.
    pub gate_proj: Linear<B>,
    /// D → F.
    pub up_proj: Linear<B>,
    /// F → D.
    pub down_proj: Linear<B>,
}

impl<B: MatmulBackend> SwiGluFfn<B> {
    /// A freshly initialised FFN.
    pub fn new(config: &HymbaConfig, device: &B::Device) -> Self {
        let (d, f, std) = (
            config.hidden_size,
            config.intermediate_size,
            config.initializer_range,
        );
        Self {
            gate_proj: Linear::new(d, f, std, device),
            up_proj: Linear::new(d, f, std, device),
            down_proj: Linear::new(f, d, std, device),
        }
    }

    /// # Shapes
    /// - `u`: `[batch, T, D]` → `[batch, T, D]`
    pub fn forward(&self, u: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu(self.gate_proj.forward(u.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(u))
    }
}
