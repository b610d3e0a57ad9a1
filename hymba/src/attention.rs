//! The attention heads of the hybrid head: GQA over the Q/K/V slices of the input
//! projection, with the SWA + meta-token mask (spec §2.3, "Attention branch").
//!
//! The branch has no parameters of its own (the reference builds it with
//! `attn_only_wo_proj=True`): Q, K and V come from the mixer's single `in_proj`, and its
//! output, `H · d_v = d_inner` wide, is averaged with the SSM heads' output before `out_proj`.

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::HymbaBackend;
use crate::matmul::matmul;
use crate::precision::upcast;
pub use crate::softmax::MaskRule;
use crate::softmax::masked_softmax;

/// Where the keys of one attention call sit in the `[meta; text]` sequence: the `meta`
/// meta-token positions `0..meta`, then the text positions `text`.
///
/// Without a cache this is the whole sequence; with one, an SWA layer's cache holds the meta
/// entries plus only the last `window` text entries, so `text` starts later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpan {
    /// Number of meta-token keys (positions `0..meta`).
    pub meta: usize,
    /// Positions of the remaining keys.
    pub text: Range<usize>,
}

impl KeySpan {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.meta + self.text.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The span of these keys followed by `new` (a cache append).
    pub fn extend(&self, new: &KeySpan) -> KeySpan {
        if self.text.is_empty() {
            KeySpan {
                meta: self.meta + new.meta,
                text: new.text.clone(),
            }
        } else {
            KeySpan {
                meta: self.meta,
                text: self.text.start..new.text.end,
            }
        }
    }
}

/// How a block of queries is masked.
#[derive(Debug, Clone)]
pub enum Mask<B: Backend> {
    /// Every key is visible.
    None,
    /// Keys are all positions `0..=q` for the last query: plain causal masking, aligned at
    /// the bottom-right corner.
    Causal,
    /// The Hymba rule over positions (SWA band, meta tokens), evaluated per element by the
    /// masked softmax: nothing of size `Tq × Tk` is built.
    Rule(MaskRule),
    /// An explicit `[Tq, Tk]` mask, `true` = hidden (any pattern; runs the tensor-op path).
    Explicit(Tensor<B, 2, Bool>),
}

/// The Hymba mask (spec §2.3 step 4): key k is visible to query q iff
/// `k ≤ q ∧ (global ∨ q − k ≤ window ∨ k < num_meta)` — meta tokens are always visible,
/// the SWA band holds the query and the `window` tokens before it.
///
/// `window = None` means a global layer.
pub fn hymba_mask<B: Backend>(
    queries: Range<usize>,
    keys: &KeySpan,
    window: Option<usize>,
    num_meta: usize,
) -> Mask<B> {
    let in_band = window.is_none_or(|w| {
        // No text key is older than the band of the last (farthest) query.
        keys.text.is_empty() || keys.text.start + w + 1 >= queries.end
    });
    // Keys end with the queries' own positions, so bottom-right-aligned causal masking is
    // exactly `k ≤ q` even when an SWA cache dropped old entries in between.
    if in_band && keys.text.end == queries.end {
        return if queries.len() == 1 {
            Mask::None
        } else {
            Mask::Causal
        };
    }
    Mask::Rule(MaskRule {
        q_start: queries.start,
        key_meta: keys.meta,
        text_start: keys.text.start,
        window,
        num_meta,
    })
}

/// GQA: repeats each of the G KV heads H/G times (HF `repeat_kv`: query head h reads KV
/// head h / (H/G)).
///
/// # Shapes
/// - `x`: `[batch, G, T, d]` → `[batch, H, T, d]`
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, num_heads: usize) -> Tensor<B, 4> {
    let [b, g, t, d] = x.dims();
    let rep = num_heads / g;
    if rep == 1 {
        return x;
    }
    x.unsqueeze_dim::<5>(2)
        .expand([b, g, rep, t, d])
        .reshape([b, num_heads, t, d])
}

/// Scaled dot-product attention, `softmax(q·kᵀ/√d_h + mask)·v`: the one function every
/// attention product goes through. `d_v` may differ from `d_h`.
///
/// Both products run through the model's [`matmul`] (cuBLAS on CUDA), and the scores are
/// softmaxed in f32 whatever the compute dtype. burn 0.21's own `attention` op, under
/// `Autodiff`, decomposes into burn's generic matmul, two masking passes and a NaN-guarded
/// softmax: on an H100 that was 6.8 ms per layer (forward + backward, hymba-125m, 2 × 2176
/// tokens; `bench/results/step_hymba-125m_f32_b2_burn-attention_h100_2026-11-27.json`). Every row here has at least
/// one visible key (each query sees itself), so the plain softmax cannot meet an all-masked
/// row.
///
/// The scale is applied to q, before the product: `1/√d_h` is a power of two for the
/// presets' head sizes (64), so this is exact in any dtype.
///
/// # Shapes
/// - `q`: `[batch, H, Tq, d_h]`, `k`: `[batch, H, Tk, d_h]`, `v`: `[batch, H, Tk, d_v]`
/// - returns `[batch, H, Tq, d_v]`
pub fn scaled_dot_product<B: HymbaBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Mask<B>,
) -> Tensor<B, 4> {
    let [b, h, tq, d_h] = q.dims();
    let tk = k.dims()[2];
    let scale = (d_h as f64).sqrt().recip();
    let scores = matmul(q.mul_scalar(scale), k.swap_dims(2, 3));
    let rule = match mask {
        Mask::None => MaskRule::none(tk),
        Mask::Causal => MaskRule::causal(tq, tk),
        Mask::Rule(rule) => *rule,
        Mask::Explicit(hidden) => {
            // Any pattern: the tensor ops.
            let scores = upcast(scores).mask_fill(
                hidden
                    .clone()
                    .reshape([1, 1, tq, tk])
                    .expand([b, h, tq, tk]),
                f32::NEG_INFINITY,
            );
            return matmul(softmax(scores, 3).cast(v.dtype()), v);
        }
    };
    let probs = masked_softmax(scores, rule);
    matmul(probs.cast(v.dtype()), v)
}
