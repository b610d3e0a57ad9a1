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
    /// Metric id → display name, from `register_metric`.
    names: Vec<(String, String)>,
    train: Vec<(String, String)>,
    valid: Vec<(String, String)>,
}

impl LineRenderer {
    /// A renderer printing every `every` steps.
    pub fn new(every: usize) -> Self {
        Self {
            every: every.max(1),
            names: Vec::new(),
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

/// burn formats a value as `epoch <running mean> - batch <latest>`: a training line shows
/// the latest step, a validation line the mean over the validation pass.
fn pick(formatted: &str, running: bool) -> &str {
    match formatted.split_once(" - batch ") {
        Some((epoch, _)) if running => epoch.trim_start_matches("epoch ").trim(),
        Some((_, batch)) => batch.trim(),
        None => formatted,
    }
}

fn line(names: &[(String, String)], metrics: &[(String, String)], running: bool) -> String {
    metrics
        .iter()
        .map(|(id, v)| {
            let v = pick(v, running);
            match names.iter().find(|(k, _)| k == id) {
                Some((_, name)) => format!("{name} {v}"),
                None => v.to_string(),
            }
        })
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
                line(&self.names, &self.train, false)
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
                line(&self.names, &self.valid, true)
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

    fn register_metric(&mut self, definition: MetricDefinition) {
        let id = format!("{:?}", definition.metric_id);
        if !self.names.iter().any(|(k, _)| *k == id) {
            self.names.push((id, definition.name));
        }
    }
}
