//! Multiple-choice eval records: JSONL `{"context", "choices", "gold"}`, scored
//! lm-evaluation-harness style by `log P(choice | context)` (see `data/eval/README.md`).

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::jsonl::Validate;
use crate::tokenizer::Tokenizer;

/// One question (extra keys such as `twin`, `options` and `subject` are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McExample {
    /// Identifier, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Text before the choice; never ends with whitespace (may be empty: WinoGrande).
    pub context: String,
    /// Candidate continuations; each starts with one space unless `context` is empty.
    pub choices: Vec<String>,
    /// 0-based index of the right choice.
    pub gold: usize,
    /// Provenance, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// WinoGrande partial scoring, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialScoring>,
}

/// lm-eval's WinoGrande partial scoring: `log P(continuation | contexts[i])`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialScoring {
    /// One context per choice (the sentence up to and including the filler).
    pub contexts: Vec<String>,
    /// The shared rest of the sentence.
    pub continuation: String,
}

impl Validate for McExample {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.choices.len() < 2 {
            return Err(format!(
                "needs at least 2 choices, has {}",
                self.choices.len()
            ));
        }
        if self.gold >= self.choices.len() {
            return Err(format!(
                "gold {} is out of range for {} choices",
                self.gold,
                self.choices.len()
            ));
        }
        if let Some(i) = self.choices.iter().position(String::is_empty) {
            return Err(format!("choice {i} is empty"));
        }
        if let Some(p) = &self.partial
            && p.contexts.len() != self.choices.len()
        {
            return Err(format!(
                "partial has {} contexts for {} choices",
                p.contexts.len(),
                self.choices.len()
            ));
        }
        Ok(())
    }
}

/// A sequence to score: sum the log-probabilities of `ids[target_start..]`, each given the
/// tokens before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredSequence {
    /// `BOS + tokens(context + continuation)`.
    pub ids: Vec<u32>,
    /// First scored position (≥ 1).
    pub target_start: usize,
}

/// Tokenizes `context + continuation` once (never the continuation alone: with LLaMA its
/// leading space would become an extra `▁`) and scores the tokens past the context's:
/// `target_start` = the length of the common prefix of `BOS + tokens(context)` and the
/// whole, so a token merged across the border counts as the continuation's.
pub fn continuation_tokens(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<ScoredSequence> {
    let ctx = tok.encode(context, true)?;
    let ids = tok.encode(&format!("{context}{continuation}"), true)?;
    let common = ctx.iter().zip(&ids).take_while(|(a, b)| a == b).count();
    if common >= ids.len() {
        return Err(DataError::Invalid(format!(
            "continuation {continuation:?} adds no tokens to its context"
        )));
    }
    Ok(ScoredSequence {
        ids,
        target_start: common.max(1),
    })
}

impl McExample {
    /// One scored sequence per choice.
    pub fn tokenize_choices(&self, tok: &Tokenizer) -> Result<Vec<ScoredSequence>> {
        self.choices
            .iter()
            .map(|c| continuation_tokens(tok, &self.context, c))
            .collect()
    }
}
