//! The hybrid head (`HymbaBlock`, stored under `.mamba.` in HF checkpoints): one input
//! projection feeds attention heads and SSM heads *in parallel*; each branch output is
//! RMS-normalised and scaled (β1, β2), the two are averaged, and `out_proj` maps back to D
//! (Hymba eq. (3), spec §2.3).
//!
//! For the design-roadmap ablation a layer may also run one branch alone
//! ([`MixerKind`]): its `in_proj` then has only that branch's rows, and its output is that
//! branch's normalised output.

use burn::prelude::*;

use crate::HymbaBackend;
use crate::attention::{KeySpan, Mask, repeat_kv, scaled_dot_product};
use crate::config::{HymbaConfig, KvRole, MixerKind};
use crate::linear::Linear;
use crate::norm::RmsNorm;
use crate::rope::Rope;
use crate::ssm::{SsmHeads, SsmState};

/// Keys and values as the attention heads read them: un-repeated (G heads), post-RoPE, for
/// the positions in `span`. A KV producer hands these to its consumers (KV sharing).
#[derive(Debug, Clone)]
pub struct KeyValues<B: Backend> {
    /// `[batch, G, Tk, d_h]`
    pub k: Tensor<B, 4>,
    /// `[batch, G, Tk, d_v]`
    pub v: Tensor<B, 4>,
    /// Positions of the Tk keys.
    pub span: KeySpan,
}

/// What a layer's attention heads need from the rest of the model for one call.
#[derive(Debug)]
pub struct AttentionContext<'a, B: Backend> {
    /// RoPE tables for the query positions of this call.
    pub rope: &'a Rope<B>,
    /// The mask of this layer's kind (global or SWA).
    pub mask: &'a Mask<B>,
}

/// The hybrid head: fused input projection, attention heads ‖ SSM heads, β-scaled average,
/// output projection.
#[derive(Module, Debug)]
pub struct HybridHead<B: Backend> {
    /// D → Q ‖ K ‖ V ‖ x ‖ z (a KV consumer has no K and V rows), spec §2.3 split order.
    pub in_proj: Linear<B>,
    /// The SSM heads (absent in an attention-only layer).
    pub ssm: Option<SsmHeads<B>>,
    /// β1: RMSNorm weight on the attention output (`pre_avg_layernorm1`; absent in an
    /// SSM-only layer).
    pub attn_norm: Option<RmsNorm<B>>,
    /// β2: RMSNorm weight on the SSM output (`pre_avg_layernorm2`; absent in an
    /// attention-only layer).
    pub ssm_norm: Option<RmsNorm<B>>,
    /// d_inner → D.
    pub out_proj: Linear<B>,
    /// Query heads H.
    pub num_heads: usize,
    /// KV heads G.
    pub num_kv_heads: usize,
    /// Query/key head dim.
    pub qk_head_dim: usize,
    /// Value head dim.
    pub v_head_dim: usize,
    /// Whether this layer projects its own K/V (else it reuses a producer's).
    pub owns_kv: bool,
    /// Whether this layer has attention heads.
    pub has_attention: bool,
    /// d_inner: width of each branch's output.
    pub d_inner: usize,
}

impl<B: HymbaBackend> HybridHead<B> {
    /// The hybrid head of layer `layer` (its KV role decides the `in_proj` row count).
    pub fn new(config: &HymbaConfig, layer: usize, device: &B::Device) -> Self {
        let (d, di) = (config.hidden_size, config.d_inner());
        let std = config.initializer_range;
        let kind: MixerKind = config.mixer_kind(layer);
        let norm = || RmsNorm::new(di, config.rms_norm_eps, device);
        Self {
            in_proj: Linear::new(d, config.in_proj_rows(layer), std, device),
            ssm: kind.has_ssm().then(|| SsmHeads::new(config, device)),
            attn_norm: kind.has_attention().then(norm),
            ssm_norm: kind.has_ssm().then(norm),
            out_proj: Linear::new(di, d, std, device),
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            qk_head_dim: config.qk_head_dim(),
            v_head_dim: config.v_head_dim(),
            owns_kv: config.kv_role(layer) == KvRole::Owner,
            has_attention: kind.has_attention(),
            d_inner: di,
        }
    }

    /// Splits `[batch, T, G·d]` into heads: `[batch, G, T, d]`.
    fn heads(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        let [b, t, w] = x.dims();
        x.reshape([b, t, heads, w / heads]).swap_dims(1, 2)
    }

