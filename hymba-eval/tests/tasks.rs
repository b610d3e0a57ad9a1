//! `hymba-eval tasks` on a hand-made 3-question file: acc and acc_norm equal what the
//! scores computed by hand (one unpadded forward per choice, log-softmax on the host) give,
//! and a malformed line is reported with its number.

use std::io::Write;

use burn::backend::NdArray;
use burn::prelude::*;
use hymba::{BackendRunner, Hymba, HymbaConfig};
use hymba_eval::generate::Weights;
use hymba_eval::tasks::{TasksJob, load_task, pick};

type B = NdArray<f32>;

const FILE: &str = r#"{"context": "Question: Which is a colour?\nAnswer:", "choices": [" red", " seven", " quickly running"], "gold": 0}
{"context": "The cat sat on the", "choices": [" mat", " moon and stars tonight"], "gold": 1}
{"context": "broken line
{"context": "", "choices": ["x"], "gold": 0}
{"context": "Two plus two is", "choices": [" four", " five", " a number"], "gold": 2, "extra": "ignored"}
"#;

fn config(vocab: usize) -> HymbaConfig {
    HymbaConfig {
        vocab_size: vocab,
        ..HymbaConfig::tiny()
    }
}

/// `Σ log P(ids[t] | ids[..t])` for t ≥ start, from one unpadded forward, in f64.
fn by_hand(model: &Hymba<B>, ids: &[u32], start: usize) -> f64 {
    let device = Default::default();
    let t = ids.len();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, t]),
        &device,
    );
    let logits: Vec<f64> = model
        .forward(input)
        .into_data()
        .convert::<f64>()
        .to_vec()
        .expect("floats");
    let v = model.config.vocab_size;
    (start..t)
        .map(|p| {
            let row = &logits[(p - 1) * v..p * v];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            row[ids[p] as usize] - lse
        })
        .sum()
}

/// Both tests seed the backend's process-wide RNG and then draw a model from it; run in
/// parallel, one test's draws could land between the other's seed and its model (CI once
/// saw the hand-computed model differ from the job's). Each test holds this for its whole run.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn tasks_accuracy_equals_hand_computation_and_bad_lines_are_numbered() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tok = hymba_datasets::default_tokenizer().expect("embedded tokenizer");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hand_made.jsonl");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(FILE.as_bytes()))
        .expect("write task file");

    // Strict mode names the first bad line.
    let err = load_task(&path, &tok, None, true).expect_err("line 3 is malformed");
    assert!(err.to_string().contains("hand_made.jsonl:3:"), "{err}");
    // Otherwise bad lines are skipped and numbered: 3 (bad JSON), 4 (one choice).
    let task = load_task(&path, &tok, None, false).expect("task");
    let lines: Vec<usize> = task.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![3, 4], "{:?}", task.skipped);
    assert_eq!(task.items.len(), 3);
    assert_eq!(task.name, "hand_made");

    let config = config(tok.vocab_size());
    let device = Default::default();
    let seed = 11;
    B::seed(&device, seed);
    let model = Hymba::<B>::new(&config, &device).expect("tiny model");
    let (mut acc, mut acc_norm) = (0.0, 0.0);
    for item in &task.items {
        let scores: Vec<(f64, usize)> = item
            .choices
            .iter()
            .map(|(s, bytes)| (by_hand(&model, &s.ids, s.target_start), *bytes))
            .collect();
        // Byte lengths are the choices' own.
        assert!(scores.iter().all(|s| s.1 > 0));
        let (a, an) = pick(&scores);
        acc += f64::from(u8::from(a == item.gold)) / 3.0;
        acc_norm += f64::from(u8::from(an == item.gold)) / 3.0;
    }

    for batch_size in [1, 2, 16] {
        let job = TasksJob {
            weights: Weights::Random {
                config: Box::new(config.clone()),
                seed,
            },
            tasks: vec![task.clone()],
            batch_size,
            pad_id: 0,
            progress: false,
        };
        let got = job.run::<B>(device).expect("scores");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].n, 3);
        assert_eq!(got[0].skipped, 2);
        assert!(
            (got[0].acc - acc).abs() < 1e-9,
            "batch {batch_size}: acc {} vs {acc}",
            got[0].acc
        );
        assert!(
            (got[0].acc_norm - acc_norm).abs() < 1e-9,
            "batch {batch_size}: acc_norm {} vs {acc_norm}",
            got[0].acc_norm
        );
    }
}

#[test]
fn padded_batch_scores_equal_unpadded_ones() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tok = hymba_datasets::default_tokenizer().expect("embedded tokenizer");
    let config = config(tok.vocab_size());
    let device = Default::default();
    B::seed(&device, 5);
    let model = Hymba::<B>::new(&config, &device).expect("tiny model");
    // Lengths 40 and 7 straddle the tiny config's SWA window.
    let long: Vec<u32> = (0..40).map(|i| 1 + (i * 37 % 300) as u32).collect();
    let short: Vec<u32> = vec![1, 9, 4, 33, 7, 250, 3];
    let seqs = [
        hymba::score::Continuation {
            ids: &long,
            target_start: 25,
        },
        hymba::score::Continuation {
            ids: &short,
            target_start: 1,
        },
    ];
    let got = hymba::score::score_continuations(&model, &seqs, 0).expect("scores");
    for (s, g) in seqs.iter().zip(&got) {
        let want = by_hand(&model, s.ids, s.target_start);
        assert!((g.logprob - want).abs() < 1e-3, "{} vs {want}", g.logprob);
        assert_eq!(g.tokens, s.ids.len() - s.target_start);
    }
    // Out-of-range targets are errors, not panics.
    let bad = [hymba::score::Continuation {
        ids: &short,
        target_start: 7,
    }];
    assert!(hymba::score::score_continuations(&model, &bad, 0).is_err());
}
