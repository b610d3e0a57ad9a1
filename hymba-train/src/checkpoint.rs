//! Step checkpoints with exact resume: model, optimizer state, scheduler step and data
//! position.
//!
//! Crash safety. A checkpoint is written into `step-NNNNNNNN.tmp/`: each file, then a
//! `checksums.json` with every file's size and XXH3 checksum, each flushed to the disk
//! (`fsync`), then the folder. Only then is it renamed to `step-NNNNNNNN/`. A step that
//! already has a folder (a damaged one left by an earlier crash) is set aside as
//! `step-NNNNNNNN.old/` and removed only after the new folder is in place, and the oldest
//! checkpoints beyond the kept count are pruned last. Whenever the process dies, the newest
//! complete checkpoint is still there; [`recover`] tidies what a crash left half done.
//!
//! Every load ([`load`], `--resume`, `--init`) checks the checksums first, so a truncated or
//! bit-flipped checkpoint is one clear error naming the file; `--resume` then falls back to
//! the newest checkpoint that is intact ([`newest_valid`]) and says so.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder, RecorderError};
use hymba_datasets::SamplerState;
use hymba_datasets::durable::{self, Checksums};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::fault::kill_point;

/// Everything of a checkpoint that is not a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Where the training data sampler stands.
    pub sampler: SamplerState,
}

/// The files of a checkpoint, in the order they are written (`checksums.json` comes last).
pub const FILES: [&str; 3] = ["model.mpk", "optim.mpk", "state.json"];

/// The stages of [`save`], in order: the points where the crash tests kill the writer
/// (`HYMBA_FAULT=<stage>@<step>`, see [`crate::fault`]).
pub const SAVE_STAGES: [&str; 8] = [
    "folder-created",
    "model-written",
    "optim-written",
    "state-written",
    "checksums-written",
    "old-set-aside",
    "renamed",
    "pruned",
];

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// The checkpoint directory of step `step`.
pub fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// The step a `step-NNNNNNNN` folder name stands for, with the suffix after it (`.tmp`, `.old`,
/// or nothing for a complete checkpoint).
fn parse_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("step-")?;
    let digits = rest.find('.').unwrap_or(rest.len());
    Some((rest[..digits].parse().ok()?, &rest[digits..]))
}

/// Checkpoints under `root` (complete folders, not yet checked), oldest first.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            match parse_name(&name)? {
                (step, "") => Some((step, e.path())),
                _ => None,
            }
        })
        .collect();
    found.sort();
    found
}

/// Tidies what a crash in [`save`] left: a `step-N.old` whose `step-N` is missing (the crash
/// came between the two renames) is put back; other `.old` and `.tmp` folders are removed.
pub fn recover(root: &Path) -> Result<(), TrainError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        match parse_name(&name) {
            Some((step, ".old")) if !step_dir(root, step).exists() => {
                std::fs::rename(&path, step_dir(root, step))
                    .map_err(|e| TrainError::io(&path, e))?;
            }
            Some((_, ".old" | ".tmp")) => {
                std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
            }
            _ => {}
        }
    }
    Ok(durable::sync_dir(root)?)
}

/// Writes the checkpoint of `state.step` crash-safely (see the module docs) and keeps the
/// newest `keep`.
pub fn save<B: Backend, M: Module<B>, O: Record<B>>(
    root: &Path,
    state: &TrainState,
    model: &M,
    optim: O,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let step = state.step;
    let [
        folder_created,
        model_written,
        optim_written,
        state_written,
        sums_written,
        _set_aside,
        _renamed,
        pruned,
    ] = SAVE_STAGES;
    std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    recover(root)?;
    let fin = step_dir(root, step);
    let tmp = durable::with_suffix(&fin, ".tmp");
    std::fs::create_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    kill_point(folder_created, step);
    let rec = recorder();
    rec.record(model.clone().into_record(), tmp.join("model"))
        .map_err(|e| TrainError::io(tmp.join("model.mpk"), e))?;
    kill_point(model_written, step);
    rec.record(optim, tmp.join("optim"))
        .map_err(|e| TrainError::io(tmp.join("optim.mpk"), e))?;
    kill_point(optim_written, step);
    let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::write(tmp.join("state.json"), json)
        .map_err(|e| TrainError::io(tmp.join("state.json"), e))?;
    kill_point(state_written, step);
    durable::sync_tree(&tmp)?;
    Checksums::of(&tmp, &FILES)?.write(&tmp)?;
    kill_point(sums_written, step);
    // The stages `old-set-aside` and `renamed` are reported by `replace_dir` itself.
    durable::replace_dir(&tmp, &fin, |stage| kill_point(stage, step))?;
    let all = list(root);
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        if *dir != fin {
            std::fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
    }
    durable::sync_dir(root)?;
    kill_point(pruned, step);
    Ok(fin)
}

/// Checks a checkpoint's files against its `checksums.json` and reads its state.
pub fn verify(dir: &Path) -> Result<TrainState, TrainError> {
    Checksums::verify(dir)?;
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::io(&path, e))
}

/// The newest checkpoint under `root` that passes [`verify`], after [`recover`]. Damaged newer
/// ones are skipped with a warning on stderr naming the damaged file; none intact is an error
/// listing why each was refused.
pub fn newest_valid(root: &Path) -> Result<(TrainState, PathBuf), TrainError> {
    recover(root)?;
    let mut refused = Vec::new();
    for (_, dir) in list(root).into_iter().rev() {
        match verify(&dir) {
            Ok(state) => {
                if !refused.is_empty() {
                    eprintln!(
                        "resuming from {} (step {}), the newest intact checkpoint",
                        dir.display(),
                        state.step
                    );
                }
                return Ok((state, dir));
            }
            Err(e) => {
                eprintln!("warning: skipping a damaged checkpoint: {e}");
                refused.push(e.to_string());
            }
        }
    }
    Err(TrainError::NoCheckpoint(if refused.is_empty() {
        format!("--resume: no checkpoint in {}", root.display())
    } else {
        format!(
            "--resume: no intact checkpoint in {} ({})",
            root.display(),
            refused.join("; ")
        )
    }))
}

/// A loaded checkpoint.
pub struct Loaded<MR, OR> {
    /// The non-tensor state.
    pub state: TrainState,
    /// The model record.
    pub model: MR,
    /// The optimizer record.
    pub optim: OR,
}

/// Reads the checkpoint in `dir`, whose files [`verify`] (or [`newest_valid`]) has checked
/// and whose `state` it returned: the files are hashed once per resume, not twice.
pub fn load<B: Backend, MR: Record<B>, OR: Record<B>>(
    dir: &Path,
    state: TrainState,
    device: &B::Device,
) -> Result<Loaded<MR, OR>, TrainError> {
    let rec = recorder();
    let model = rec
        .load(dir.join("model"), device)
        .map_err(|e| TrainError::io(dir.join("model.mpk"), e))?;
    let optim = rec.load(dir.join("optim"), device).map_err(|e| match e {
        RecorderError::FileNotFound(_) => TrainError::io(dir.join("optim.mpk"), e),
        // There but not decodable (burn reports decoding as `Unknown`): most likely the
        // older format.
        e => TrainError::io(
            dir.join("optim.mpk"),
            format!(
                "not an optimizer state this hymba-train reads (checkpoints written \
                     before the packed AdamW of 2026-12-05 hold burn's per-tensor state and \
                     cannot be resumed): {e}"
            ),
        ),
    })?;
    Ok(Loaded {
        state,
        model,
        optim,
    })
}
