//! `hymba-eval tasks`: zero-shot multiple choice scored like lm-evaluation-harness.
//!
//! Each choice is scored by `log P(choice | context)` summed over its tokens
//! ([`hymba::score`]); `acc` picks the highest sum, `acc_norm` the highest sum per byte of
//! the choice text (lm-eval's byte-length normalisation). Records with WinoGrande partial
//! scoring (`partial`) score the shared continuation after each choice's own context
//! instead, normalised by the continuation's bytes.

use std::path::{Path, PathBuf};

use hymba::score::{Continuation, score_continuations};
use hymba::{BackendRunner, HymbaBackend, HymbaError};
use hymba_datasets::DataError;
use hymba_datasets::jsonl::{SkippedLine, read_jsonl};
use hymba_datasets::multiple_choice::{McExample, ScoredSequence, continuation_tokens};
use hymba_datasets::tokenizer::Tokenizer;
use serde::Serialize;

use crate::generate::Weights;

/// One question, tokenized: one scored sequence per choice.
#[derive(Debug, Clone)]
pub struct McItem {
    /// Per choice: the sequence and the byte length used by `acc_norm`.
    pub choices: Vec<(ScoredSequence, usize)>,
    /// Index of the right choice.
    pub gold: usize,
}

/// One task file, tokenized.
#[derive(Debug, Clone)]
pub struct McTask {
    /// Task name (the file stem).
    pub name: String,
    /// Its questions.
    pub items: Vec<McItem>,
    /// Lines that were skipped, with their numbers.
    pub skipped: Vec<SkippedLine>,
}

/// Reads and tokenizes one JSONL task file. Bad lines are skipped and reported (or, with
/// `strict`, the first one is an error naming its line).
pub fn load_task(
    path: &Path,
    tok: &Tokenizer,
    limit: Option<usize>,
    strict: bool,
) -> Result<McTask, DataError> {
    let records = read_jsonl::<McExample>(path, strict)?;
    let lines = record_lines(path, &records.skipped)?;
    let mut skipped = records.skipped;
    let mut items = Vec::new();
    for (i, ex) in records.records.into_iter().enumerate() {
        if limit.is_some_and(|n| items.len() >= n) {
            break;
        }
        // The two passes over the file agree; fall back to the record number if they do not.
        let line = lines.get(i).copied().unwrap_or(i + 1);
        match tokenize(&ex, tok) {
            Ok(choices) => items.push(McItem {
                choices,
                gold: ex.gold,
            }),
            Err(e) if !strict => skipped.push(SkippedLine {
                line,
                reason: e.to_string(),
            }),
            Err(e) => {
                return Err(DataError::Invalid(format!(
                    "{}:{}: {e}",
                    path.display(),
                    line
                )));
            }
        }
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().trim_end_matches(".jsonl").to_string())
        .unwrap_or_else(|| path.display().to_string());
    Ok(McTask {
        name,
        items,
        skipped,
    })
}

/// The 1-based line of every parsed record: the non-blank lines that were not skipped.
fn record_lines(path: &Path, skipped: &[SkippedLine]) -> Result<Vec<usize>, DataError> {
    use std::io::BufRead;
    let mut out = Vec::new();
    for (i, line) in hymba_datasets::input::open_text(path)?.lines().enumerate() {
        let blank = line.is_ok_and(|l| l.trim().is_empty());
        if !blank && !skipped.iter().any(|s| s.line == i + 1) {
            out.push(i + 1);
        }
    }
    Ok(out)
}

fn tokenize(ex: &McExample, tok: &Tokenizer) -> Result<Vec<(ScoredSequence, usize)>, DataError> {
    match &ex.partial {
        Some(p) => p
            .contexts
            .iter()
            .map(|ctx| {
                Ok((
                    continuation_tokens(tok, ctx, &p.continuation)?,
                    p.continuation.len(),
                ))
            })
            .collect(),
        None => ex
            .choices
            .iter()
            .map(|c| Ok((continuation_tokens(tok, &ex.context, c)?, c.len())))
            .collect(),
    }
}

/// Accuracy of one task.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskScore {
    /// Task name.
    pub task: String,
    /// Questions scored.
    pub n: usize,
    /// Fraction right by summed log-prob.
    pub acc: f64,
    /// Fraction right by log-prob per byte.
    pub acc_norm: f64,
    /// Lines skipped.
    pub skipped: usize,
}

