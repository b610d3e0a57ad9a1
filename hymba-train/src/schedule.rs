//! Learning-rate schedules with warmup — WSD (the paper's warmup-stable-decay, spec §7) and
//! warmup-cosine — as burn `LrScheduler`s whose record is the step counter, so a resumed
//! run continues the curve exactly. burn 0.21 has no sequential scheduler to compose these.

use burn::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::prelude::*;

use crate::run_config::{ScheduleKind, ScheduleSection};

/// A schedule over `total` optimizer steps; [`LrScheduler::step`] is called once per
/// optimizer step (not per micro-batch).
#[derive(Debug, Clone)]
pub struct LrSchedule {
    kind: ScheduleKind,
    peak: f64,
    min: f64,
    warmup: usize,
    decay: usize,
    total: usize,
    /// Steps taken so far.
    pub step: usize,
}

impl LrSchedule {
    /// The schedule of a run.
    pub fn new(section: &ScheduleSection, peak: f64, min: f64, total: usize) -> Self {
        let warmup = (section.warmup_frac * total as f64).round() as usize;
        let decay = (section.decay_frac * total as f64).round() as usize;
        Self {
            kind: section.kind,
            peak,
            min,
            warmup,
            decay: decay.min(total - warmup.min(total)),
            total,
            step: 0,
        }
    }

    /// The learning rate of (1-based) step `s`.
    pub fn lr_at(&self, s: usize) -> f64 {
        if s <= self.warmup && self.warmup > 0 {
            return self.peak * s as f64 / self.warmup as f64;
        }
        let s = s.min(self.total);
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Wsd => {
                let decay_start = self.total - self.decay;
                if s <= decay_start || self.decay == 0 {
                    self.peak
                } else {
                    let t = (s - decay_start) as f64 / self.decay as f64;
                    self.peak + (self.min - self.peak) * t
                }
            }
            ScheduleKind::Cosine => {
                let span = (self.total - self.warmup).max(1) as f64;
                let t = (s - self.warmup) as f64 / span;
                self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

impl LrScheduler for LrSchedule {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        self.step += 1;
        self.lr_at(self.step)
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wsd_warms_up_holds_and_decays() {
        let section = ScheduleSection {
            kind: ScheduleKind::Wsd,
            warmup_frac: 0.1,
            decay_frac: 0.2,
        };
        let s = LrSchedule::new(&section, 1.0, 0.0, 100);
        assert_eq!(s.lr_at(5), 0.5);
        assert_eq!(s.lr_at(10), 1.0);
        assert_eq!(s.lr_at(80), 1.0);
        assert!((s.lr_at(90) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr_at(100), 0.0);
    }

    #[test]
    fn cosine_ends_at_min() {
        let section = ScheduleSection {
            kind: ScheduleKind::Cosine,
            warmup_frac: 0.0,
            decay_frac: 0.0,
        };
        let s = LrSchedule::new(&section, 1.0, 0.1, 10);
        assert!((s.lr_at(0) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(5) - 0.55).abs() < 1e-12);
        assert!((s.lr_at(10) - 0.1).abs() < 1e-12);
    }
}