    /// One call of the hybrid head.
    ///
    /// - `kv`: for a KV owner, the cached K/V before this call (`None` without a cache or
    ///   on the first call) and the positions of this call's tokens; for a consumer, the
    ///   producer's K/V of this call.
    /// - returns the output, the K/V the attention read (an owner's own, to be cached and
    ///   shared; `None` without attention heads), and the new SSM state (`None` without
    ///   SSM heads).
    ///
    /// # Shapes
    /// - `u`: `[batch, T, D]` (already `input_layernorm`ed) → `[batch, T, D]`
    pub fn forward(
        &self,
        u: Tensor<B, 3>,
        ctx: &AttentionContext<'_, B>,
        kv: KvInput<B>,
        ssm_state: Option<SsmState<B>>,
    ) -> (Tensor<B, 3>, Option<KeyValues<B>>, Option<SsmState<B>>) {
        let split = self.split_and_attend(u, ctx, kv);
        let attn = match (split.attn, &self.attn_norm) {
            (Some(a), Some(norm)) => Some(norm.forward(a)),
            _ => None,
        };
        let (ssm, state) = match (split.xz, &self.ssm, &self.ssm_norm) {
            (Some((x, z)), Some(heads), Some(norm)) => {
                let (y, state) = heads.forward(x, z, ssm_state);
                (Some(norm.forward(y)), Some(state))
            }
            _ => (None, None),
        };
        let mix = match (attn, ssm) {
            // Hymba eq. (3): β-scaled, normalised branch outputs, averaged.
            (Some(a), Some(s)) => (a + s).div_scalar(2.0),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => unreachable!("a mixer has at least one branch"),
        };
        (self.out_proj.forward(mix), split.kv, state)
    }

    /// The fused input projection, split in the reference order (Q, K, V, x, z; spec §2.3),
    /// and the attention heads run on it. Returns the attention output together with the
    /// SSM heads' inputs, so the two branches see the same projection.
    ///
    /// # Shapes
    /// - `u`: `[batch, T, D]` → `attn`, `x`, `z`: `[batch, T, d_inner]`
    pub fn split_and_attend(
        &self,
        u: Tensor<B, 3>,
        ctx: &AttentionContext<'_, B>,
        kv: KvInput<B>,
    ) -> SplitHeads<B> {
        let [batch, t, _] = u.dims();
        let di = self.d_inner;
        let p = self.in_proj.forward(u);
        if !self.has_attention {
            let x = p.clone().narrow(2, 0, di);
            let z = p.narrow(2, di, di);
            return SplitHeads {
                attn: None,
                kv: None,
                xz: Some((x, z)),
            };
        }
        let qw = self.num_heads * self.qk_head_dim;
        let q = ctx
            .rope
            .apply(Self::heads(p.clone().narrow(2, 0, qw), self.num_heads));
        let (kv, xz_start) = match kv {
            KvInput::Own { past, new_span } => {
                let (kw, vw) = (
                    self.num_kv_heads * self.qk_head_dim,
                    self.num_kv_heads * self.v_head_dim,
                );
                let k = ctx
                    .rope
                    .apply(Self::heads(p.clone().narrow(2, qw, kw), self.num_kv_heads));
                let v = Self::heads(p.clone().narrow(2, qw + kw, vw), self.num_kv_heads);
                let kv = match past {
                    Some(past) => KeyValues {
                        span: past.span.extend(&new_span),
                        k: Tensor::cat(vec![past.k, k], 2),
                        v: Tensor::cat(vec![past.v, v], 2),
                    },
                    None => KeyValues {
                        k,
                        v,
                        span: new_span,
                    },
                };
                (kv, qw + kw + vw)
            }
            KvInput::Shared(kv) => (kv, qw),
        };
        let xz = self.ssm.is_some().then(|| {
            let x = p.clone().narrow(2, xz_start, di);
            let z = p.narrow(2, xz_start + di, di);
            (x, z)
        });
        let attn = scaled_dot_product(
            q,
            repeat_kv(kv.k.clone(), self.num_heads),
            repeat_kv(kv.v.clone(), self.num_heads),
            ctx.mask,
        ); // [b, H, T, d_v]
        let attn = attn.swap_dims(1, 2).reshape([batch, t, di]);
        SplitHeads {
            attn: Some(attn),
            kv: Some(kv),
            xz,
        }
    }
}

/// The input projection after the attention heads ran: what the SSM heads and the
/// β-average still need.
#[derive(Debug)]
pub struct SplitHeads<B: Backend> {
    /// Attention heads' output, `[batch, T, H·d_v = d_inner]` (`None` in an SSM-only layer).
    pub attn: Option<Tensor<B, 3>>,
    /// The K/V the attention read.
    pub kv: Option<KeyValues<B>>,
    /// SSM input x and gate z, `[batch, T, d_inner]` each (`None` in an attention-only
    /// layer).
    pub xz: Option<(Tensor<B, 3>, Tensor<B, 3>)>,
}
/// Where a layer's keys and values come from (cross-layer KV sharing).
#[derive(Debug)]
pub enum KvInput<B: Backend> {
    /// The layer projects its own K/V for positions `new_span`, appended to `past`.
    Own {
        /// Cached K/V of earlier calls.
        past: Option<KeyValues<B>>,
        /// Positions of this call's tokens (with `meta` set when they include meta tokens).
        new_span: KeySpan,
    },
    /// A consumer: the producer's K/V of this call.
    Shared(KeyValues<B>),
}
