//! The whole post-training pipeline on the CPU, each stage starting from the previous
//! stage's output, as a user runs it: a tiny pretrain on the embedded corpus, SFT on the
//! chat data, DPO on the HHH preference pairs (both from the committed `fixtures/`, the
//! first lines of the shared data files).

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use hymba::{BackendKind, Hymba, run_on};
use hymba_train::{RunConfig, Stage, TrainJob, TrainReport};

/// A file of the workspace's `fixtures/` folder (excerpts of the shared data).
fn fixture(rel: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel);
    assert!(path.is_file(), "fixture {} is missing", path.display());
    path
}

fn run(stage: Stage, out: &Path, init: Option<&Path>, extra: &[&str]) -> TrainReport {
    let mut overrides = vec![
        format!("out_dir={}", out.display()),
        "log_every=1000".to_string(),
        "samples=0".to_string(),
        "checkpoint_every=1000".to_string(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let config = RunConfig::load(stage, None, &overrides).expect("run config");
    let job = TrainJob {
        init: init.map(Path::to_path_buf),
        ..TrainJob::new(stage, config, BackendKind::NdArray)
    };
    run_on(BackendKind::NdArray, 0, job)
        .expect("backend")
        .unwrap_or_else(|e| panic!("{} failed: {e}", stage.name()))
}

fn first_and_last(report: &TrainReport) -> (f64, f64) {
    let first = report.train_losses.first().expect("a step").1;
    let last = report.train_losses.last().expect("a step").1;
    (first, last)
}

#[test]
fn pretrain_then_sft_then_dpo() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (pt, sft, dpo) = (
        tmp.path().join("pretrain"),
        tmp.path().join("sft"),
        tmp.path().join("dpo"),
    );

    let pre = run(
        Stage::Pretrain,
        &pt,
        None,
        &[
            "model.preset=tiny",
            "data.seq_len=64",
            "batch_size=4",
            "steps=30",
            "valid_every=0",
            "valid_batches=2",
        ],
    );
    let (first, last) = first_and_last(&pre);
    assert!(last < first - 0.5, "pretraining loss {first} → {last}");

    let chat = fixture("sft/natural_instructions.jsonl");
    let tuned = run(
        Stage::Sft,
        &sft,
        Some(&pt.join("model")),
        &[
            &format!("data.jsonl=[\"{}\"]", chat.display()),
            "data.max_records=300",
            "data.seq_len=512",
            "batch_size=2",
            "steps=8",
            "optimizer.lr=2e-3",
        ],
    );
    let (first, last) = first_and_last(&tuned);
    assert!(last < first, "SFT loss {first} → {last}");
    let summary = tuned.data.expect("SFT reports its data");
    assert_eq!(summary.records, 300);
    assert!(
        summary.train_items > 0 && summary.valid_items > 0,
        "{summary}"
    );

    let pairs = fixture("dpo/hhh_alignment.jsonl");
    let aligned = run(
        Stage::Dpo,
        &dpo,
        Some(&sft.join("model")),
        &[
            &format!("data.jsonl=[\"{}\"]", pairs.display()),
            "data.max_records=40",
            "data.seq_len=256",
            "batch_size=2",
            "steps=3",
            "optimizer.lr=1e-4",
        ],
    );
    // The policy starts as the reference: every reward is 0 and the loss is log 2.
    let (first, _) = first_and_last(&aligned);
    assert!(
        (first - std::f64::consts::LN_2).abs() < 1e-4,
        "first DPO loss {first}, want ln 2"
    );
    assert!(aligned.reference_accuracy.is_some());
    assert!(dpo.join("data/reference_logps.json").is_file());

    // Each stage's output is a loadable model with the first stage's architecture.
    let device = Default::default();
    let a = Hymba::<NdArray>::new(
        &hymba::HymbaConfig::from_file(pt.join("model/config.json")).expect("config"),
        &device,
    )
    .expect("model");
    let b = hymba::load_pretrained::<NdArray>(dpo.join("model"), &device).expect("DPO model");
    assert_eq!(a.config, b.config);

    // Each model directory has the HF side files; the chat template only after SFT (and the
    // chat-format DPO that follows it). SFT and DPO started from directories that had them.
    for (dir, chat) in [(&pt, false), (&sft, true), (&dpo, true)] {
        let files =
            hymba::hf::SideFiles::read(dir.join("model"), a.config.vocab_size).expect("side files");
        let tok = files.tokenizer.expect("tokenizer_config.json");
        let generation = files.generation.expect("generation_config.json");
        assert_eq!(generation.bos_token_id, Some(1), "{}", dir.display());
        let template = tok.chat_template_str();
        assert_eq!(
            template,
            chat.then_some(hymba_datasets::CHAT_TEMPLATE_JINJA),
            "{}",
            dir.display()
        );
    }
}
