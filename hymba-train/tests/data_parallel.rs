//! Data-parallel training: two replicas with `grad_accum = a` take exactly the optimizer steps
//! of one device with `grad_accum = 2a` (same items, gradients summed in another order), for
//! pretraining and for DPO (the preference pairs and their reference log-probs travel with
//! each replica's micro-batches). On the CPU backend both "devices" are the CPU, which is
//! enough to check the exchange: the replica's gradients, their move to the main device, and
//! the weights copied back after every step (a stale replica would diverge from step 2 on).
//!
//! One test function: the runs seed the backend's global RNG, so they must not interleave
//! with other runs in parallel test threads.

use std::path::{Path, PathBuf};

use hymba::{BackendKind, run_on};
use hymba_train::{RunConfig, Stage, TrainJob, TrainReport};

fn train(
    stage: Stage,
    out: &Path,
    init: Option<PathBuf>,
    grad_accum: usize,
    replicas: Vec<u16>,
    extra: &[&str],
) -> TrainReport {
    let overrides: Vec<String> = [
        "valid_every=0",
        "valid_batches=1",
        "log_every=1000",
        "samples=0",
        "checkpoint_every=1000",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .chain([
        format!("grad_accum={grad_accum}"),
        format!("out_dir={}", out.display()),
    ])
    .collect();
    let config = RunConfig::load(stage, None, &overrides).expect("run config");
    let job = TrainJob {
        init,
        replicas,
        ..TrainJob::new(stage, config, BackendKind::NdArray)
    };
    run_on(BackendKind::NdArray, 0, job)
        .expect("backend")
        .unwrap_or_else(|e| panic!("{} failed: {e}", stage.name()))
}

fn assert_same_losses(what: &str, a: &TrainReport, b: &TrainReport, steps: usize) {
    assert_eq!(a.train_losses.len(), steps, "{what}: steps run");
    assert_eq!(b.train_losses.len(), steps, "{what}: steps run");
    for ((step, x), (_, y)) in a.train_losses.iter().zip(&b.train_losses) {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1e-3),
            "{what}, step {step}: one device {x}, two replicas {y}"
        );
    }
    assert!(
        (a.final_valid_loss - b.final_valid_loss).abs() <= 1e-5 * a.final_valid_loss.abs(),
        "{what}: valid loss {} vs {}",
        a.final_valid_loss,
        b.final_valid_loss
    );
}

#[test]
fn two_replicas_equal_one_device_with_twice_the_accumulation() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let pretrain = [
        "model.preset=tiny",
        "data.seq_len=32",
        "batch_size=2",
        "steps=4",
    ];
    let single = train(
        Stage::Pretrain,
        &tmp.path().join("single"),
        None,
        2,
        vec![],
        &pretrain,
    );
    let parallel = train(
        Stage::Pretrain,
        &tmp.path().join("parallel"),
        None,
        1,
        vec![1],
        &pretrain,
    );
    assert_same_losses("pretraining", &single, &parallel, 4);
    // The run must have learned something, or equal losses would prove little.
    let (first, last) = (single.train_losses[0].1, single.train_losses[3].1);
    assert!(last < first, "loss did not fall: {first} → {last}");

    // The comparison must be able to fail: one device with the *same* accumulation as each
    // replica sees half the items per step and gives different losses.
    let half = train(
        Stage::Pretrain,
        &tmp.path().join("half"),
        None,
        1,
        vec![],
        &pretrain,
    );
    let differs = half
        .train_losses
        .iter()
        .zip(&parallel.train_losses)
        .any(|((_, a), (_, b))| (a - b).abs() > 1e-4 * a.abs());
    assert!(
        differs,
        "two replicas trained like one device with half the batch"
    );

    // DPO from the pretrained model: pairs split across the replicas.
    // The first 40 HHH pairs of the shared data, committed in the workspace's `fixtures/`.
    let pairs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/dpo/hhh_alignment.jsonl");
    assert!(pairs.is_file(), "fixture {} is missing", pairs.display());
    let data = format!("data.jsonl=[\"{}\"]", pairs.display());
    let dpo = [
        data.as_str(),
        "data.max_records=24",
        "data.seq_len=256",
        "batch_size=1",
        "steps=3",
        "optimizer.lr=1e-3",
    ];
    let init = || Some(tmp.path().join("single/model"));
    let single = train(
        Stage::Dpo,
        &tmp.path().join("dpo1"),
        init(),
        2,
        vec![],
        &dpo,
    );
    let parallel = train(
        Stage::Dpo,
        &tmp.path().join("dpo2"),
        init(),
        1,
        vec![1],
        &dpo,
    );
    assert_same_losses("DPO", &single, &parallel, 3);
    let (first, last) = (single.train_losses[0].1, single.train_losses[2].1);
    assert!(
        (first - std::f64::consts::LN_2).abs() < 1e-4 && last != first,
        "DPO losses {first} → {last}"
    );

    // One epoch (`steps=0`) on two devices takes half the steps: each step uses two pairs.
    let epoch: Vec<&str> = dpo
        .iter()
        .map(|s| if *s == "steps=3" { "steps=0" } else { s })
        .collect();
    let run = train(
        Stage::Dpo,
        &tmp.path().join("dpo3"),
        init(),
        1,
        vec![1],
        &epoch,
    );
    let pairs = run.data.as_ref().expect("DPO reports its data").train_items;
    assert_eq!(
        run.steps_run,
        pairs.div_ceil(2),
        "one epoch of {pairs} pairs"
    );
}
