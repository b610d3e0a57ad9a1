//! `HymbaConfig`: the model hyper-parameters under their HF `config.json` key names, the
//! presets of the paper (Tab. 11) and the derived sizes every module reads.
//!
//! The config is the single place that knows which layers are global (full attention), which
//! use sliding-window attention (SWA), and which layers own their KV cache or borrow it from a
//! producer (cross-layer KV sharing, spec §1.1).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{HymbaError, Result};

/// Names accepted by [`HymbaConfig::preset`].
pub const PRESETS: [&str; 4] = ["tiny", "hymba-125m", "hymba-350m", "hymba-1.5b"];

/// `mamba_dt_rank`: a number, or `"auto"` = ⌈hidden / 16⌉ as in Mamba.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtRank {
    /// An explicit rank.
    Fixed(usize),
    /// The string `"auto"`.
    Auto,
}

impl Serialize for DtRank {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(r) => s.serialize_u64(*r as u64),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for DtRank {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "auto" => Ok(Self::Auto),
            serde_json::Value::Number(n) if n.as_u64().is_some() => {
                Ok(Self::Fixed(n.as_u64().unwrap_or_default() as usize))
            }
            other => Err(serde::de::Error::custom(format!(
                "expected a non-negative integer or \"auto\", got {other}"
            ))),
        }
    }
}

/// How a layer gets the keys and values its attention heads read (cross-layer KV sharing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvRole {
    /// The layer projects its own K/V (a group producer, or a layer in no group) and owns a
    /// KV cache.
    Owner,
    /// The layer has no K/V projection rows; it reuses the K/V of layer `producer`.
    Consumer {
        /// Index of the layer whose K/V this layer reads.
        producer: usize,
    },
}

/// What a layer's mixer runs: Hymba's hybrid head, or one of its two branches alone.
///
/// Written as the HF config's `layer_type` list (`"h"`, `"a"`, `"m"`; the released Hymba
/// has only `"h"`). The single-branch kinds exist for the paper's design roadmap (Tab. 1):
/// a Llama-style attention-only model, a Mamba-style SSM-only model and a sequential hybrid
/// (alternating single-branch layers) are built from the same code as Hymba.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MixerKind {
    /// Attention heads and SSM heads in parallel, β-averaged (`"h"`).
    Hybrid,
    /// Attention heads only (`"a"`): `in_proj` has no x/z rows, no SSM parameters.
    Attention,
    /// SSM heads only (`"m"`): `in_proj` has no Q/K/V rows, no KV cache.
    Ssm,
}

impl MixerKind {
    /// The `layer_type` letter.
    pub fn letter(self) -> &'static str {
        match self {
            Self::Hybrid => "h",
            Self::Attention => "a",
            Self::Ssm => "m",
        }
    }

    /// Whether the layer has attention heads.
    pub fn has_attention(self) -> bool {
        self != Self::Ssm
    }

    /// Whether the layer has SSM heads.
    pub fn has_ssm(self) -> bool {
        self != Self::Attention
    }
}

