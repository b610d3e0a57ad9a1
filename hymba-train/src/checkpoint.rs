//! Step checkpoints with exact resume: model, optimizer state, scheduler step and data
//! position, written into `step-NNNNNNNN.tmp/` and renamed to `step-NNNNNNNN/` only when
//! complete (a directory rename is atomic), the oldest pruned beyond the kept count.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder, RecorderError};
use hymba_datasets::SamplerState;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Everything of a checkpoint that is not a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Where the training data sampler stands.
    pub sampler: SamplerState,
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// The checkpoint directory of step `step`.
pub fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Writes a checkpoint atomically and keeps the newest `keep`.
pub fn save<B: Backend, M: Module<B>, O: Record<B>>(
    root: &Path,
    state: &TrainState,
    model: &M,
    optim: O,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let fin = step_dir(root, state.step);
    let tmp = fin.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let rec = recorder();
    rec.record(model.clone().into_record(), tmp.join("model"))
        .map_err(|e| TrainError::io(tmp.join("model.mpk"), e))?;
    rec.record(optim, tmp.join("optim"))
        .map_err(|e| TrainError::io(tmp.join("optim.mpk"), e))?;
    let json = serde_json::to_string_pretty(state).unwrap_or_default();
    std::fs::write(tmp.join("state.json"), json).map_err(|e| TrainError::io(&tmp, e))?;
    let _ = std::fs::remove_dir_all(&fin);
    std::fs::rename(&tmp, &fin).map_err(|e| TrainError::io(&fin, e))?;
    let all = list(root);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(fin)
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

/// Reads the checkpoint in `dir`.
pub fn load<B: Backend, MR: Record<B>, OR: Record<B>>(
    dir: &Path,
    device: &B::Device,
) -> Result<Loaded<MR, OR>, TrainError> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| TrainError::io(&state_path, e))?;
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
