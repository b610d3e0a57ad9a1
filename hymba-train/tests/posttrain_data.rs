//! SFT and DPO data with bad records: malformed JSON, an empty response, a prompt longer
//! than the model's sequence, a file with nothing usable. Each bad record is a counted skip
//! naming its file and line; only a source with no usable record is an error; nothing
//! panics.

use std::path::Path;

use hymba_train::posttrain::{is_held_out, load_pairs, load_sft};
use hymba_train::{RunConfig, Stage};

fn config(stage: Stage, file: &Path) -> RunConfig {
    let mut c = RunConfig::defaults(stage);
    c.data.jsonl = vec![file.to_path_buf()];
    c.data.seq_len = 96;
    c.data.val_fraction = 0.0;
    c
}

fn pair(prompt: &str, chosen: &str, rejected: &str) -> String {
    serde_json::json!({"prompt": prompt, "chosen": chosen, "rejected": rejected}).to_string()
}

#[test]
fn bad_preference_pairs_are_counted_skips_with_their_line() {
    let tok = hymba_datasets::default_tokenizer().expect("tokenizer");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pairs.jsonl");
    let lines = [
        pair("Is the sky blue?", "Yes, on a clear day.", "No."),
        "{\"prompt\": \"broken\", ".to_string(),
        pair("Say hi.", "   ", "Hi."),
        pair(&"a very long prompt ".repeat(40), "Sure.", "No."),
        String::new(),
        pair("Name a colour.", "Green.", "Seven."),
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let (train, valid, summary) = load_pairs(&config(Stage::Dpo, &file), &tok).expect("loads");
    assert_eq!((train.len(), valid.len()), (2, 0));
    assert_eq!(summary.records, 3, "{summary}");
    assert_eq!(summary.skipped, 3, "{summary}");
    let reasons = summary.reasons.join("\n");
    assert!(reasons.contains("line 2: invalid JSON"), "{reasons}");
    assert!(reasons.contains("line 3: `chosen` is empty"), "{reasons}");
    assert!(
        reasons.contains("line 4:") && reasons.contains("longer than data.seq_len"),
        "{reasons}"
    );
}

#[test]
fn empty_or_unusable_sources_are_one_clear_error() {
    let tok = hymba_datasets::default_tokenizer().expect("tokenizer");
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").expect("write");
    let err = load_pairs(&config(Stage::Dpo, &empty), &tok).expect_err("nothing to train on");
    assert!(err.to_string().contains("no usable record"), "{err}");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "not json\n{\"messages\": []}\n").expect("write");
    let err = load_sft(&config(Stage::Sft, &bad), &tok).expect_err("nothing to train on");
    assert!(
        err.to_string().contains("no usable record") && err.to_string().contains("2 lines skipped"),
        "{err}"
    );

    let missing = dir.path().join("missing.jsonl");
    let err = load_sft(&config(Stage::Sft, &missing), &tok).expect_err("no file");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn chat_records_pack_and_hold_out_every_kth() {
    let tok = hymba_datasets::default_tokenizer().expect("tokenizer");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("chat.jsonl");
    let record = |q: &str, a: &str| {
        serde_json::json!({"messages": [
            {"role": "user", "content": q},
            {"role": "assistant", "content": a}
        ]})
        .to_string()
    };
    let lines: Vec<String> = (0..10)
        .map(|i| record(&format!("Question {i}?"), &format!("Answer {i}.")))
        .collect();
    std::fs::write(&file, lines.join("\n")).expect("write");
    let mut c = config(Stage::Sft, &file);
    c.data.val_fraction = 0.2;
    let (train, valid, summary) = load_sft(&c, &tok).expect("loads");
    assert_eq!(summary.records, 10);
    assert_eq!((0..10).filter(|&i| is_held_out(i, 0.2)).count(), 2);
    for seq in train.iter().chain(&valid) {
        assert_eq!(seq.len(), c.data.seq_len + 1);
        assert!(seq.target_count() > 0);
    }
    assert!(!train.is_empty() && !valid.is_empty());
}
