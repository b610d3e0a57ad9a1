//! `hymba-eval ppl`: the sliding windows score every token exactly once, and the perplexity
//! equals `exp` of the model's own training loss over the same non-overlapping windows.

use burn::backend::NdArray;
use burn::prelude::*;
use hymba::{BackendRunner, Hymba, HymbaConfig};
use hymba_datasets::{ShardWriter, TokenDtype, TokenStream};
use hymba_eval::generate::Weights;
use hymba_eval::ppl::{PplJob, windows};

type B = NdArray<f32>;

#[test]
fn sliding_windows_score_every_token_once_with_enough_context() {
    for (len, seq, stride) in [
        (100, 16, 16),
        (100, 16, 5),
        (17, 16, 8),
        (16, 16, 4),
        (3, 16, 1),
    ] {
        let plan = windows(len, seq, stride, None);
        let mut scored = vec![0u32; len as usize];
        for &(start, target) in &plan {
            let end = (start + seq as u64).min(len);
            for p in start + target as u64..end {
                scored[p as usize] += 1;
            }
            if start > 0 {
                assert!(
                    target >= seq - stride,
                    "context {target} < {}",
                    seq - stride
                );
            }
        }
        assert_eq!(scored[0], 0, "the first token has no context");
        assert!(
            scored.iter().all(|&c| c <= 1),
            "a token scored twice: {scored:?}"
        );
        let unscored = scored[1..].iter().filter(|&&c| c == 0).count();
        if stride < seq {
            assert_eq!(
                unscored, 0,
                "len {len} seq {seq} stride {stride}: {scored:?}"
            );
        } else {
            // Plain chunking skips (at most) each window's first token.
            assert!(unscored < plan.len(), "{scored:?}");
        }
    }
    assert_eq!(
        windows(100, 16, 4, Some(40)).last().map(|w| w.0 + 16),
        Some(40)
    );
    assert!(windows(100, 16, 17, None).is_empty());
}

#[test]
fn perplexity_equals_exp_of_the_training_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = HymbaConfig::tiny();
    let (seq_len, n_windows) = (24usize, 3usize);
    let ids: Vec<u32> = (0..seq_len * n_windows)
        .map(|i| 1 + ((i * 7919) % (config.vocab_size - 1)) as u32)
        .collect();
    let path = dir.path().join("val_0000.bin");
    let mut w =
        ShardWriter::create(&path, TokenDtype::for_vocab(config.vocab_size), 42).expect("shard");
    w.write(&ids).expect("write");
    w.finish().expect("finish");

    let seed = 3;
    let job = PplJob {
        weights: Weights::Random {
            config: Box::new(config.clone()),
            seed,
        },
        stream: TokenStream::open_files(&[path], 42).expect("stream"),
        seq_len,
        stride: seq_len,
        max_tokens: None,
        batch_size: 2,
        progress: false,
    };
    let device = Default::default();
    let report = job.run::<B>(device).expect("ppl");
    assert_eq!(report.tokens, (n_windows * (seq_len - 1)) as u64);

    // The same windows through the training loss (mean over each window's targets).
    B::seed(&device, seed);
    let model = Hymba::<B>::new(&config, &device).expect("model");
    let mut total = 0.0;
    for k in 0..n_windows {
        let w: Vec<i64> = ids[k * seq_len..(k + 1) * seq_len]
            .iter()
            .map(|&i| i as i64)
            .collect();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(w, [1, seq_len]), &device);
        total += model.forward_loss(t, None).into_scalar() as f64;
    }
    let want = total / n_windows as f64;
    assert!((report.nll - want).abs() < 1e-4, "{} vs {want}", report.nll);
    assert!((report.perplexity - want.exp()).abs() < 1e-3 * want.exp());
}
