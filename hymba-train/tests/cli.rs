//! The `hymba-train` binary: exact resume after `kill -9`, and bad inputs that must end in
//! one clear error line, a non-zero exit, and nothing overwritten.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::train_losses;

const BIN: &str = env!("CARGO_BIN_EXE_hymba-train");

/// A tiny, fast run on the embedded corpus.
fn tiny_args(out: &Path, steps: usize) -> Vec<String> {
    [
        "pretrain".to_string(),
        format!("out_dir={}", out.display()),
        "model.preset=tiny".into(),
        "data.seq_len=32".into(),
        "batch_size=2".into(),
        format!("steps={steps}"),
        "checkpoint_every=4".into(),
        "keep_checkpoints=5".into(),
        "valid_every=0".into(),
        "valid_batches=1".into(),
        "samples=0".into(),
    ]
    .to_vec()
}

fn run(args: &[String]) -> Output {
    Command::new(BIN).args(args).output().expect("binary runs")
}

fn checkpoint(out: &Path, step: usize) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:08}"))
}

#[test]
fn resume_after_kill_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let straight = tmp.path().join("straight");
    let out = run(&tiny_args(&straight, 8));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = train_losses(&straight);
    assert_eq!(want.len(), 8);

    // Same run, killed (-9) once the step-4 checkpoint exists, then resumed from it.
    let broken = tmp.path().join("broken");
    let mut child = Command::new(BIN)
        .args(tiny_args(&broken, 8))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("binary starts");
    let started = Instant::now();
    while !checkpoint(&broken, 4).is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no checkpoint appeared"
        );
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    // Whatever the run got to after step 4 is discarded: resume from step 4 exactly.
    for step in 5..=8 {
        let _ = std::fs::remove_dir_all(checkpoint(&broken, step));
    }
    let mut args = tiny_args(&broken, 8);
    args.insert(1, "--resume".into());
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = train_losses(&broken);
    assert_eq!(
        got, want,
        "losses after resume differ from the uninterrupted run"
    );
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error:"), "{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {stderr}");
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out_dir = tmp.path().join("run");
    let base = |extra: &str| {
        let mut a = tiny_args(&out_dir, 2);
        a.push(extra.to_string());
        a
    };
    assert_one_line_error(
        &run(&base("data.shards=/nonexistent/shards")),
        "/nonexistent/shards",
    );
    assert_one_line_error(&run(&base("stepz=5")), "stepz");
    assert_one_line_error(&run(&base("model.preset=hymba-7b")), "hymba-7b");
    assert_one_line_error(&run(&base("batch_size=1000000")), "larger than the data");
    // The CPU backend has no bf16: asking for bf16 compute there is an error, before
    // anything is written.
    let bf16_dir = tmp.path().join("bf16");
    let mut bf16 = tiny_args(&bf16_dir, 2);
    bf16.push("precision=bf16".into());
    assert_one_line_error(&run(&bf16), "precision");
    assert!(
        !bf16_dir.exists(),
        "a refused run created {}",
        bf16_dir.display()
    );
    assert_one_line_error(&run(&base("precision=fp8")), "fp8");
    let mut cuda = tiny_args(&out_dir, 2);
    cuda.insert(1, "--backend=cuda".into());
    assert_one_line_error(&run(&cuda), "--features cuda");
    let config = tmp.path().join("typo.toml");
    std::fs::write(&config, "steps = 2\nbatch_sise = 4\n").expect("write");
    let out = Command::new(BIN)
        .args(["pretrain", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert_one_line_error(&out, "batch_sise");
}

#[test]
fn existing_checkpoints_are_not_overwritten() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out_dir = tmp.path().join("run");
    let first = run(&tiny_args(&out_dir, 4));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = std::fs::read(checkpoint(&out_dir, 4).join("state.json")).expect("checkpoint");
    assert_one_line_error(&run(&tiny_args(&out_dir, 4)), "--resume");
    let after = std::fs::read(checkpoint(&out_dir, 4).join("state.json")).expect("checkpoint");
    assert_eq!(before, after);
}
