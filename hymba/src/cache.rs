//! The inference cache (spec §4): K/V for KV-owning layers only (consumers read their
//! producer's), conv history and SSM state for every layer.
//!
//! SWA layers keep the meta-token entries plus the last `window` text entries; global
//! layers keep everything. Unlike the reference, whose decode sees one token less than its
//! training mask, a decode step here sees exactly what the full forward's mask allows.

use burn::prelude::*;

use crate::attention::KeySpan;
use crate::config::HymbaConfig;
use crate::mixer::KeyValues;
use crate::ssm::SsmState;

/// Cached state of one layer.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// Keys/values (KV-owning layers only).
    pub kv: Option<KeyValues<B>>,
    /// Conv history and SSM state.
    pub ssm: Option<SsmState<B>>,
    /// Whether this layer owns a KV cache.
    pub owns_kv: bool,
    /// SWA window of this layer (`None` for global layers).
    pub window: Option<usize>,
}

/// The whole model's cache for a batch of sequences advancing in lock-step.
#[derive(Debug, Clone)]
pub struct HymbaCache<B: Backend> {
    /// One entry per layer.
    pub layers: Vec<LayerCache<B>>,
    /// Positions consumed so far, meta tokens included (the next token's position).
    pub seen: usize,
}

impl<B: Backend> HymbaCache<B> {
    /// An empty cache: the first call through it prepends the meta tokens.
    pub fn new(config: &HymbaConfig) -> Self {
        let layers = (0..config.num_hidden_layers)
            .map(|i| LayerCache {
                kv: None,
                ssm: None,
                owns_kv: config.caches_kv(i),
                window: (!config.is_global(i)).then_some(config.sliding_window),
            })
            .collect();
        Self { layers, seen: 0 }
    }

    /// Whether nothing has been fed through the cache yet.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Drops SWA entries no query at or after position `next` can see: text keys older than
    /// `next − window`. Meta entries stay (they are always visible).
    pub(crate) fn trim_before(&mut self, next: usize) {
        for layer in &mut self.layers {
            let (Some(window), Some(kv)) = (layer.window, layer.kv.as_mut()) else {
                continue;
            };
            let keep_from = next.saturating_sub(window).max(kv.span.text.start);
            let drop = keep_from - kv.span.text.start;
            if drop == 0 {
                continue;
            }
            let meta = kv.span.meta;
            let kept = kv.span.text.end - keep_from;
            let cut = |t: Tensor<B, 4>| {
                let tail = t.clone().narrow(2, meta + drop, kept);
                if meta == 0 {
                    tail
                } else {
                    Tensor::cat(vec![t.narrow(2, 0, meta), tail], 2)
                }
            };
            kv.k = cut(kv.k.clone());
            kv.v = cut(kv.v.clone());
            kv.span = KeySpan {
                meta,
                text: keep_from..kv.span.text.end,
            };
        }
    }

    /// This cache (of batch 1) for `batch` sequences: every tensor repeated along the batch.
    /// How [`crate::Hymba::meta_cache`] hands one meta-token state to a whole batch.
    pub fn repeat_batch(mut self, batch: usize) -> Self {
        if batch == 1 {
            return self;
        }
        for layer in &mut self.layers {
            if let Some(kv) = layer.kv.as_mut() {
                kv.k = kv.k.clone().repeat_dim(0, batch);
                kv.v = kv.v.clone().repeat_dim(0, batch);
            }
            if let Some(state) = layer.ssm.as_mut() {
                state.ssm = state.ssm.clone().repeat_dim(0, batch);
                state.conv = state.conv.clone().repeat_dim(0, batch);
            }
        }
        self
    }

    /// Bytes held by the cache's tensors, by kind: (KV, SSM state, conv history).
    pub fn bytes(&self) -> (usize, usize, usize) {
        let size = |dims: &[usize], elem: usize| dims.iter().product::<usize>() * elem;
        let mut out = (0, 0, 0);
        for layer in &self.layers {
            if let Some(kv) = &layer.kv {
                let e = kv.k.dtype().size();
                out.0 += size(&kv.k.dims(), e) + size(&kv.v.dims(), e);
            }
            if let Some(s) = &layer.ssm {
                out.1 += size(&s.ssm.dims(), s.ssm.dtype().size());
                out.2 += size(&s.conv.dims(), s.conv.dtype().size());
            }
        }
        out
    }
}
