//! `hymba-eval recall`: in-context recall, the ability the paper adds attention heads for.
//!
//! - `phonebook`: synthetic associative recall. A list of `name: number` lines, then a query
//!   for the entry `distance` lines before the end; the model must copy the number (greedy).
//!   Recall over a long distance needs attention; an SSM state compresses the list and loses
//!   it (SWA layers see only their window; the global layers and meta tokens matter).
//! - A JSONL file in the shared recall format (`{"context", "question", "answers"}`):
//!   extractive QA, scored by SQuAD exact match and token F1 of the greedy answer (cut at the
//!   first newline).

use hymba::{BackendRunner, GenerationConfig, HymbaBackend, HymbaError};
use hymba_datasets::RecallExample;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::generate::Weights;

/// One synthetic phone-book query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhonebookItem {
    /// The list and the question, ending with `Answer:`.
    pub prompt: String,
    /// The number, as the model should write it (after a space).
    pub answer: String,
}

const NAMES: [&str; 24] = [
    "Alice", "Bruno", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jonas", "Kemal",
    "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tomas", "Uma", "Viktor",
    "Wanda", "Yusuf",
];

/// `entries` distinct names with random `ddd-dddd` numbers; the query asks for the entry
/// `distance` lines before the end (1 = the last line). `None` when `distance` is not in
/// `1..=entries` or there are more entries than names.
pub fn phonebook(entries: usize, distance: usize, seed: u64) -> Option<PhonebookItem> {
    if distance == 0 || distance > entries || entries > NAMES.len() {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut names: Vec<&str> = NAMES.to_vec();
    // Fisher–Yates with our RNG, so the list is a function of the seed alone.
    for i in (1..names.len()).rev() {
        names.swap(i, rng.random_range(0..=i));
    }
    let lines: Vec<(String, String)> = names[..entries]
        .iter()
        .map(|n| {
            let number = format!(
                "{:03}-{:04}",
                rng.random_range(100..1000),
                rng.random_range(0..10000)
            );
            (n.to_string(), number)
        })
        .collect();
    let (name, number) = &lines[entries - distance];
    let list: String = lines.iter().map(|(n, p)| format!("{n}: {p}\n")).collect();
    Some(PhonebookItem {
        prompt: format!("Phone book:\n{list}Question: What is {name}'s number?\nAnswer:"),
        answer: format!(" {number}"),
    })
}

/// Exact match and token F1, averaged, of `predictions` against `examples`.
pub fn qa_scores(examples: &[RecallExample], predictions: &[String]) -> (f64, f64) {
    let n = examples.len().min(predictions.len()).max(1) as f64;
    let em = examples
        .iter()
        .zip(predictions)
        .filter(|(e, p)| e.exact_match(p))
        .count() as f64;
    let f1: f64 = examples
        .iter()
        .zip(predictions)
        .map(|(e, p)| e.token_f1(p))
        .sum();
    (em / n, f1 / n)
}

/// The first line of a generated answer, trimmed (answers are one line).
pub fn first_line(text: &str) -> String {
    text.trim_start()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Greedy generation for a list of prompts, in batches.
pub struct RecallJob {
    /// The model.
    pub weights: Weights,
    /// Token ids of each prompt.
    pub prompts: Vec<Vec<u32>>,
    /// Tokens to generate per prompt.
    pub max_new_tokens: usize,
    /// Stop ids (e.g. EOS and the newline token).
    pub stop_ids: Vec<u32>,
    /// Prompts per batch.
    pub batch_size: usize,
    /// Show a progress bar.
    pub progress: bool,
}

impl BackendRunner for RecallJob {
    type Output = Result<Vec<Vec<u32>>, HymbaError>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        let model = self.weights.load::<B>(&device)?;
        let config = GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            stop_ids: self.stop_ids.clone(),
            ..GenerationConfig::default()
        };
        let bar = crate::tasks::progress_bar(self.prompts.len() as u64, self.progress, "prompts");
        let mut out = Vec::with_capacity(self.prompts.len());
        for chunk in self.prompts.chunks(self.batch_size.max(1)) {
            out.extend(hymba::generate(&model, chunk, &config)?.tokens);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

/// One row of the phone-book report.
#[derive(Debug, Clone, Serialize)]
pub struct PhonebookRow {
    /// Lines between the queried entry and the question.
    pub distance: usize,
    /// Queries.
    pub n: usize,
    /// Fraction answered exactly.
    pub accuracy: f64,
}
