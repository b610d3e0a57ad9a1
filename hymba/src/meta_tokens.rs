//! Meta tokens (Hymba §2.3, spec §3): M learned vectors prepended to every sequence before
//! layer 0. They take positions 0..M−1 (text starts at M), pass through every layer, are
//! always visible to attention (also in SWA layers) and are stripped before the LM head —
//! a learned initialisation of the KV cache and SSM state.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;

/// The M meta tokens, `[M, D]`.
#[derive(Module, Debug)]
pub struct MetaTokens<B: Backend> {
    /// `[M, D]` (HF `model.memory_tokens`), initialised N(0, 1) like `torch.randn`; `None`
    /// for M = 0 (a zero-sized tensor is not allocated: CUDA refuses one).
    pub tokens: Option<Param<Tensor<B, 2>>>,
}

impl<B: Backend> MetaTokens<B> {
    /// `count` fresh meta tokens of width `d`.
    pub fn new(count: usize, d: usize, device: &B::Device) -> Self {
        Self {
            tokens: (count > 0).then(|| {
                Param::from_tensor(Tensor::random(
                    [count, d],
                    Distribution::Normal(0.0, 1.0),
                    device,
                ))
            }),
        }
    }

    /// Number of meta tokens M.
    pub fn len(&self) -> usize {
        self.tokens.as_ref().map_or(0, |t| t.dims()[0])
    }

    /// Whether there are none (a config with `num_memory_tokens = 0`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// X̃ = [R; X]: prepends the meta tokens to each sequence of the batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, T, D]` → `[batch, M + T, D]`
    pub fn prepend(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.batch(x.dims()[0]) {
            Some(meta) => Tensor::cat(vec![meta, x], 1),
            None => x,
        }
    }

    /// The meta tokens as a batch of `batch` identical sequences (`None` without any).
    ///
    /// # Shapes
    /// → `[batch, M, D]`
    pub fn batch(&self, batch: usize) -> Option<Tensor<B, 3>> {
        let tokens = self.tokens.as_ref()?.val();
        let [m, d] = tokens.dims();
        Some(tokens.unsqueeze_dim::<3>(0).expand([batch, m, d]))
    }
}
