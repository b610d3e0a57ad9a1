//! Crashes at the worst moments: `kill -9` at every stage of a checkpoint write, damaged
//! checkpoints, a NaN loss and a full disk. Each test runs the real binary on the embedded
//! corpus (under a second per run) with `HYMBA_FAULT` (see `hymba_train::fault`) choosing
//! where it dies.
#![cfg(unix)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::backend::NdArray;
use hymba_train::checkpoint::{self, SAVE_STAGES};
use hymba_train::posttrain::InitSource;

use common::train_losses;

const BIN: &str = env!("CARGO_BIN_EXE_hymba-train");

/// A tiny run of `steps` steps with a checkpoint every 2.
fn args(out: &Path, steps: usize, resume: bool) -> Vec<String> {
    let mut a = vec!["pretrain".to_string()];
    if resume {
        a.push("--resume".into());
    }
    a.extend([
        format!("out_dir={}", out.display()),
        "model.preset=tiny".into(),
        "data.seq_len=32".into(),
        "batch_size=2".into(),
        format!("steps={steps}"),
        "checkpoint_every=2".into(),
        "keep_checkpoints=2".into(),
        "valid_every=0".into(),
        "valid_batches=1".into(),
        "samples=0".into(),
    ]);
    a
}

/// `args` keeping only the newest checkpoint, so that pruning the previous one too early
/// would lose it.
fn keep_one(mut a: Vec<String>) -> Vec<String> {
    a.push("keep_checkpoints=1".into());
    a
}

/// Runs the trainer with `HYMBA_FAULT` set to `fault` (or unset).
fn train(args: &[String], fault: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("HYMBA_FAULT");
    if let Some(f) = fault {
        cmd.env("HYMBA_FAULT", f);
    }
    cmd.output().expect("binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

fn ckpt_root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The step of the newest intact checkpoint (after the recovery `--resume` does).
fn newest_intact(out: &Path) -> usize {
    checkpoint::newest_valid(&ckpt_root(out))
        .expect("an intact checkpoint")
        .0
        .step
}

/// Flips one bit in the middle of `path`.
fn flip_bit(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn kill_9_at_every_checkpoint_stage_loses_nothing_and_resumes_exactly() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let straight = tmp.path().join("straight");
    assert_ok(&train(&args(&straight, 6, false), None));
    let want = train_losses(&straight);
    assert_eq!(want.len(), 6);

    let mut resumed = 0;
    for stage in SAVE_STAGES {
        let out = tmp.path().join(stage);
        if stage == "old-set-aside" {
            // Setting aside happens only when the step already has a folder: a damaged one.
            // Train to step 4, damage it, resume (from step 2) and die re-saving step 4.
            assert_ok(&train(&args(&out, 4, false), None));
            flip_bit(&checkpoint::step_dir(&ckpt_root(&out), 4).join("optim.mpk"));
        }
        let resume = stage == "old-set-aside";
        let died = train(
            &keep_one(args(&out, 6, resume)),
            Some(&format!("{stage}@4")),
        );
        assert_eq!(
            died.status.signal(),
            Some(9),
            "{stage}: the trainer was not killed: {}",
            stderr(&died)
        );
        // Nothing complete was lost: step 2 is intact, and step 4 once it was renamed.
        let complete = match stage {
            "renamed" | "pruned" => 4,
            _ => 2,
        };
        assert_eq!(newest_intact(&out), complete, "{stage}");
        let again = train(&keep_one(args(&out, 6, true)), None);
        assert_ok(&again);
        assert_eq!(
            train_losses(&out),
            want,
            "{stage}: the resumed loss curve differs"
        );
        resumed += 1;
    }
    assert_eq!(resumed, SAVE_STAGES.len());
}

#[test]
fn a_damaged_checkpoint_is_named_and_resume_takes_the_newest_intact_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let straight = tmp.path().join("straight");
    assert_ok(&train(&args(&straight, 6, false), None));

    let out = tmp.path().join("run");
    assert_ok(&train(&args(&out, 4, false), None));
    let step4 = checkpoint::step_dir(&ckpt_root(&out), 4);
    let optim = step4.join("optim.mpk");
    let bytes = std::fs::read(&optim).expect("read");
    std::fs::write(&optim, &bytes[..bytes.len() - 100]).expect("truncate");
    let err = checkpoint::verify(&step4).expect_err("truncation found");
    assert!(err.to_string().contains("optim.mpk is damaged"), "{err}");

    let resumed = train(&args(&out, 6, true), None);
    assert_ok(&resumed);
    let said = stderr(&resumed);
    assert!(said.contains("optim.mpk is damaged"), "{said}");
    assert!(said.contains("step-00000002 (step 2)"), "{said}");
    assert_eq!(train_losses(&out), train_losses(&straight));

    // Both damaged: one error line naming each file, and nothing resumed.
    flip_bit(&checkpoint::step_dir(&ckpt_root(&out), 4).join("model.mpk"));
    flip_bit(&checkpoint::step_dir(&ckpt_root(&out), 6).join("state.json"));
    let refused = train(&args(&out, 8, true), None);
    assert!(!refused.status.success());
    let said = stderr(&refused);
    let last = said.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: --resume: no intact checkpoint"),
        "{said}"
    );
    assert!(last.contains("model.mpk is damaged") && last.contains("state.json is damaged"));

    // `--init` from a damaged step checkpoint is refused the same way.
    let init = InitSource::find(&checkpoint::step_dir(&ckpt_root(&out), 4)).expect("a checkpoint");
    let err = init
        .load::<NdArray<f32>>(&Default::default())
        .expect_err("refused");
    assert!(err.to_string().contains("model.mpk is damaged"), "{err}");
}

