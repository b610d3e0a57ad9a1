//! The `hymba-datasets` binary: one clear error line and a non-zero exit on failure.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hymba-datasets"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const VALID: &str = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;

#[test]
fn check_skips_or_fails_on_a_malformed_line_per_strict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sft.jsonl");
    std::fs::write(&path, format!("{VALID}\n{{not json\n{VALID}\n")).unwrap();
    let p = path.to_str().unwrap();

    let lenient = run(&["check", "--format", "sft", p]);
    assert!(lenient.status.success(), "{}", text(&lenient.stderr));
    assert!(
        text(&lenient.stdout).contains("2 records, 1 skipped"),
        "{}",
        text(&lenient.stdout)
    );
    assert!(
        text(&lenient.stderr).contains(&format!("warning: {p}:2: ")),
        "{}",
        text(&lenient.stderr)
    );

    let strict = run(&["check", "--format", "sft", "--strict", p]);
    assert!(!strict.status.success());
    let err = text(&strict.stderr);
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    assert!(
        err.starts_with(&format!("error: {p}:2: invalid JSON")),
        "{err}"
    );
}

#[test]
fn prepare_then_train_tokenizer_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(
        &corpus,
        "A first small document.\n\nA second one, a bit longer than the first.\n",
    )
    .unwrap();
    let tok = dir.path().join("tok.json");
    let out = run(&[
        "train-tokenizer",
        "--input",
        corpus.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        tok.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shards = dir.path().join("shards");
    let out = run(&[
        "prepare",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--input",
        corpus.to_str().unwrap(),
        "--out",
        shards.to_str().unwrap(),
        "--val-fraction",
        "0.3",
        "--seed",
        "5",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = hymba_datasets::Manifest::load(&shards).unwrap();
    assert_eq!(m.train.documents + m.val.documents, 2);
    assert_eq!(m.seed, 5);
    assert_eq!(
        m.tokenizer.vocab_size,
        hymba_datasets::Tokenizer::from_file(&tok)
            .unwrap()
            .vocab_size()
    );
}

#[test]
fn failures_print_one_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "prepare",
        "--tokenizer",
        "/nonexistent/tokenizer.json",
        "--input",
        "default",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: /nonexistent/tokenizer.json: "),
        "{err}"
    );

    let out = run(&[
        "train-tokenizer",
        "--input",
        "default",
        "--vocab-size",
        "10",
        "--out",
        "/tmp/x.json",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("below the minimum"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn prepare_on_a_full_disk_fails_clearly_and_leaves_no_usable_half() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, hymba_datasets::default_corpus_text().unwrap()).unwrap();
    let tok = dir.path().join("tok.json");
    hymba_datasets::default_tokenizer()
        .unwrap()
        .save(&tok)
        .unwrap();
    let shards = dir.path().join("shards");
    let args = |out: &std::path::Path| {
        format!(
            "prepare --tokenizer '{}' --input '{}' --out '{}'",
            tok.display(),
            corpus.display(),
            out.display()
        )
    };
    let bin = env!("CARGO_BIN_EXE_hymba-datasets");
    let ok = Command::new("bash")
        .args(["-c", &format!("exec {bin} {}", args(&shards))])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(shards.join("manifest.json").is_file());

    // Again into the same folder, with files limited to 16 KiB (SIGXFSZ ignored, so writes
    // fail with EFBIG as on a full disk): one error line naming the shard being written, and
    // no manifest, so nothing can read the half-written folder as a data set.
    let full = Command::new("bash")
        .args([
            "-c",
            &format!("trap '' XFSZ; ulimit -f 16; exec {bin} {}", args(&shards)),
        ])
        .output()
        .unwrap();
    assert!(!full.status.success());
    let err = text(&full.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("train-00000.bin"),
        "{err}"
    );
    assert!(!shards.join("manifest.json").exists());
    assert!(!shards.join("train-00000.bin").exists());
    let e = hymba_datasets::Manifest::load(&shards).unwrap_err();
    assert!(e.to_string().contains("manifest.json"), "{e}");
}
