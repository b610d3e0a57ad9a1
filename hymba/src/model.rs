//! `Hymba`: embedding, meta tokens, the stack of hybrid layers with cross-layer KV sharing,
//! final norm and the tied LM head (spec §2.1).

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::log_softmax;
use burn::tensor::module::embedding;

use crate::HymbaBackend;
use crate::attention::{KeySpan, Mask, hymba_mask};
use crate::cache::HymbaCache;
use crate::config::{HymbaConfig, KvRole};
use crate::error::{HymbaError, Result};
use crate::layer::HymbaLayer;
use crate::matmul::matmul_wt_padded;
use crate::meta_tokens::MetaTokens;
use crate::mixer::{AttentionContext, KeyValues, KvInput};
use crate::norm::RmsNorm;
use crate::params;
use crate::precision::upcast;
use crate::rope::Rope;

/// The Hymba language model.
#[derive(Module, Debug)]
pub struct Hymba<B: Backend> {
    /// Token embedding `[V, D]`, also the (tied) LM head.
    pub embed_tokens: Param<Tensor<B, 2>>,
    /// The M meta tokens prepended to every sequence.
    pub meta_tokens: MetaTokens<B>,
    /// The hybrid layers.
    pub layers: Vec<HymbaLayer<B>>,
    /// RMSNorm after the last layer (`final_layernorm`).
    pub final_norm: RmsNorm<B>,
    /// The architecture (not a parameter).
    pub config: HymbaConfig,
}

impl<B: HymbaBackend> Hymba<B> {
    /// A randomly initialised model (spec §1.3 initialisation); validates the config first.
    pub fn new(config: &HymbaConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let (v, d) = (config.vocab_size, config.hidden_size);
        let mut embed = Tensor::random(
            [v, d],
            Distribution::Normal(0.0, config.initializer_range),
            device,
        );
        if config.pad_token_id < v {
            // HF zeroes the padding row of the embedding at init.
            let zeros = Tensor::zeros([1, d], device);
            embed = embed.slice_assign([config.pad_token_id..config.pad_token_id + 1, 0..d], zeros);
        }
        Ok(Self {
            embed_tokens: Param::from_tensor(embed),
            meta_tokens: MetaTokens::new(config.num_memory_tokens, d, device),
            layers: (0..config.num_hidden_layers)
                .map(|i| HymbaLayer::new(config, i, device))
                .collect(),
            final_norm: RmsNorm::new(d, config.rms_norm_eps, device),
            config: config.clone(),
        })
    }

