//! The bridge between a Hymba model and burn-train: a `LanguageModel` wrapper implementing
//! `TrainStep`/`InferenceStep` on next-token batches (pretraining, SFT) and preference
//! batches (DPO), and the per-step statistics the dashboard shows.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::{Adaptor, ItemLazy};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use hymba::precision::cast_params;
use hymba::{Hymba, HymbaBackend};

use crate::dpo::{DpoStats, dpo_loss, response_logprobs};

/// A batch of token rows (`T` tokens each: inputs `[.., ..T-1]`, targets `[.., 1..]`).
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    /// `[batch, T]`
    pub ids: Tensor<B, 2, Int>,
    /// Weights of the targets `ids[:, 1..]` (`None` = all 1), `[batch, T - 1]`.
    pub loss_mask: Option<Tensor<B, 2>>,
    /// Targets with non-zero weight (the token count of the loss).
    pub targets: usize,
    /// DPO: the rows are `P` chosen then `P` rejected sequences, the mask marks response
    /// tokens, and the loss is DPO's instead of the next-token loss.
    pub preference: Option<Preference<B>>,
    /// The loss is multiplied by this before backward: `1 / grad_accum`, so that summed
    /// micro-batch gradients are their average.
    pub scale: f32,
}

/// The DPO half of a preference batch.
#[derive(Debug, Clone)]
pub struct Preference<B: Backend> {
    /// The reference model's summed response log-probs, in row order, `[2P]`.
    pub reference: Tensor<B, 1>,
    /// DPO's β.
    pub beta: f64,
}

/// What one step reports (already on the host, so metrics never touch the device).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LmStats {
    /// Mean next-token loss (nats), or the DPO loss.
    pub loss: f64,
    /// Target tokens in the batch (DPO: pairs), the weight of this batch in averages.
    pub tokens: usize,
    /// Input tokens processed (rows × (T − 1)); what tokens/s counts.
    pub seq_tokens: usize,
    /// DPO only: the batch's reward accuracy, margin and rewards.
    pub dpo: DpoStats,
    /// Global gradient norm before clipping (training only).
    pub grad_norm: f64,
    /// Text tokens per second of the optimizer step (training only).
    pub tokens_per_sec: f64,
    /// Model FLOPs utilisation in percent (training only; 0 when the peak is unknown).
    pub mfu_pct: f64,
}

impl ItemLazy for LmStats {
    type ItemSync = LmStats;

    fn sync(self) -> Self::ItemSync {
        self
    }
}

impl Adaptor<LmStats> for LmStats {
    fn adapt(&self) -> LmStats {
        *self
    }
}

/// A Hymba model as burn-train sees it: the master weights, and the dtype its forward and
/// backward passes run in.
#[derive(Module, Debug)]
pub struct LanguageModel<B: Backend> {
    /// The model (the master weights the optimizer updates).
    pub hymba: Hymba<B>,
    /// Compute dtype: `None` = the weights' own; `Some(bf16)` = every pass runs on a cast
    /// copy of the weights, whose gradients flow back to these (see
    /// [`hymba::precision::cast_params`]).
    #[module(skip)]
    pub compute: Option<DType>,
}

impl<B: Backend> LanguageModel<B> {
    /// Wraps `hymba`, computing in `compute` (`None` = the weights' dtype).
    pub fn new(hymba: Hymba<B>, compute: Option<DType>) -> Self {
        Self { hymba, compute }
    }

    /// The model the passes run on: the weights themselves, or their cast copy (a cheap
    /// elementwise pass over the parameters, recorded by autodiff like any other op).
    pub fn compute_model(&self) -> Hymba<B> {
        match self.compute {
            Some(dtype) => cast_params(self.hymba.clone(), dtype),
            None => self.hymba.clone(),
        }
    }
}

impl<B: HymbaBackend> LanguageModel<B> {
    /// Loss of a batch (scaled by `batch.scale`) and its host figures: the mean next-token
    /// loss over weighted targets, or for a preference batch the DPO loss over its pairs.
    pub fn loss(&self, batch: LmBatch<B>) -> (Tensor<B, 1>, LmStats) {
        let [rows, t] = batch.ids.dims();
        let seq_tokens = rows * (t - 1);
        if let Some(pref) = batch.preference {
            let pairs = rows / 2;
            let mask = match batch.loss_mask {
                Some(m) => m,
                None => Tensor::ones([rows, t - 1], &batch.ids.device()),
            };
            let policy = response_logprobs(&self.compute_model(), batch.ids, mask);
            let reference = pref.reference.cast(policy.dtype());
            let (loss, dpo) = dpo_loss(
                policy.clone().narrow(0, 0, pairs),
                policy.narrow(0, pairs, pairs),
                reference.clone().narrow(0, 0, pairs),
                reference.narrow(0, pairs, pairs),
                pref.beta,
            );
            let stats = LmStats {
                loss: dpo.loss,
                tokens: pairs,
                seq_tokens,
                dpo,
                ..Default::default()
            };
            return (loss.mul_scalar(batch.scale), stats);
        }
        let loss = self
            .compute_model()
            .forward_loss(batch.ids, batch.loss_mask);
        let value: f64 = loss.clone().into_scalar().elem();
        let stats = LmStats {
            loss: value,
            tokens: batch.targets,
            seq_tokens,
            ..Default::default()
        };
        (loss.mul_scalar(batch.scale), stats)
    }
}

impl<B: AutodiffBackend + HymbaBackend> TrainStep for LanguageModel<B> {
    type Input = LmBatch<B>;
    type Output = LmStats;

    fn step(&self, batch: LmBatch<B>) -> TrainOutput<LmStats> {
        let (loss, stats) = self.loss(batch);
        TrainOutput::new(self, loss.backward(), stats)
    }
}

impl<B: HymbaBackend> InferenceStep for LanguageModel<B> {
    type Input = LmBatch<B>;
    type Output = LmStats;

    fn step(&self, batch: LmBatch<B>) -> LmStats {
        self.loss(batch).1
    }
}