/// Hymba hyper-parameters, read from and written to HF `config.json` key names (spec §1.1).
///
/// Keys the model does not use (`auto_map`, `torch_dtype`, …) are kept in `extra` so a
/// config read from a checkpoint is written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HymbaConfig {
    /// `"hymba"`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size (32001 for the LLaMA-2 tokenizer plus `[PAD]`).
    pub vocab_size: usize,
    /// Model width D.
    pub hidden_size: usize,
    /// Number of hybrid layers.
    pub num_hidden_layers: usize,
    /// Attention (query) heads H.
    pub num_attention_heads: usize,
    /// Key/value heads G (GQA: H/G query heads share one KV head).
    pub num_key_value_heads: usize,
    /// Width of the query projection; -1 means `hidden_size`.
    #[serde(default = "minus_one")]
    pub attn_hidden_size: i64,
    /// Query/key head dim; -1 means `attn_hidden_size / num_attention_heads`.
    #[serde(default = "minus_one")]
    pub kq_head_dim: i64,
    /// Value head dim as written in the file. The reference block overwrites it with
    /// `mamba_expand * hidden_size / num_attention_heads` (so that the attention output has
    /// the SSM branch's width); [`HymbaConfig::v_head_dim`] returns that derived value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v_head_dim: Option<i64>,
    /// QK normalisation; only `"none"` exists in Hymba.
    #[serde(default = "default_kq_norm")]
    pub kq_norm: String,
    /// SwiGLU FFN hidden width.
    pub intermediate_size: usize,
    /// Activation of the SSM conv (`silu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Activation of the FFN gate (`silu`).
    #[serde(default = "default_act")]
    pub mlp_hidden_act: String,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// SSM state size S per channel.
    pub mamba_d_state: usize,
    /// Width of the causal depthwise conv.
    pub mamba_d_conv: usize,
    /// d_inner = `mamba_expand * hidden_size`.
    pub mamba_expand: usize,
    /// Rank R of the Δ projection.
    #[serde(default = "default_dt_rank")]
    pub mamba_dt_rank: DtRank,
    /// Whether the depthwise conv has a bias (true in Hymba).
    #[serde(default = "yes")]
    pub mamba_conv_bias: bool,
    /// Whether in/out/x projections have biases (false in Hymba; true is not supported).
    #[serde(default)]
    pub mamba_proj_bias: bool,
    /// RMSNorms on dt, B and C (true in Hymba; false is not supported).
    #[serde(default = "yes")]
    pub mamba_inner_layernorms: bool,
    /// SSM head groups per layer (1 in Hymba; others are not supported).
    #[serde(default = "one")]
    pub num_mamba: usize,
    /// Per-layer conv width (`{"0": 3200, …}`); must equal d_inner when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_dim: Option<BTreeMap<String, usize>>,
    /// Rotary position embedding on Q and K.
    #[serde(default = "yes")]
    pub rope: bool,
    /// RoPE base before NTK scaling.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// `"ntk"` for static NTK scaling of the base (spec §2.3), anything else for plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// Longest context the NTK base is scaled for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Context length of the original (unscaled) RoPE.
    #[serde(default = "default_orig_max_pos")]
    pub orig_max_position_embeddings: usize,
    /// SWA window: a query sees itself and this many earlier text tokens.
    pub sliding_window: usize,
    /// Layers with full (global) attention; all others use SWA.
    pub global_attn_idx: Vec<usize>,
    /// Cross-layer KV sharing groups: the first index of each group is the producer, the
    /// rest are consumers that reuse its K/V.
    #[serde(default)]
    pub kv_reuse_group: Vec<Vec<usize>>,
    /// Weight (not cache) reuse between layers; not used by Hymba, must be false.
    #[serde(default)]
    pub kv_weight_reuse: bool,
    /// Number of meta tokens M prepended to every sequence.
    #[serde(default)]
    pub num_memory_tokens: usize,
    /// Meta tokens interspersed every k tokens; Hymba uses 0 (prefix only), the only value
    /// supported.
    #[serde(default)]
    pub memory_tokens_interspersed_every: usize,
    /// LM head tied to the embedding (true in Hymba; untied is not supported).
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// Std of the normal init of linear, conv and embedding weights.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Experts in the FFN "MoE"; Hymba has 1 (a plain FFN), the only value supported.
    #[serde(default = "one")]
    pub num_experts: usize,
    /// Beginning-of-sequence id.
    #[serde(default = "one")]
    pub bos_token_id: usize,
    /// End-of-sequence id.
    #[serde(default = "two")]
    pub eos_token_id: usize,
    /// Padding id in the config (its embedding row is zeroed at init).
    #[serde(default)]
    pub pad_token_id: usize,
    /// Every other key of the file, kept verbatim for a faithful round trip.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_model_type() -> String {
    "hymba".into()
}
fn minus_one() -> i64 {
    -1
}
fn default_kq_norm() -> String {
    "none".into()
}
fn default_act() -> String {
    "silu".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_dt_rank() -> DtRank {
    DtRank::Auto
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    8192
}
fn default_orig_max_pos() -> usize {
    2048
}
fn default_init_range() -> f64 {
    0.02
}

/// KV-sharing groups as in Hymba-1.5B, generalised to any depth: every run of consecutive
/// SWA layers between global layers is cut into pairs, the first group of an odd-length run
/// being a triple. For 32 layers with globals {0, 15, 31} this gives exactly the released
/// `[[1,2],…,[13,14],[16,17,18],[19,20],…,[29,30]]`.
pub fn paired_kv_groups(num_layers: usize, global: &[usize]) -> Vec<Vec<usize>> {
    let mut groups = Vec::new();
    let mut run: Vec<usize> = Vec::new();
    let flush = |run: &mut Vec<usize>, groups: &mut Vec<Vec<usize>>| {
        let mut rest = &run[..];
        if rest.len() % 2 == 1 && rest.len() >= 3 {
            groups.push(rest[..3].to_vec());
            rest = &rest[3..];
        }
        groups.extend(
            rest.chunks(2)
                .filter(|c| c.len() == 2)
                .map(<[usize]>::to_vec),
        );
        run.clear();
    };
    for i in 0..num_layers {
        if global.contains(&i) {
            flush(&mut run, &mut groups);
        } else {
            run.push(i);
        }
    }
    flush(&mut run, &mut groups);
    groups
}

impl HymbaConfig {
    /// A config by preset name: `tiny` (tests: width 64, 4 layers, window 16, 8 meta tokens),
    /// `hymba-125m`, `hymba-350m` (paper Tab. 11) or `hymba-1.5b` (the released config).
    ///
    /// For 125M/350M the paper gives blocks, width, heads, query groups, MLP width and window
    /// only. The rest is chosen here, following the 1.5B model: 128 meta tokens, dt_rank
    /// "auto" (⌈D/16⌉), global layers first/middle/last at `{0, L/2-1, L-1}` (1.5B: {0,15,31}),
    /// KV groups from [`paired_kv_groups`], the same NTK RoPE (8K scaled from 2K) and the
    /// LLaMA-2 vocabulary.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "hymba-125m" => Ok(Self::paper_preset(24, 512, 8, 4, 1664)),
            "hymba-350m" => Ok(Self::paper_preset(32, 768, 12, 4, 2432)),
            "hymba-1.5b" => Ok(Self::hymba_1_5b()),
            other => Err(HymbaError::UnknownPreset(other.to_string())),
        }
    }

    /// The released `nvidia/Hymba-1.5B-Base` architecture (spec §1.1): 1,522,797,824 params.
    pub fn hymba_1_5b() -> Self {
        let mut c = Self::paper_preset(32, 1600, 25, 5, 5504);
        c.mamba_dt_rank = DtRank::Fixed(100);
        c.conv_dim = Some((0..32).map(|i| (i.to_string(), 3200)).collect());
        c
    }

    /// The test config: every mechanism present (2 global layers, 2 SWA layers sharing one
    /// KV cache, meta tokens), small enough for CPU tests.
    pub fn tiny() -> Self {
        let mut c = Self::paper_preset(4, 64, 4, 2, 128);
        c.vocab_size = 512;
        c.mamba_d_state = 8;
        c.sliding_window = 16;
        c.num_memory_tokens = 8;
        c.global_attn_idx = vec![0, 3];
        c.kv_reuse_group = vec![vec![1, 2]];
        c.max_position_embeddings = 1024;
        c.orig_max_position_embeddings = 256;
        c
    }

    fn paper_preset(
        layers: usize,
        hidden: usize,
        heads: usize,
        kv_heads: usize,
        ffn: usize,
    ) -> Self {
        let global = vec![0, layers / 2 - 1, layers - 1];
        Self {
            model_type: default_model_type(),
            vocab_size: 32001,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            attn_hidden_size: -1,
            kq_head_dim: -1,
            v_head_dim: Some((2 * hidden / heads) as i64),
            kq_norm: default_kq_norm(),
            intermediate_size: ffn,
            hidden_act: default_act(),
            mlp_hidden_act: default_act(),
            rms_norm_eps: 1e-6,
            mamba_d_state: 16,
            mamba_d_conv: 4,
            mamba_expand: 2,
            mamba_dt_rank: default_dt_rank(),
            mamba_conv_bias: true,
            mamba_proj_bias: false,
            mamba_inner_layernorms: true,
            num_mamba: 1,
            conv_dim: None,
            rope: true,
            rope_theta: 10_000.0,
            rope_type: Some("ntk".into()),
            max_position_embeddings: 8192,
            orig_max_position_embeddings: 2048,
            sliding_window: 1024,
            kv_reuse_group: paired_kv_groups(layers, &global),
            global_attn_idx: global,
            kv_weight_reuse: false,
            num_memory_tokens: 128,
            memory_tokens_interspersed_every: 0,
            tie_word_embeddings: true,
            initializer_range: 0.02,
            num_experts: 1,
            bos_token_id: 1,
            eos_token_id: 2,
            pad_token_id: 0,
            extra: BTreeMap::from([
                (
                    "architectures".into(),
                    serde_json::json!(["HymbaForCausalLM"]),
                ),
                ("layer_type".into(), serde_json::json!(vec!["h"; layers])),
            ]),
        }
    }

    /// Parses and validates `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Self =
            serde_path_to_error::deserialize(&mut de).map_err(|e| HymbaError::ConfigParse {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| HymbaError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// The config as pretty `config.json` text (HF key names).
    pub fn to_json_string(&self) -> String {
        // A struct of plain fields and a map of JSON values always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Writes `config.json`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json_string()).map_err(|source| HymbaError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// d_inner = expand · D: width of the SSM branch and of the attention output.
    pub fn d_inner(&self) -> usize {
        self.mamba_expand * self.hidden_size
    }

    /// Rank R of the Δ projection.
    pub fn dt_rank(&self) -> usize {
        match self.mamba_dt_rank {
            DtRank::Fixed(r) => r,
            DtRank::Auto => self.hidden_size.div_ceil(16),
        }
    }

    /// Width of the attention hidden state (`attn_hidden_size`, -1 → `hidden_size`).
    fn attn_hidden(&self) -> usize {
        if self.attn_hidden_size > 0 {
            self.attn_hidden_size as usize
        } else {
            self.hidden_size
        }
    }

    /// Query/key head dim d_h (64 in every preset).
    pub fn qk_head_dim(&self) -> usize {
        if self.kq_head_dim > 0 {
            self.kq_head_dim as usize
        } else {
            self.attn_hidden() / self.num_attention_heads.max(1)
        }
    }

    /// Value head dim d_v = d_inner / H (128 in every preset): the reference overwrites the
    /// configured value with this so that the attention output is d_inner wide, like the SSM
    /// output it is averaged with.
    pub fn v_head_dim(&self) -> usize {
        self.d_inner() / self.num_attention_heads.max(1)
    }

    /// Width of the Q slice of `in_proj`: H · d_h.
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.qk_head_dim()
    }

    /// Width of the K slice of a KV-owning layer's `in_proj`: G · d_h.
    pub fn k_width(&self) -> usize {
        self.num_key_value_heads * self.qk_head_dim()
    }

    /// Width of the V slice of a KV-owning layer's `in_proj`: G · d_v.
    pub fn v_width(&self) -> usize {
        self.num_key_value_heads * self.v_head_dim()
    }

    /// Output rows of layer `i`'s `in_proj`: Q (+ K + V if it owns its KV) + x + z, without
    /// the branch a single-branch layer lacks.
    pub fn in_proj_rows(&self, layer: usize) -> usize {
        let kind = self.mixer_kind(layer);
        let kv = match self.kv_role(layer) {
            KvRole::Owner => self.k_width() + self.v_width(),
            KvRole::Consumer { .. } => 0,
        };
        let attn = if kind.has_attention() {
            self.q_width() + kv
        } else {
            0
        };
        let ssm = if kind.has_ssm() {
            2 * self.d_inner()
        } else {
            0
        };
        attn + ssm
    }

    /// The mixer of layer `i`, from `layer_type` (hybrid when absent).
    pub fn mixer_kind(&self, layer: usize) -> MixerKind {
        let letter = self
            .extra
            .get("layer_type")
            .and_then(|v| v.as_array())
            .and_then(|a| a.get(layer))
            .and_then(|v| v.as_str());
        match letter {
            Some("a") => MixerKind::Attention,
            Some("m") => MixerKind::Ssm,
            _ => MixerKind::Hybrid,
        }
    }

    /// Sets every layer's mixer (writes `layer_type`).
    pub fn set_mixer_kinds(&mut self, kinds: &[MixerKind]) {
        let letters: Vec<&str> = kinds.iter().map(|k| k.letter()).collect();
        self.extra
            .insert("layer_type".into(), serde_json::json!(letters));
    }

    /// Whether layer `i` owns a KV cache: a KV owner with attention heads.
    pub fn caches_kv(&self, layer: usize) -> bool {
        self.kv_role(layer) == KvRole::Owner && self.mixer_kind(layer).has_attention()
    }

    /// Whether layer `i` uses full attention (else sliding-window attention).
    pub fn is_global(&self, layer: usize) -> bool {
        self.global_attn_idx.contains(&layer)
    }

    /// Whether layer `i` owns its K/V or reuses a producer's (cross-layer KV sharing).
    pub fn kv_role(&self, layer: usize) -> KvRole {
        for group in &self.kv_reuse_group {
            if let Some(pos) = group.iter().position(|&l| l == layer)
                && pos > 0
            {
                return KvRole::Consumer { producer: group[0] };
            }
        }
        KvRole::Owner
    }

    /// Number of layers that own a KV cache (17 for Hymba-1.5B).
    pub fn num_kv_owning_layers(&self) -> usize {
        (0..self.num_hidden_layers)
            .filter(|&i| self.caches_kv(i))
            .count()
    }

    /// RoPE base after static NTK scaling (spec §2.3):
    /// `θ · (2·max_pos/orig_max_pos − 1)^(d/(d−2))`, ≈ 74534.83 for Hymba-1.5B.
    pub fn rope_base(&self) -> f64 {
        if self.rope_type.as_deref() != Some("ntk") {
            return self.rope_theta;
        }
        let d = self.qk_head_dim() as f64;
        let factor = 2.0 * self.max_position_embeddings as f64
            / self.orig_max_position_embeddings as f64
            - 1.0;
        self.rope_theta * factor.powf(d / (d - 2.0))
    }

    /// Parameters of layer `i`, computed from the config alone (no allocation).
    pub fn layer_num_params(&self, layer: usize) -> usize {
        let (d, di, s, r) = (
            self.hidden_size,
            self.d_inner(),
            self.mamba_d_state,
            self.dt_rank(),
        );
        let conv_bias = if self.mamba_conv_bias { di } else { 0 };
        let kind = self.mixer_kind(layer);
        let ssm = di * self.mamba_d_conv + conv_bias      // conv1d
            + (r + 2 * s) * di                            // x_proj
            + r * di + di                                 // dt_proj (+ bias)
            + di * s + di                                 // A_log, D
            + r + 2 * s                                   // dt/B/C norms
            + di; // β2 (pre-average norm)
        let attention = di; // β1 (pre-average norm)
        let mixer = d * self.in_proj_rows(layer)          // in_proj
            + if kind.has_ssm() { ssm } else { 0 }
            + if kind.has_attention() { attention } else { 0 }
            + di * d; // out_proj
        let ffn = 3 * d * self.intermediate_size;
        2 * d + mixer + ffn // input + pre-FFN norms
    }

    /// Total parameters, counted from the config alone so that the 1.5B model can be
    /// checked without allocating 6 GB: embedding (tied head) + meta tokens + layers + final
    /// norm. Equals `Hymba::num_params()` of an instantiated model.
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let layers: usize = (0..self.num_hidden_layers)
            .map(|i| self.layer_num_params(i))
            .sum();
        self.vocab_size * d + self.num_memory_tokens * d + layers + d
    }

    /// Rejects configs the model cannot run, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        let err = |key: &'static str, reason: String| Err(HymbaError::Config { key, reason });
        let positive: [(&'static str, usize); 9] = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("intermediate_size", self.intermediate_size),
            ("mamba_d_state", self.mamba_d_state),
            ("mamba_d_conv", self.mamba_d_conv),
            ("mamba_expand", self.mamba_expand),
        ];
        for (key, value) in positive {
            if value == 0 {
                return err(key, "must be positive".into());
            }
        }
        // Far above any Hymba (1.5B: hidden 1600, 32 layers, vocab 32001), low enough that every
        // size product derived below (d_inner, projection rows, parameter counts) fits in 64
        // bits: a config.json with absurd numbers is refused here, not overflowed later.
        let dt_rank = match self.mamba_dt_rank {
            DtRank::Fixed(r) => r as u64,
            DtRank::Auto => 0,
        };
        let bounded: [(&'static str, u64, u64); 16] = [
            ("vocab_size", self.vocab_size as u64, 1 << 24),
            ("hidden_size", self.hidden_size as u64, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers as u64, 1 << 12),
            (
                "num_attention_heads",
                self.num_attention_heads as u64,
                1 << 12,
            ),
            (
                "num_key_value_heads",
                self.num_key_value_heads as u64,
                1 << 12,
            ),
            ("intermediate_size", self.intermediate_size as u64, 1 << 22),
            ("mamba_d_state", self.mamba_d_state as u64, 1 << 12),
            ("mamba_d_conv", self.mamba_d_conv as u64, 1 << 8),
            ("mamba_expand", self.mamba_expand as u64, 1 << 6),
            ("mamba_dt_rank", dt_rank, 1 << 20),
            (
                "attn_hidden_size",
                self.attn_hidden_size.max(0) as u64,
                1 << 20,
            ),
            ("kq_head_dim", self.kq_head_dim.max(0) as u64, 1 << 16),
            ("num_memory_tokens", self.num_memory_tokens as u64, 1 << 16),
            ("sliding_window", self.sliding_window as u64, 1 << 32),
            (
                "max_position_embeddings",
                self.max_position_embeddings as u64,
                1 << 32,
            ),
            (
                "orig_max_position_embeddings",
                self.orig_max_position_embeddings as u64,
                1 << 32,
            ),
        ];
        for (key, value, limit) in bounded {
            if value > limit {
                return err(
                    key,
                    format!("{value} is above this build's limit of {limit}"),
                );
            }
        }
        if self.mamba_d_conv < 2 {
            return err("mamba_d_conv", "must be at least 2".into());
        }
        if self.sliding_window == 0 {
            return err("sliding_window", "must be positive".into());
        }
        if self.dt_rank() == 0 {
            return err("mamba_dt_rank", "must be positive".into());
        }
        if self.attn_hidden_size == 0 || self.attn_hidden_size < -1 {
            return err("attn_hidden_size", "must be positive or -1".into());
        }
        if self.kq_head_dim == 0 || self.kq_head_dim < -1 {
            return err("kq_head_dim", "must be positive or -1".into());
        }
        let (h, g) = (self.num_attention_heads, self.num_key_value_heads);
        if self.kq_head_dim == -1 && !self.attn_hidden().is_multiple_of(h) {
            return err(
                "num_attention_heads",
                format!(
                    "{h} heads do not divide attention width {}",
                    self.attn_hidden()
                ),
            );
        }
        if h % g != 0 {
            return err(
                "num_key_value_heads",
                format!("{g} KV heads do not divide {h} attention heads"),
            );
        }
        if !self.d_inner().is_multiple_of(h) {
            return err(
                "num_attention_heads",
                format!(
                    "{h} heads do not divide d_inner {} (value head dim = d_inner / heads)",
                    self.d_inner()
                ),
            );
        }
        if self.rope && !self.qk_head_dim().is_multiple_of(2) {
            return err(
                "kq_head_dim",
                format!("RoPE needs an even head dim, got {}", self.qk_head_dim()),
            );
        }
        if self.rope_type.as_deref() == Some("ntk") {
            if self.orig_max_position_embeddings == 0 {
                return err("orig_max_position_embeddings", "must be positive".into());
            }
            if self.qk_head_dim() <= 2 {
                return err("kq_head_dim", "NTK RoPE needs a head dim above 2".into());
            }
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return err("rms_norm_eps", "must be positive".into());
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return err("rope_theta", "must be positive".into());
        }
        let unsupported: [(&'static str, bool, &str); 9] = [
            ("kq_norm", self.kq_norm != "none", "only \"none\""),
            ("hidden_act", self.hidden_act != "silu", "only \"silu\""),
            (
                "mlp_hidden_act",
                self.mlp_hidden_act != "silu",
                "only \"silu\"",
            ),
            ("mamba_proj_bias", self.mamba_proj_bias, "only false"),
            (
                "mamba_inner_layernorms",
                !self.mamba_inner_layernorms,
                "only true",
            ),
            ("num_mamba", self.num_mamba != 1, "only 1"),
            ("num_experts", self.num_experts != 1, "only 1"),
            ("kv_weight_reuse", self.kv_weight_reuse, "only false"),
            (
                "memory_tokens_interspersed_every",
                self.memory_tokens_interspersed_every != 0,
                "only 0 (meta tokens as a prefix)",
            ),
        ];
        for (key, bad, supported) in unsupported {
            if bad {
                return err(key, format!("unsupported value; Hymba uses {supported}"));
            }
        }
        if !self.tie_word_embeddings {
            return err(
                "tie_word_embeddings",
                "only tied embeddings are supported".into(),
            );
        }
        if let Some(conv_dim) = &self.conv_dim
            && let Some((layer, w)) = conv_dim.iter().find(|(_, w)| **w != self.d_inner())
        {
            return err(
                "conv_dim",
                format!("layer {layer} has {w}, expected d_inner {}", self.d_inner()),
            );
        }
        let n = self.num_hidden_layers;
        let mut seen = BTreeSet::new();
        for &i in &self.global_attn_idx {
            if i >= n {
                return err(
                    "global_attn_idx",
                    format!("layer {i} ≥ num_hidden_layers {n}"),
                );
            }
            if !seen.insert(i) {
                return err("global_attn_idx", format!("layer {i} listed twice"));
            }
        }
        if let Some(types) = self.extra.get("layer_type") {
            let letters: Option<Vec<&str>> = types
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_str()).collect());
            match letters {
                Some(l) if l.len() == n && l.iter().all(|x| ["h", "a", "m"].contains(x)) => {}
                _ => {
                    return err(
                        "layer_type",
                        format!(
                            "must list {n} of \"h\" (hybrid), \"a\" (attention) or \"m\" (SSM)"
                        ),
                    );
                }
            }
        }
        let mut grouped = BTreeSet::new();
        for group in &self.kv_reuse_group {
            let Some(&producer) = group.first() else {
                return err("kv_reuse_group", "empty group".into());
            };
            for (pos, &i) in group.iter().enumerate() {
                if i >= n {
                    return err(
                        "kv_reuse_group",
                        format!("layer {i} ≥ num_hidden_layers {n}"),
                    );
                }
                if !grouped.insert(i) {
                    return err("kv_reuse_group", format!("layer {i} is in two groups"));
                }
                if !self.mixer_kind(i).has_attention() {
                    return err(
                        "kv_reuse_group",
                        format!("layer {i} has no attention heads to share K/V with"),
                    );
                }
                if pos > 0 {
                    if self.is_global(i) {
                        return err(
                            "kv_reuse_group",
                            format!("consumer layer {i} is global; consumers must use SWA"),
                        );
                    }
                    if i <= producer {
                        return err(
                            "kv_reuse_group",
                            format!("consumer layer {i} comes before its producer {producer}"),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
