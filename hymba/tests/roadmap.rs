//! The design-roadmap variants built from the same code (attention-only, SSM-only,
//! sequential, parallel, then SWA, KV sharing and meta tokens added): each one's parameter
//! count, cache decode, checkpoint round trip and config checks.

mod common;

use burn::prelude::*;
use common::*;
use hymba::config::paired_kv_groups;
use hymba::roadmap::{Roadmap, attention_baseline, roadmap_configs};
use hymba::{Hymba, HymbaCache, HymbaConfig, MixerKind};

fn model(config: &HymbaConfig, seed: u64) -> Hymba<B> {
    B::seed(&device(), seed);
    Hymba::<B>::new(config, &device()).expect("valid variant")
}

#[test]
fn every_variant_counts_its_parameters_and_meets_the_budget() {
    let base = HymbaConfig::tiny();
    let configs = roadmap_configs(&base);
    let target = Roadmap::MetaTokens.config(&base).num_params();
    for (step, c) in &configs {
        let m = model(c, 1);
        assert_eq!(m.num_params(), c.num_params(), "{}", step.label());
        // Within half an FFN unit (3·D·L parameters) of the budget.
        let slack = 3 * c.hidden_size * c.num_hidden_layers / 2;
        assert!(
            c.num_params().abs_diff(target) <= slack,
            "{}: {} vs {target}",
            step.label(),
            c.num_params()
        );
    }
    let kinds = |s: Roadmap| -> Vec<MixerKind> {
        let c = &configs.iter().find(|(k, _)| *k == s).expect("step").1;
        (0..c.num_hidden_layers).map(|i| c.mixer_kind(i)).collect()
    };
    assert!(
        kinds(Roadmap::AttentionOnly)
            .iter()
            .all(|&k| k == MixerKind::Attention)
    );
    assert!(kinds(Roadmap::SsmOnly).iter().all(|&k| k == MixerKind::Ssm));
    assert_eq!(
        kinds(Roadmap::Sequential)[..2],
        [MixerKind::Attention, MixerKind::Ssm]
    );
    let hymba = &configs[6].1;
    assert_eq!(hymba.num_memory_tokens, base.num_memory_tokens);
    assert_eq!(hymba.kv_reuse_group, base.kv_reuse_group);
    let parallel = &configs[3].1;
    assert_eq!(parallel.global_attn_idx.len(), parallel.num_hidden_layers);
    assert_eq!(parallel.num_memory_tokens, 0);
}

#[test]
fn single_branch_layers_decode_like_the_full_forward() {
    let base = HymbaConfig::tiny();
    for step in [
        Roadmap::AttentionOnly,
        Roadmap::SsmOnly,
        Roadmap::Sequential,
    ] {
        let c = step.config(&base);
        let m = model(&c, 5);
        let rows = ids(2, 24, c.vocab_size, 9);
        let full = to_vec(m.forward(to_tensor::<B>(&rows, &device())));
        let mut cache = HymbaCache::new(&c);
        let mut pieces = Vec::new();
        for t in 0..24 {
            let step_ids: Vec<Vec<u32>> = rows.iter().map(|r| r[t..t + 1].to_vec()).collect();
            pieces.push(m.forward_cached(to_tensor::<B>(&step_ids, &device()), &mut cache));
        }
        let diff = max_abs_diff(&full, &to_vec(Tensor::cat(pieces, 1)));
        assert!(diff <= 1e-4, "{}: max |diff| = {diff}", step.label());
        for (i, layer) in cache.layers.iter().enumerate() {
            assert_eq!(
                layer.kv.is_some(),
                c.mixer_kind(i).has_attention(),
                "layer {i}"
            );
            assert_eq!(layer.ssm.is_some(), c.mixer_kind(i).has_ssm(), "layer {i}");
        }
    }
}

