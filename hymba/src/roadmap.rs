//! The paper's design roadmap (Tab. 1) as configs: from a Llama-style Transformer and a
//! Mamba-style SSM model, through a sequential and a parallel hybrid, to Hymba with SWA,
//! cross-layer KV sharing and meta tokens, each built from the same code (the layer kinds
//! of [`MixerKind`]) and sized to one parameter budget.
//!
//! Every step is derived from one Hymba config (`base`), so the widths, heads, SSM state
//! and vocabulary are shared and only the design choice changes. Parameter counts are
//! evened out with the FFN width, the one dimension every variant has.

use crate::config::{HymbaConfig, MixerKind, paired_kv_groups};

/// One configuration of the roadmap, in the paper's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Roadmap {
    /// Attention heads only, every layer global, no meta tokens (the paper's "Llama").
    AttentionOnly,
    /// SSM heads only, no meta tokens (the paper's "Mamba").
    SsmOnly,
    /// A. Attention and SSM layers stacked in turn (attention first), all global.
    Sequential,
    /// B. Hymba's hybrid head in every layer, all global, no KV sharing, no meta tokens.
    Parallel,
    /// C. B with sliding-window attention except in the base's global layers.
    LocalGlobal,
    /// D. C with cross-layer KV sharing between neighbouring SWA layers.
    KvSharing,
    /// E. D with the base's meta tokens: Hymba.
    MetaTokens,
}

impl Roadmap {
    /// Every configuration, in the paper's order.
    pub const ALL: [Self; 7] = [
        Self::AttentionOnly,
        Self::SsmOnly,
        Self::Sequential,
        Self::Parallel,
        Self::LocalGlobal,
        Self::KvSharing,
        Self::MetaTokens,
    ];

    /// The row label of Tab. 1.
    pub fn label(self) -> &'static str {
        match self {
            Self::AttentionOnly => "Llama (attention only)",
            Self::SsmOnly => "Mamba (SSM only)",
            Self::Sequential => "A. sequential hybrid",
            Self::Parallel => "B. parallel hybrid",
            Self::LocalGlobal => "C. + local/global attention",
            Self::KvSharing => "D. + KV sharing",
            Self::MetaTokens => "E. + meta tokens",
        }
    }

    /// A short machine name (JSON keys, directories).
    pub fn key(self) -> &'static str {
        match self {
            Self::AttentionOnly => "attention_only",
            Self::SsmOnly => "ssm_only",
            Self::Sequential => "sequential",
            Self::Parallel => "parallel",
            Self::LocalGlobal => "local_global",
            Self::KvSharing => "kv_sharing",
            Self::MetaTokens => "meta_tokens",
        }
    }

    /// This step's config derived from `base` (a Hymba config), before the parameter
    /// budget is matched (see [`match_params`]).
    pub fn config(self, base: &HymbaConfig) -> HymbaConfig {
        let mut c = base.clone();
        let n = c.num_hidden_layers;
        let all_global: Vec<usize> = (0..n).collect();
        let kinds: Vec<MixerKind> = match self {
            Self::AttentionOnly => vec![MixerKind::Attention; n],
            Self::SsmOnly => vec![MixerKind::Ssm; n],
            Self::Sequential => (0..n)
                .map(|i| {
                    if i % 2 == 0 {
                        MixerKind::Attention
                    } else {
                        MixerKind::Ssm
                    }
                })
                .collect(),
            _ => vec![MixerKind::Hybrid; n],
        };
        c.set_mixer_kinds(&kinds);
        match self {
            Self::LocalGlobal => {
                c.kv_reuse_group = Vec::new();
                c.num_memory_tokens = 0;
            }
            Self::KvSharing => {
                c.kv_reuse_group = paired_kv_groups(n, &c.global_attn_idx);
                c.num_memory_tokens = 0;
            }
            Self::MetaTokens => {
                c.kv_reuse_group = paired_kv_groups(n, &c.global_attn_idx);
            }
            _ => {
                c.global_attn_idx = all_global;
                c.kv_reuse_group = Vec::new();
                c.num_memory_tokens = 0;
            }
        }
        c
    }
}

/// Sets the FFN width so that `config` has as close to `target` parameters as the FFN's
/// granularity (3·D·L parameters per unit of width) allows; at least width 1.
pub fn match_params(config: &mut HymbaConfig, target: usize) {
    config.intermediate_size = 0;
    let without_ffn = config.num_params();
    let per_unit = 3 * config.hidden_size * config.num_hidden_layers;
    let need = target.saturating_sub(without_ffn) as f64 / per_unit.max(1) as f64;
    config.intermediate_size = (need.round() as usize).max(1);
}

/// The roadmap's configs at one budget: every step sized to the parameters of Hymba
/// ([`Roadmap::MetaTokens`]) built from `base`.
pub fn roadmap_configs(base: &HymbaConfig) -> Vec<(Roadmap, HymbaConfig)> {
    let target = Roadmap::MetaTokens.config(base).num_params();
    Roadmap::ALL
        .iter()
        .map(|&step| {
            let mut c = step.config(base);
            match_params(&mut c, target);
            (step, c)
        })
        .collect()
}

/// A pure-attention Transformer with the parameters of `hymba` (every layer global, no SSM,
/// no meta tokens, no KV sharing), built from the same code: the baseline of
/// `hymba-eval bench generate`.
pub fn attention_baseline(hymba: &HymbaConfig) -> HymbaConfig {
    let mut c = Roadmap::AttentionOnly.config(hymba);
    match_params(&mut c, hymba.num_params());
    c
}

/// Parameters of the mixers' attention branch and SSM branch, summed over layers: the
/// attention share is what the paper's open question 1 varies. The attention branch owns
/// its `in_proj` rows (Q, K, V) and β1; the SSM branch its rows (x, z), conv, x/dt
/// projections, A, D, inner norms and β2. `out_proj` and the FFN are shared and not counted.
pub fn branch_params(config: &HymbaConfig) -> (usize, usize) {
    let (d, di) = (config.hidden_size, config.d_inner());
    let (s, r) = (config.mamba_d_state, config.dt_rank());
    let conv_bias = if config.mamba_conv_bias { di } else { 0 };
    let (mut attn, mut ssm) = (0, 0);
    for i in 0..config.num_hidden_layers {
        let kind = config.mixer_kind(i);
        if kind.has_ssm() {
            ssm += d * 2 * di
                + di * config.mamba_d_conv
                + conv_bias
                + (r + 2 * s) * di
                + r * di
                + di
                + di * s
                + di
                + r
                + 2 * s
                + di;
        }
        if kind.has_attention() {
            let ssm_rows = if kind.has_ssm() { 2 * di } else { 0 };
            attn += d * (config.in_proj_rows(i) - ssm_rows) + di;
        }
    }
    (attn, ssm)
}

/// The attention-width sweep of the paper's open question 1 (how much of a hybrid head
/// should be attention): Hymba from `base` with the query width (and with it the key
/// width) scaled by `factor`, re-sized to `target` parameters through the FFN.
pub fn with_attention_width(base: &HymbaConfig, factor: f64, target: usize) -> HymbaConfig {
    let mut c = Roadmap::MetaTokens.config(base);
    let heads = c.num_attention_heads;
    // Head dim stays even (RoPE) and above 2 (NTK scaling).
    let head_dim =
        ((c.hidden_size as f64 * factor / heads as f64 / 2.0).round() as usize * 2).max(4);
    c.attn_hidden_size = (head_dim * heads) as i64;
    match_params(&mut c, target);
    c
}
