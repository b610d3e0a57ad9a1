//! The bridge between a Hymba model and burn-train: a `LanguageModel` wrapper implementing
//! `TrainStep`/`InferenceStep` on next-token batches, and the per-step statistics the
//! dashboard shows.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::{Adaptor, ItemLazy};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use hymba::{Hymba, HymbaBackend};

/// A batch of token windows (`seq_len + 1` tokens each: inputs and shifted targets).
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    /// `[batch, seq_len + 1]`
    pub ids: Tensor<B, 2, Int>,
    /// Weights of the targets `ids[:, 1..]` (`None` = all 1), `[batch, seq_len]`.
    pub loss_mask: Option<Tensor<B, 2>>,
    /// The loss is multiplied by this before backward: `1 / grad_accum`, so that summed
    /// micro-batch gradients are their average.
    pub scale: f32,
}

/// What one step reports (already on the host, so metrics never touch the device).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LmStats {
    /// Mean next-token loss (nats).
    pub loss: f64,
    /// Target tokens in the batch.
    pub tokens: usize,
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

/// A Hymba model as burn-train sees it.
#[derive(Module, Debug)]
pub struct LanguageModel<B: Backend> {
    /// The model.
    pub hymba: Hymba<B>,
}

impl<B: HymbaBackend> LanguageModel<B> {
    /// Mean loss of a batch (scaled by `batch.scale`) and its host value.
    pub fn loss(&self, batch: LmBatch<B>) -> (Tensor<B, 1>, LmStats) {
        let [b, t] = batch.ids.dims();
        let loss = self.hymba.forward_loss(batch.ids, batch.loss_mask);
        let value: f64 = loss.clone().into_scalar().elem();
        let stats = LmStats {
            loss: value,
            tokens: b * (t - 1),
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
