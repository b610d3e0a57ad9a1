//! Plain line logs for when stdout is not a terminal (burn's TUI dashboard is used
//! otherwise): one line per `every` training steps and one per validation run, with the
//! latest value of every metric.

use burn::train::metric::MetricDefinition;
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

/// Prints `step N/T | metric value | …` lines.
pub struct LineRenderer {
    every: usize,
    train: Vec<(String, String)>,
    valid: Vec<(String, String)>,
}

impl LineRenderer {
    /// A renderer printing every `every` steps.
    pub fn new(every: usize) -> Self {
        Self {
            every: every.max(1),
            train: Vec::new(),
            valid: Vec::new(),
        }
    }
}

fn record(into: &mut Vec<(String, String)>, state: MetricState) {
    let entry = match state {
        MetricState::Generic(e) | MetricState::Numeric(e, _) => e,
    };
    let id = format!("{:?}", entry.metric_id);
    let text = entry.serialized_entry.formatted;
    match into.iter_mut().find(|(k, _)| *k == id) {
        Some(slot) => slot.1 = text,
        None => into.push((id, text)),
    }
}

fn line(metrics: &[(String, String)]) -> String {
    metrics
        .iter()
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, state: MetricState) {
        record(&mut self.train, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        record(&mut self.valid, state);
    }

    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        if let Some(p) = item.progress
            && (p.items_processed % self.every == 0 || p.items_processed == p.items_total)
        {
            println!(
                "step {}/{} | {}",
                p.items_processed,
                p.items_total,
                line(&self.train)
            );
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        if let Some(p) = item.progress
            && p.items_processed >= p.items_total
        {
            println!(
                "valid @ step {} | {}",
                item.global_progress.items_processed,
                line(&self.valid)
            );
        }
    }
}

impl MetricsRendererEvaluation for LineRenderer {
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}

    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, _: MetricDefinition) {}
}
