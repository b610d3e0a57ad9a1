//! Log-likelihood scoring of continuations: `Σ log P(ids[t] | ids[..t])` over a sequence's
//! target positions. What zero-shot multiple choice (lm-evaluation-harness style) and
//! DPO's reference pass both need.
//!
//! Sequences of different lengths share one forward pass, right-padded: the model is causal
//! (SWA and meta tokens included), so padding after a sequence changes none of its logits.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::error::{HymbaError, Result};
use crate::precision::upcast;
use crate::{Hymba, HymbaBackend};

/// One sequence to score: every token from `target_start` on is scored given the tokens
/// before it (`1 ≤ target_start < ids.len()`).
#[derive(Debug, Clone, Copy)]
pub struct Continuation<'a> {
    /// The whole sequence (context, then continuation).
    pub ids: &'a [u32],
    /// First scored position.
    pub target_start: usize,
}

/// The score of one continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// `Σ log P(target | prefix)`, nats.
    pub logprob: f64,
    /// Number of scored tokens.
    pub tokens: usize,
    /// Whether every scored token is the model's argmax (lm-eval's `is_greedy`).
    pub greedy: bool,
}

/// Scores `seqs` in one padded forward pass (`pad_id` fills the tails).
pub fn score_continuations<B: HymbaBackend>(
    model: &Hymba<B>,
    seqs: &[Continuation<'_>],
    pad_id: u32,
) -> Result<Vec<Score>> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let vocab = model.config.vocab_size;
    for (i, s) in seqs.iter().enumerate() {
        if s.target_start == 0 || s.target_start >= s.ids.len() {
            return Err(HymbaError::Input(format!(
                "sequence {i}: target_start {} must be in 1..{}",
                s.target_start,
                s.ids.len()
            )));
        }
        if let Some(&bad) = s.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(HymbaError::Input(format!(
                "sequence {i}: token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
    }
    let (batch, len) = (
        seqs.len(),
        seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0),
    );
    let mut flat = vec![pad_id as i64; batch * len];
    for (row, s) in seqs.iter().enumerate() {
        for (t, &id) in s.ids.iter().enumerate() {
            flat[row * len + t] = id as i64;
        }
    }
    let device = model.embed_tokens.val().device();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, len]), &device);
    // The model runs on the input positions only, as `Hymba::forward_loss` does.
    let logits = upcast(model.forward(ids.clone().narrow(1, 0, len - 1)));
    let greedy_ids = logits.clone().argmax(2).reshape([batch, len - 1]);
    let targets = ids.narrow(1, 1, len - 1);
    let logp = log_softmax(logits, 2)
        .gather(2, targets.clone().reshape([batch, len - 1, 1]))
        .reshape([batch, len - 1]);
    let logp: Vec<f64> = logp
        .into_data()
        .convert::<f64>()
        .to_vec()
        .map_err(|e| HymbaError::Input(format!("reading log-probs: {e:?}")))?;
    let hits: Vec<bool> = greedy_ids
        .equal(targets)
        .into_data()
        .to_vec()
        .map_err(|e| HymbaError::Input(format!("reading argmax: {e:?}")))?;
    Ok(seqs
        .iter()
        .enumerate()
        .map(|(row, s)| {
            // Logit position p predicts token p + 1.
            let span = row * (len - 1) + s.target_start - 1..row * (len - 1) + s.ids.len() - 1;
            Score {
                logprob: logp[span.clone()].iter().sum(),
                tokens: span.len(),
                greedy: hits[span].iter().all(|&h| h),
            }
        })
        .collect())
}
