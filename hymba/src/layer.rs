//! One Hymba decoder layer (spec §2.2): pre-norm hybrid head and pre-norm SwiGLU FFN, each
//! with a residual connection.

use burn::prelude::*;

use crate::HymbaBackend;
use crate::config::HymbaConfig;
use crate::ffn::SwiGluFfn;
use crate::mixer::{AttentionContext, HybridHead, KeyValues, KvInput};
use crate::norm::RmsNorm;
use crate::ssm::SsmState;

/// `h = x + HybridHead(norm(x)); y = h + FFN(norm(h))`.
#[derive(Module, Debug)]
pub struct HymbaLayer<B: Backend> {
    /// RMSNorm before the hybrid head (`input_layernorm`).
    pub input_norm: RmsNorm<B>,
    /// The hybrid head (HF `mamba`).
    pub mixer: HybridHead<B>,
    /// RMSNorm before the FFN (`pre_moe_layernorm`).
    pub ffn_norm: RmsNorm<B>,
    /// The FFN (HF `moe.experts.0`).
    pub ffn: SwiGluFfn<B>,
}

impl<B: HymbaBackend> HymbaLayer<B> {
    /// Layer `layer` of `config`.
    pub fn new(config: &HymbaConfig, layer: usize, device: &B::Device) -> Self {
        let eps = config.rms_norm_eps;
        Self {
            input_norm: RmsNorm::new(config.hidden_size, eps, device),
            mixer: HybridHead::new(config, layer, device),
            ffn_norm: RmsNorm::new(config.hidden_size, eps, device),
            ffn: SwiGluFfn::new(config, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, T, D]` → `[batch, T, D]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &AttentionContext<'_, B>,
        kv: KvInput<B>,
        ssm_state: Option<SsmState<B>>,
    ) -> (Tensor<B, 3>, Option<KeyValues<B>>, Option<SsmState<B>>) {
        let (mixed, kv, state) =
            self.mixer
                .forward(self.input_norm.forward(x.clone()), ctx, kv, ssm_state);
        let h = x + mixed;
        let y = h.clone() + self.ffn.forward(self.ffn_norm.forward(h));
        (y, kv, state)
    }
}