/// Picks `(acc choice, acc_norm choice)` from per-choice `(log-prob, bytes)`; ties go to
/// the first choice, as lm-eval's argmax does.
pub fn pick(scores: &[(f64, usize)]) -> (usize, usize) {
    let argmax = |f: &dyn Fn(&(f64, usize)) -> f64| {
        let mut best = 0;
        for (i, s) in scores.iter().enumerate() {
            if f(s) > f(&scores[best]) {
                best = i;
            }
        }
        best
    };
    (argmax(&|s| s.0), argmax(&|s| s.0 / s.1.max(1) as f64))
}

/// The evaluation as a job for [`hymba::run_on`].
pub struct TasksJob {
    /// The model.
    pub weights: Weights,
    /// Tokenized tasks.
    pub tasks: Vec<McTask>,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Id that pads the batch (any id: padding comes after every scored token).
    pub pad_id: u32,
    /// Show a progress bar.
    pub progress: bool,
}

impl BackendRunner for TasksJob {
    type Output = Result<Vec<TaskScore>, HymbaError>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        let model = self.weights.load::<B>(&device)?;
        let total: usize = self
            .tasks
            .iter()
            .flat_map(|t| &t.items)
            .map(|i| i.choices.len())
            .sum();
        let bar = progress_bar(total as u64, self.progress, "choices");
        let mut out = Vec::new();
        for task in &self.tasks {
            bar.set_message(task.name.clone());
            // Every choice of every item, flattened, scored in batches.
            let flat: Vec<(&ScoredSequence, usize)> = task
                .items
                .iter()
                .flat_map(|i| i.choices.iter().map(|(s, b)| (s, *b)))
                .collect();
            let mut scores = Vec::with_capacity(flat.len());
            for chunk in flat.chunks(self.batch_size.max(1)) {
                let seqs: Vec<Continuation> = chunk
                    .iter()
                    .map(|(s, _)| Continuation {
                        ids: &s.ids,
                        target_start: s.target_start,
                    })
                    .collect();
                let got = score_continuations(&model, &seqs, self.pad_id)?;
                scores.extend(
                    got.iter()
                        .zip(chunk)
                        .map(|(g, (_, bytes))| (g.logprob, *bytes)),
                );
                bar.inc(chunk.len() as u64);
            }
            let (mut acc, mut acc_norm, mut k) = (0usize, 0usize, 0usize);
            for item in &task.items {
                let n = item.choices.len();
                let (a, an) = pick(&scores[k..k + n]);
                acc += usize::from(a == item.gold);
                acc_norm += usize::from(an == item.gold);
                k += n;
            }
            let n = task.items.len();
            out.push(TaskScore {
                task: task.name.clone(),
                n,
                acc: acc as f64 / n.max(1) as f64,
                acc_norm: acc_norm as f64 / n.max(1) as f64,
                skipped: task.skipped.len(),
            });
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

/// A progress bar on stderr counting `unit` (hidden when `show` is false, e.g. when stderr
/// is not a terminal).
pub fn progress_bar(len: u64, show: bool, unit: &str) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let template =
        format!("{{msg:>20}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}");
    bar.set_style(
        indicatif::ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Prints the per-task table and the average.
pub fn print_table(scores: &[TaskScore]) {
    println!(
        "{:<28} {:>6} {:>8} {:>9} {:>8}",
        "task", "n", "acc", "acc_norm", "skipped"
    );
    for s in scores {
        println!(
            "{:<28} {:>6} {:>8.4} {:>9.4} {:>8}",
            s.task, s.n, s.acc, s.acc_norm, s.skipped
        );
    }
    if scores.len() > 1 {
        let m = scores.len() as f64;
        println!(
            "{:<28} {:>6} {:>8.4} {:>9.4}",
            "average",
            scores.iter().map(|s| s.n).sum::<usize>(),
            scores.iter().map(|s| s.acc).sum::<f64>() / m,
            scores.iter().map(|s| s.acc_norm).sum::<f64>() / m
        );
    }
}

/// A task file argument that does not exist, named.
pub fn check_files(files: &[PathBuf]) -> Result<(), String> {
    match files.iter().find(|f| !f.is_file()) {
        Some(f) => Err(format!("task file {} does not exist", f.display())),
        None => Ok(()),
    }
}
