//! Inference through the cache must equal the training forward: token-by-token decode,
//! prefill + decode, batched, with global layers, SWA layers and KV sharing all in play.

mod common;

use burn::prelude::*;
use common::*;
use hymba::{GenerationConfig, HymbaCache, HymbaConfig, generate};

/// Sequence ≥ 3× the SWA window (16), so SWA caches are trimmed many times.
const LEN: usize = 56;

/// `from_meta`: start from [`hymba::Hymba::meta_cache`] (the meta tokens' state computed
/// once) instead of an empty cache.
fn full_vs_incremental(batch: usize, prefill: usize, from_meta: bool) {
    let model = tiny_model(7);
    let config = HymbaConfig::tiny();
    assert!(LEN >= 3 * config.sliding_window);
    let rows = ids(batch, LEN, config.vocab_size, 11 + batch as u64);
    let full = to_vec(model.forward(to_tensor::<B>(&rows, &device())));

    let mut cache = match from_meta {
        true => model.meta_cache(batch),
        false => HymbaCache::new(&config),
    };
    let mut pieces = Vec::new();
    let slice =
        |a: usize, b: usize| -> Vec<Vec<u32>> { rows.iter().map(|r| r[a..b].to_vec()).collect() };
    if prefill > 0 {
        pieces
            .push(model.forward_cached(to_tensor::<B>(&slice(0, prefill), &device()), &mut cache));
    }
    for t in prefill..LEN {
        pieces.push(model.forward_cached(to_tensor::<B>(&slice(t, t + 1), &device()), &mut cache));
    }
    let incremental = to_vec(Tensor::cat(pieces, 1));
    let diff = max_abs_diff(&full, &incremental);
    assert!(
        diff <= 1e-4,
        "batch {batch}, prefill {prefill}, from_meta {from_meta}: max |diff| = {diff}"
    );
    assert_eq!(cache.seen, config.num_memory_tokens + LEN);
}

#[test]
fn decode_matches_full_forward() {
    full_vs_incremental(1, 0, false);
}

#[test]
fn decode_matches_full_forward_batch_of_3() {
    full_vs_incremental(3, 0, false);
}

#[test]
fn prefill_half_then_decode_matches_full_forward() {
    full_vs_incremental(3, LEN / 2, false);
}

#[test]
fn prefill_and_decode_from_the_meta_cache_match_full_forward() {
    full_vs_incremental(1, 0, true);
    full_vs_incremental(3, LEN / 2, true);
}

#[test]
fn the_meta_cache_is_the_state_after_the_meta_tokens() {
    let model = tiny_model(9);
    let config = HymbaConfig::tiny();
    let m = config.num_memory_tokens;
    let cache = model.meta_cache(2);
    assert_eq!(cache.seen, m);
    // What an empty cache holds after a prefill, restricted to the meta positions.
    let rows = ids(2, 5, config.vocab_size, 3);
    let mut cold = HymbaCache::new(&config);
    model.forward_cached(to_tensor::<B>(&rows, &device()), &mut cold);
    for (i, (warm, cold)) in cache.layers.iter().zip(&cold.layers).enumerate() {
        match (&warm.kv, &cold.kv) {
            (Some(w), Some(c)) => {
                assert_eq!(w.k.dims()[0], 2);
                let meta_k = |k: &Tensor<B, 4>| to_vec(k.clone().narrow(2, 0, m));
                let diff = max_abs_diff(&meta_k(&w.k), &meta_k(&c.k));
                assert!(diff <= 1e-5, "layer {i}: meta keys differ by {diff}");
            }
            (None, None) => {}
            _ => panic!("layer {i}: KV cached in one cache only"),
        }
        assert_eq!(warm.ssm.is_some(), cold.ssm.is_some(), "layer {i}");
    }
}

#[test]
fn swa_cache_holds_meta_plus_window() {
    let model = tiny_model(3);
    let config = HymbaConfig::tiny();
    let rows = ids(1, LEN, config.vocab_size, 5);
    let mut cache = HymbaCache::new(&config);
    for t in 0..LEN {
        model.forward_cached(
            to_tensor::<B>(&[rows[0][t..t + 1].to_vec()], &device()),
            &mut cache,
        );
    }
    let m = config.num_memory_tokens;
    for (i, layer) in cache.layers.iter().enumerate() {
        let kv_len = layer.kv.as_ref().map(|kv| kv.k.dims()[2]);
        match (config.is_global(i), layer.owns_kv) {
            (true, _) => assert_eq!(kv_len, Some(m + LEN), "global layer {i}"),
            // Keys kept for the next query: meta + the last `window` text tokens (+ the one
            // just appended, trimmed at the next call).
            (false, true) => assert!(
                kv_len.is_some_and(|l| l <= m + config.sliding_window + 1),
                "SWA layer {i} holds {kv_len:?}"
            ),
            (false, false) => assert_eq!(kv_len, None, "consumer layer {i} must not cache KV"),
        }
    }
}

#[test]
fn ragged_batch_generation_equals_one_by_one() {
    let model = tiny_model(21);
    let vocab = HymbaConfig::tiny().vocab_size;
    let prompts: Vec<Vec<u32>> = [5, 9, 2]
        .iter()
        .enumerate()
        .map(|(i, &len)| ids(1, len, vocab, 40 + i as u64).remove(0))
        .collect();
    let config = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let batched = generate(&model, &prompts, &config).expect("generation runs");
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate(&model, std::slice::from_ref(p), &config).expect("generation runs");
        assert_eq!(batched.tokens[i], alone.tokens[0], "row {i}");
        assert_eq!(batched.tokens[i].len(), 6);
    }
}

#[test]
fn sampling_respects_top_k_and_stop_ids() {
    let model = tiny_model(22);
    let vocab = HymbaConfig::tiny().vocab_size;
    let prompt = ids(1, 4, vocab, 9);
    let greedy = generate(
        &model,
        &prompt,
        &GenerationConfig {
            max_new_tokens: 5,
            ..Default::default()
        },
    )
    .expect("generation runs");
    // top_k = 1 with any temperature is greedy.
    let top1 = generate(
        &model,
        &prompt,
        &GenerationConfig {
            max_new_tokens: 5,
            temperature: 1.5,
            top_k: 1,
            seed: 3,
            ..Default::default()
        },
    )
    .expect("generation runs");
    assert_eq!(greedy.tokens, top1.tokens);
    // Stopping on the first greedy token ends after one token.
    let stop = generate(
        &model,
        &prompt,
        &GenerationConfig {
            max_new_tokens: 5,
            stop_ids: vec![greedy.tokens[0][0]],
            ..Default::default()
        },
    )
    .expect("generation runs");
    assert_eq!(stop.tokens[0], vec![greedy.tokens[0][0]]);
}

#[test]
fn generation_rejects_bad_prompts() {
    let model = tiny_model(1);
    let config = GenerationConfig::default();
    assert!(generate(&model, &[], &config).is_err());
    assert!(generate(&model, &[vec![]], &config).is_err());
    let err = generate(&model, &[vec![1, 100_000]], &config).unwrap_err();
    assert!(err.to_string().contains("100000"), "{err}");
}