    /// Final-normed hidden states of the text positions (meta tokens stripped).
    ///
    /// With a cache, continues from it (prepending the meta tokens only if it is empty) and
    /// updates it; without one, runs the whole sequence as in training.
    ///
    /// # Shapes
    /// - `ids`: `[batch, T]` → `[batch, T, D]`
    pub fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: Option<&mut HymbaCache<B>>,
    ) -> Tensor<B, 3> {
        let [_, t] = ids.dims();
        let x = embedding(self.embed_tokens.val(), ids);
        let start = cache.as_ref().map_or(0, |c| c.seen);
        let (x, meta, new_span) = if start == 0 {
            let m = self.meta_tokens.len();
            let span = KeySpan {
                meta: m,
                text: m..m + t,
            };
            (self.meta_tokens.prepend(x), m, span)
        } else {
            (
                x,
                0,
                KeySpan {
                    meta: 0,
                    text: start..start + t,
                },
            )
        };
        let x = self.run_layers(x, start, meta + t, new_span, cache);
        let x = self.final_norm.forward(x);
        if meta > 0 { x.narrow(1, meta, t) } else { x }
    }

    /// The cache after the meta tokens alone, for `batch` sequences: the paper's learned
    /// cache initialization. The meta tokens come first in every sequence and attend only to
    /// each other, so their K/V, conv history and SSM state do not depend on the prompt:
    /// computed once here (batch 1, then repeated), a prefill through this cache runs only
    /// the prompt and gives the logits of a prefill through an empty cache. Recompute it
    /// after the weights change. Without meta tokens it is an empty cache.
    pub fn meta_cache(&self, batch: usize) -> HymbaCache<B> {
        let mut cache = HymbaCache::new(&self.config);
        let m = self.meta_tokens.len();
        let Some(x) = self.meta_tokens.batch(1) else {
            return cache;
        };
        let span = KeySpan {
            meta: m,
            text: m..m,
        };
        let _ = self.run_layers(x, 0, m, span, Some(&mut cache));
        cache.repeat_batch(batch)
    }

    /// The hybrid layers over `n` new positions starting at `start` (`new_span`: their keys),
    /// continuing from and updating `cache`; returns the last layer's output (before the final
    /// norm).
    fn run_layers(
        &self,
        x: Tensor<B, 3>,
        start: usize,
        n: usize,
        new_span: KeySpan,
        mut cache: Option<&mut HymbaCache<B>>,
    ) -> Tensor<B, 3> {
        let device = x.device();
        let config = &self.config;
        let queries = start..start + n;
        if let Some(cache) = cache.as_deref_mut() {
            cache.trim_before(start);
        }
        let rope = Rope::new(
            start,
            n,
            config.qk_head_dim(),
            config.rope_base(),
            x.dtype(),
            &device,
        );
        let num_meta = self.meta_tokens.len();
        let mut produced: Vec<Option<KeyValues<B>>> = vec![None; self.layers.len()];
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let window = (!config.is_global(i)).then_some(config.sliding_window);
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let (past, ssm_state) = match layer_cache {
                Some(lc) => (lc.kv.take(), lc.ssm.take()),
                None => (None, None),
            };
            let (kv_in, keys) = match config.kv_role(i) {
                KvRole::Owner => {
                    let keys = past
                        .as_ref()
                        .map_or(new_span.clone(), |p| p.span.extend(&new_span));
                    (
                        KvInput::Own {
                            past,
                            new_span: new_span.clone(),
                        },
                        keys,
                    )
                }
                KvRole::Consumer { producer } => {
                    // Validation guarantees the producer ran earlier in this loop.
                    let kv = produced[producer].clone().unwrap_or_else(|| {
                        unreachable!("KV producer {producer} runs before consumer {i}")
                    });
                    let keys = kv.span.clone();
                    (KvInput::Shared(kv), keys)
                }
            };
            // An SSM-only layer reads no mask.
            let mask = if layer.mixer.has_attention {
                hymba_mask(queries.clone(), &keys, window, num_meta)
            } else {
                Mask::None
            };
            let ctx = AttentionContext {
                rope: &rope,
                mask: &mask,
            };
            let (y, kv, state) = layer.forward(x, &ctx, kv_in, ssm_state);
            x = y;
            if let Some(lc) = cache.as_deref_mut().map(|c| &mut c.layers[i]) {
                lc.ssm = state;
                if lc.owns_kv {
                    lc.kv = kv.clone();
                }
            }
            produced[i] = kv;
        }
        if let Some(cache) = cache {
            cache.seen = start + n;
        }
        x
    }

    /// The tied LM head: logits = h · Eᵀ. Where the backend's fast matmul wants dimensions
    /// of a multiple of 8 (cuBLAS), E is padded with zero rows to one and the logits are a
    /// view of the first V columns ([`matmul_wt_padded`]); the values are the same.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, T, D]` → `[batch, T, V]`
    pub fn lm_head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        matmul_wt_padded(hidden, self.embed_tokens.val(), B::matmul_dim_multiple())
    }

    /// Logits of every text position, as in training.
    ///
    /// # Shapes
    /// - `ids`: `[batch, T]` → `[batch, T, V]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.lm_head(self.hidden(ids, None))
    }

    /// Logits of every position of `ids`, continuing from and updating `cache` (prefill or
    /// decode).
    ///
    /// # Shapes
    /// - `ids`: `[batch, T]` → `[batch, T, V]`
    pub fn forward_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut HymbaCache<B>,
    ) -> Tensor<B, 3> {
        self.lm_head(self.hidden(ids, Some(cache)))
    }

    /// Logits of the last position only (what generation needs), continuing from `cache`.
    ///
    /// # Shapes
    /// - `ids`: `[batch, T]` → `[batch, V]`
    pub fn forward_last(&self, ids: Tensor<B, 2, Int>, cache: &mut HymbaCache<B>) -> Tensor<B, 2> {
        let h = self.hidden(ids, Some(cache));
        let [b, t, _] = h.dims();
        self.lm_head(h.narrow(1, t - 1, 1))
            .reshape([b, self.config.vocab_size])
    }

    /// Next-token cross-entropy over the text positions, averaged over the target tokens
    /// whose `loss_mask` is 1 (all of them when `None`).
    ///
    /// The model runs on the `T − 1` input positions `ids[:, ..T-1]` only: the last token is
    /// a target and nothing else, and by causality no other position's output depends on
    /// it, so the loss is the one of a forward over all `T`. Besides saving a position, this
    /// keeps the sequence at `T − 1` + meta tokens — 2,048 + 128 for windows of 2,049 ids —
    /// a multiple of 8 that cuBLAS's tensor-core GEMMs take for the attention products
    /// (2,177 rows sent them to burn's slower kernel: `matmul::cublas::supports`).
    ///
    /// # Shapes
    /// - `ids`: `[batch, T]`, `loss_mask`: `[batch, T − 1]` (weights of targets `ids[:, 1..]`)
    pub fn forward_loss(
        &self,
        ids: Tensor<B, 2, Int>,
        loss_mask: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 1> {
        let t = ids.dims()[1];
        let hidden = self.hidden(ids.clone().narrow(1, 0, t - 1), None);
        self.loss_from_hidden(hidden, ids, loss_mask)
    }

    /// The loss half of [`Self::forward_loss`]: LM head and cross-entropy on the final
    /// hidden states of the input positions `ids[:, ..T-1]` (as [`Self::hidden`] returns
    /// them for those ids), against the targets `ids[:, 1..]`.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, T − 1, D]`, `ids`: `[batch, T]`, `loss_mask`: `[batch, T − 1]`
    pub fn loss_from_hidden(
        &self,
        hidden: Tensor<B, 3>,
        ids: Tensor<B, 2, Int>,
        loss_mask: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 1> {
        let [batch, t] = ids.dims();
        let logits = self.lm_head(hidden);
        let logp = log_softmax(upcast(logits), 2);
        let targets = ids.narrow(1, 1, t - 1).reshape([batch, t - 1, 1]);
        let nll = logp.gather(2, targets).reshape([batch, t - 1]).neg();
        match loss_mask {
            None => nll.mean(),
            Some(mask) => {
                let mask = mask.cast(nll.dtype());
                (nll * mask.clone()).sum() / mask.sum().clamp_min(1.0)
            }
        }
    }

    /// The same model (same weights) on another backend; e.g. to check that wgpu computes
    /// what ndarray computes.
    pub fn to_backend<B2: HymbaBackend>(&self, device: &B2::Device) -> Result<Hymba<B2>> {
        let values = params::collect(self);
        let target = Hymba::<B2>::new(&self.config, device)?;
        let mut loader = params::ParamLoader::new(values, device);
        let target = target.map(&mut loader);
        match loader.errors.first() {
            None => Ok(target),
            Some(e) => Err(HymbaError::Input(format!("copying parameters: {e}"))),
        }
    }

    /// Checks token ids against the vocabulary before they reach the embedding.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let v = self.config.vocab_size;
        match ids.iter().find(|&&id| id as usize >= v) {
            Some(id) => Err(HymbaError::Input(format!(
                "token id {id} is outside the vocabulary (size {v})"
            ))),
            None => Ok(()),
        }
    }
}
