//! Dashboard metrics read from [`LmStats`]: loss, perplexity, gradient norm, tokens/s, MFU
//! (learning rate comes from burn's own `LearningRateMetric`).

use std::sync::Arc;

use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

use crate::model::LmStats;

/// One numeric field of [`LmStats`] as a burn metric.
#[derive(Clone)]
pub struct StatMetric {
    name: MetricName,
    unit: Option<&'static str>,
    precision: usize,
    higher_is_better: bool,
    extract: fn(&LmStats) -> f64,
    state: NumericMetricState,
}

impl StatMetric {
    fn new(
        name: &str,
        unit: Option<&'static str>,
        precision: usize,
        higher_is_better: bool,
        extract: fn(&LmStats) -> f64,
    ) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            unit,
            precision,
            higher_is_better,
            extract,
            state: NumericMetricState::default(),
        }
    }

    /// Mean next-token loss.
    pub fn loss() -> Self {
        Self::new("Loss", None, 4, false, |s| s.loss)
    }
    /// exp(loss).
    pub fn perplexity() -> Self {
        Self::new("Perplexity", None, 2, false, |s| s.loss.exp())
    }
    /// Global gradient norm before clipping.
    pub fn grad_norm() -> Self {
        Self::new("Grad norm", None, 3, false, |s| s.grad_norm)
    }
    /// Text tokens per second.
    pub fn tokens_per_sec() -> Self {
        Self::new("Throughput", Some("tok/s"), 0, true, |s| s.tokens_per_sec)
    }
    /// Model FLOPs utilisation.
    pub fn mfu() -> Self {
        Self::new("MFU", Some("%"), 2, true, |s| s.mfu_pct)
    }
    /// DPO: share of pairs whose chosen reward beats the rejected one.
    pub fn reward_accuracy() -> Self {
        Self::new("Reward accuracy", None, 3, true, |s| s.dpo.reward_accuracy)
    }
    /// DPO: mean chosen − rejected reward.
    pub fn reward_margin() -> Self {
        Self::new("Reward margin", None, 4, true, |s| s.dpo.margin)
    }
    /// DPO: mean `β·(log π − log π_ref)` of the chosen responses.
    pub fn chosen_reward() -> Self {
        Self::new("Chosen reward", None, 4, true, |s| s.dpo.chosen_reward)
    }
    /// DPO: mean `β·(log π − log π_ref)` of the rejected responses.
    pub fn rejected_reward() -> Self {
        Self::new("Rejected reward", None, 4, false, |s| s.dpo.rejected_reward)
    }
}

impl Metric for StatMetric {
    type Input = LmStats;

    fn update(&mut self, item: &LmStats, _metadata: &MetricMetadata) -> SerializedEntry {
        let mut format = FormatOptions::new(self.name.clone()).precision(self.precision);
        if let Some(unit) = self.unit {
            format = format.unit(unit);
        }
        self.state
            .update((self.extract)(item), item.tokens.max(1), format)
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: self.unit.map(str::to_string),
            higher_is_better: self.higher_is_better,
        }
        .into()
    }
}

impl Numeric for StatMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