#[test]
fn sequential_hybrid_round_trips_through_a_checkpoint() {
    let c = Roadmap::Sequential.config(&HymbaConfig::tiny());
    let m = model(&c, 3);
    let dir = tempfile::tempdir().expect("temp dir");
    hymba::save_pretrained(&m, dir.path(), &hymba::SaveOptions::default()).expect("save");
    let back = hymba::load_pretrained::<B>(dir.path(), &device()).expect("load");
    assert_eq!(back.num_params(), c.num_params());
    let kinds = |c: &HymbaConfig| (0..4).map(|i| c.mixer_kind(i)).collect::<Vec<_>>();
    assert_eq!(kinds(&back.config), kinds(&c));
    let rows = ids(1, 12, c.vocab_size, 4);
    let a = to_vec(m.forward(to_tensor::<B>(&rows, &device())));
    let b = to_vec(back.forward(to_tensor::<B>(&rows, &device())));
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let names: Vec<String> = hymba::hf_tensor_specs(&c)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    // Layer 0 is attention-only: no SSM tensors; layer 1 is SSM-only: no β1 norm.
    assert!(!names.iter().any(|n| n == "model.layers.0.mamba.A_log.0"));
    assert!(names.iter().any(|n| n == "model.layers.1.mamba.A_log.0"));
    assert!(
        !names
            .iter()
            .any(|n| n == "model.layers.1.mamba.pre_avg_layernorm1.weight")
    );
}

#[test]
fn attention_baseline_matches_the_hymba_1_5b_budget() {
    let hymba = HymbaConfig::hymba_1_5b();
    let base = attention_baseline(&hymba);
    let unit = 3 * base.hidden_size * base.num_hidden_layers;
    assert!(base.num_params().abs_diff(hymba.num_params()) <= unit / 2);
    assert_eq!(base.num_kv_owning_layers(), base.num_hidden_layers);
    assert_eq!(base.num_memory_tokens, 0);
}

#[test]
fn layer_types_are_checked() {
    let mut c = HymbaConfig::tiny();
    c.extra
        .insert("layer_type".into(), serde_json::json!(["h", "x", "h", "h"]));
    let err = c.validate().expect_err("bad letter");
    assert!(err.to_string().contains("layer_type"), "{err}");

    let mut c = HymbaConfig::tiny();
    c.set_mixer_kinds(&[
        MixerKind::Hybrid,
        MixerKind::Ssm,
        MixerKind::Hybrid,
        MixerKind::Hybrid,
    ]);
    assert_eq!(c.kv_reuse_group, paired_kv_groups(4, &[0, 3]));
    let err = c
        .validate()
        .expect_err("an SSM-only layer cannot share K/V");
    assert!(err.to_string().contains("kv_reuse_group"), "{err}");
}

#[test]
fn branch_parameters_add_up_and_follow_the_attention_width() {
    let base = HymbaConfig::tiny();
    for (_, c) in roadmap_configs(&base) {
        let (attn, ssm) = hymba::roadmap::branch_params(&c);
        // Mixers = branches + out_proj; the rest is norms, FFN, embedding, meta tokens.
        let d = c.hidden_size;
        let rest: usize = (0..c.num_hidden_layers)
            .map(|_| 2 * d + 3 * d * c.intermediate_size + c.d_inner() * d)
            .sum::<usize>()
            + c.vocab_size * d
            + c.num_memory_tokens * d
            + d;
        assert_eq!(attn + ssm + rest, c.num_params());
    }
    let target = Roadmap::MetaTokens.config(&base).num_params();
    let shares: Vec<f64> = [0.5, 1.0, 2.0]
        .iter()
        .map(|&f| {
            let c = hymba::roadmap::with_attention_width(&base, f, target);
            c.validate().expect("valid");
            let (a, s) = hymba::roadmap::branch_params(&c);
            a as f64 / (a + s) as f64
        })
        .collect();
    assert!(shares[0] < shares[1] && shares[1] < shares[2], "{shares:?}");
}