#[test]
fn a_nan_loss_stops_naming_the_step_and_the_last_checkpoint_and_overwrites_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("stop");
    let stopped = train(&args(&out, 6, false), Some("nan-loss@3"));
    assert!(!stopped.status.success());
    let said = stderr(&stopped);
    let last = said.lines().last().unwrap_or_default();
    assert!(last.contains("step 3"), "{said}");
    assert!(last.contains("step-00000002"), "{said}");
    assert_eq!(
        checkpoint::list(&ckpt_root(&out))
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(newest_intact(&out), 2);
    assert!(!out.join("model").exists(), "a final model was written");

    let out = tmp.path().join("skip");
    let mut a = args(&out, 6, false);
    a.push("on_nan=skip".into());
    assert_ok(&train(&a, Some("nan-loss@3")));
    let steps: Vec<usize> = train_losses(&out).iter().map(|r| r.0).collect();
    assert_eq!(steps, vec![1, 2, 4, 5, 6]);
}

#[test]
fn a_full_disk_fails_clearly_and_leaves_the_previous_checkpoint_intact() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("run");
    assert_ok(&train(&args(&out, 2, false), None));
    let model = checkpoint::step_dir(&ckpt_root(&out), 2).join("model.mpk");
    let optim = checkpoint::step_dir(&ckpt_root(&out), 2).join("optim.mpk");
    let size = |p: &Path| std::fs::metadata(p).expect("size").len();
    // A file-size limit between the two checkpoint files: the model fits, the optimizer
    // state does not, as on a disk that fills up mid-checkpoint. With SIGXFSZ ignored the
    // write fails with EFBIG instead of killing the process.
    let limit_kib = (size(&model) + size(&optim)) / 2 / 1024;
    let resume = keep_one(args(&out, 4, true))
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let full = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {limit_kib}; exec {BIN} {resume}"
        ))
        .env_remove("HYMBA_FAULT")
        .output()
        .expect("bash runs");
    assert!(!full.status.success());
    let said = stderr(&full);
    let last = said.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("optim.mpk"),
        "{said}"
    );
    assert_eq!(newest_intact(&out), 2);
    assert!(!checkpoint::step_dir(&ckpt_root(&out), 4).exists());
}
