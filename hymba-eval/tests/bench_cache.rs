//! `bench cache`: the analytic cache equals a real cache after prefill (tiny config, below,
//! at and past the SWA window), and the Hymba-1.5B / Llama-3.2-3B figures of spec §4.

use burn::backend::NdArray;
use hymba::{BackendRunner, HymbaConfig};
use hymba_eval::bench_cache::{
    hymba_cache_bytes, measured_bytes, paper_reading_bytes, transformer_cache_bytes,
};

type B = NdArray<f32>;

#[test]
fn analytic_cache_equals_a_real_cache_after_prefill() {
    let config = HymbaConfig::tiny();
    let w = config.sliding_window;
    struct Prefill(HymbaConfig, usize);
    impl BackendRunner for Prefill {
        type Output = hymba_eval::bench_cache::CacheBytes;
        fn run<Bk: hymba::HymbaBackend>(self, device: Bk::Device) -> Self::Output {
            use burn::prelude::*;
            Bk::seed(&device, 1);
            let model = hymba::Hymba::<Bk>::new(&self.0, &device).expect("model");
            let ids: Vec<i64> = (0..self.1).map(|i| 1 + (i % 50) as i64).collect();
            let ids = Tensor::<Bk, 2, Int>::from_data(TensorData::new(ids, [1, self.1]), &device);
            let mut cache = hymba::HymbaCache::new(&self.0);
            // Prefill all but the last token, then decode it: the cache as generation holds it.
            let _ = model.forward_last(ids.clone().narrow(1, 0, self.1 - 1), &mut cache);
            let _ = model.forward_last(ids.narrow(1, self.1 - 1, 1), &mut cache);
            measured_bytes(&cache, &self.0, 2)
        }
    }
    for context in [3, w, w + 1, w + 5, 3 * w + 1] {
        let measured = Prefill(config.clone(), context).run::<B>(Default::default());
        let analytic = hymba_cache_bytes(&config, context, 2);
        assert_eq!(measured, analytic, "context {context}");
        assert!(analytic.swa_kv > 0 && analytic.global_kv > 0 && analytic.ssm > 0);
    }
}

#[test]
fn hymba_1_5b_and_llama_figures_of_the_paper() {
    let c = HymbaConfig::hymba_1_5b();
    // The paper's 78.6 MB (Tab. 1 F/G): no meta tokens, conv state 3 wide (spec §4).
    assert_eq!(paper_reading_bytes(&c, 8192, 2), 78_602_240);
    // With the 128 meta tokens cached: 3 global owners hold 8320 positions, 14 SWA owners
    // 128 + 1025 each (the query and the 1024 before it); SSM 32·3200·16, conv 32·3200·3.
    let b = hymba_cache_bytes(&c, 8192, 2);
    assert_eq!(b.global_kv, 3 * 8320 * 1920);
    assert_eq!(b.swa_kv, 14 * 1153 * 1920);
    assert_eq!(b.ssm, 32 * 3200 * 16 * 2);
    assert_eq!(b.conv, 32 * 3200 * 3 * 2);
    // Llama-3.2-3B at 8000 tokens: 917.5 MB.
    assert_eq!(
        transformer_cache_bytes(28, 8, 128, 128, 8000, 2),
        917_504_000
    );
}
