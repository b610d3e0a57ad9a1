//! Recall eval records: JSONL `{"context", "question", "answers"}`, answered by generation
//! and scored by exact match / token F1 with SQuAD's answer normalisation.

use serde::{Deserialize, Serialize};

use crate::jsonl::Validate;

/// One question about a passage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecallExample {
    /// Identifier, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The passage.
    pub context: String,
    /// The question.
    pub question: String,
    /// Accepted answers (any one counts).
    pub answers: Vec<String>,
    /// Provenance, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Validate for RecallExample {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.question.trim().is_empty() {
            return Err("`question` is empty".into());
        }
        if self.answers.iter().all(|a| a.trim().is_empty()) {
            return Err("no non-empty answer".into());
        }
        Ok(())
    }
}

impl RecallExample {
    /// `context + "\nQuestion: " + question + "\nAnswer:"`.
    pub fn prompt(&self) -> String {
        format!("{}\nQuestion: {}\nAnswer:", self.context, self.question)
    }

    /// Whether `prediction` matches any answer after normalisation.
    pub fn exact_match(&self, prediction: &str) -> bool {
        let p = normalize_answer(prediction);
        self.answers.iter().any(|a| normalize_answer(a) == p)
    }

    /// Best token F1 of `prediction` against the answers.
    pub fn token_f1(&self, prediction: &str) -> f64 {
        self.answers
            .iter()
            .map(|a| token_f1(prediction, a))
            .fold(0.0, f64::max)
    }
}

/// SQuAD normalisation: lower-case, drop ASCII punctuation and the articles a/an/the,
/// collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let no_punct: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD token F1 between a prediction and one answer (bag of normalised words).
pub fn token_f1(prediction: &str, answer: &str) -> f64 {
    let p = normalize_answer(prediction);
    let a = normalize_answer(answer);
    let p: Vec<&str> = p.split_whitespace().collect();
    let a: Vec<&str> = a.split_whitespace().collect();
    if p.is_empty() || a.is_empty() {
        return f64::from(u8::from(p == a));
    }
    let mut remaining = a.clone();
    let mut common = 0usize;
    for w in &p {
        if let Some(i) = remaining.iter().position(|r| r == w) {
            remaining.swap_remove(i);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / a.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation_and_scores() {
        assert_eq!(normalize_answer("The  Cat, sat!"), "cat sat");
        let ex = RecallExample {
            id: None,
            context: "c".into(),
            question: "q?".into(),
            answers: vec!["Peter Warlock".into(), "Heseltine".into()],
            source: None,
        };
        assert!(ex.exact_match(" peter warlock."));
        assert!(!ex.exact_match("Warlock"));
        assert!((ex.token_f1("Warlock") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(ex.prompt(), "c\nQuestion: q?\nAnswer:");
    }
}
