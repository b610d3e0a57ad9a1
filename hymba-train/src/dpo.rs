//! Direct preference optimisation (the paper's second post-training stage, spec §7): the
//! loss on summed response log-probabilities, and those log-probabilities.
//!
//! `L = −log σ(β·((π_c − ref_c) − (π_r − ref_r)))`, averaged over the pairs, where `π_·` and
//! `ref_·` are the policy's and the frozen reference model's summed log-probs of the chosen
//! and rejected responses (response tokens only). The reference values are computed once,
//! before training, and stored beside the data, so no second model is held in memory.
//! `−log σ(z)` is computed as `softplus(−z)`, stable for any `z`.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use hymba::precision::upcast;
use hymba::{Hymba, HymbaBackend};

/// The per-batch figures DPO reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DpoStats {
    /// Mean loss.
    pub loss: f64,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub reward_accuracy: f64,
    /// Mean `chosen reward − rejected reward`.
    pub margin: f64,
    /// Mean `β·(π_c − ref_c)`.
    pub chosen_reward: f64,
    /// Mean `β·(π_r − ref_r)`.
    pub rejected_reward: f64,
}

/// The DPO loss (mean over pairs, differentiable in the policy log-probs) and its figures.
///
/// # Shapes
/// - every input: `[pairs]`
pub fn dpo_loss<B: Backend>(
    policy_chosen: Tensor<B, 1>,
    policy_rejected: Tensor<B, 1>,
    reference_chosen: Tensor<B, 1>,
    reference_rejected: Tensor<B, 1>,
    beta: f64,
) -> (Tensor<B, 1>, DpoStats) {
    let chosen = (policy_chosen - reference_chosen).mul_scalar(beta);
    let rejected = (policy_rejected - reference_rejected).mul_scalar(beta);
    let z = chosen.clone() - rejected.clone();
    // softplus(−z) = max(−z, 0) + log1p(e^{−|z|})
    let neg = z.clone().neg();
    let loss = (neg.clone().clamp_min(0.0) + neg.abs().neg().exp().log1p()).mean();
    let host = |t: Tensor<B, 1>| -> Vec<f64> {
        t.into_data().convert::<f64>().to_vec().unwrap_or_default()
    };
    let (c, r, zs) = (host(chosen), host(rejected), host(z));
    let n = zs.len().max(1) as f64;
    let stats = DpoStats {
        loss: host(loss.clone()).first().copied().unwrap_or(f64::NAN),
        reward_accuracy: zs.iter().filter(|&&z| z > 0.0).count() as f64 / n,
        margin: zs.iter().sum::<f64>() / n,
        chosen_reward: c.iter().sum::<f64>() / n,
        rejected_reward: r.iter().sum::<f64>() / n,
    };
    (loss, stats)
}

/// Summed log-probabilities of the response tokens of each row: `Σ_t mask[t]·log P(ids[t+1]
/// | ids[..=t])`. Differentiable (the policy's values) or not (the reference pass).
///
/// # Shapes
/// - `ids`: `[batch, T]`, `response_mask`: `[batch, T − 1]` (1 where target `ids[:, t+1]` is
///   a response token) → `[batch]`
pub fn response_logprobs<B: HymbaBackend>(
    model: &Hymba<B>,
    ids: Tensor<B, 2, Int>,
    response_mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [batch, t] = ids.dims();
    // The model runs on the input positions only, as `Hymba::forward_loss` does (causality
    // makes it the same log-probs; see there why the length matters).
    let logits = upcast(model.forward(ids.clone().narrow(1, 0, t - 1)));
    let targets = ids.narrow(1, 1, t - 1).reshape([batch, t - 1, 1]);
    let logp = log_softmax(logits, 2)
        .gather(2, targets)
        .reshape([batch, t - 1]);
    let mask = response_mask.cast(logp.dtype());
    (logp * mask).sum_dim(1).reshape([batch])
}
