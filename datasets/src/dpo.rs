//! DPO preference pairs: JSONL `{"prompt", "chosen", "rejected"}` (plain strings).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::jsonl::Validate;
use crate::sft::{MaskedTokens, Message, Role, render_chat, tokenize_masked};
use crate::tokenizer::Tokenizer;

/// One preference pair (other keys, e.g. `source`, are kept if known, else ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpoExample {
    /// The user's request.
    pub prompt: String,
    /// The preferred response.
    pub chosen: String,
    /// The dispreferred response.
    pub rejected: String,
    /// Provenance, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Validate for DpoExample {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.chosen.trim().is_empty() {
            return Err("`chosen` is empty".into());
        }
        if self.rejected.trim().is_empty() {
            return Err("`rejected` is empty".into());
        }
        Ok(())
    }
}

/// How a prompt and a response are joined into one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptFormat {
    /// Hymba's chat template: `[user: prompt, assistant: response]` (after SFT).
    #[default]
    Chat,
    /// `prompt + "\n" + response` (for base models).
    Plain,
}

/// Both sides of a pair, each `BOS prompt response EOS` with mask 1 on the response
/// (its closing `\n` in chat format) and the EOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpoPair {
    /// The chosen sequence.
    pub chosen: MaskedTokens,
    /// The rejected sequence.
    pub rejected: MaskedTokens,
}

impl DpoExample {
    /// Tokenizes both sides in `format`.
    pub fn tokenize(&self, tok: &Tokenizer, format: PromptFormat) -> Result<DpoPair> {
        Ok(DpoPair {
            chosen: self.tokenize_response(tok, &self.chosen, format)?,
            rejected: self.tokenize_response(tok, &self.rejected, format)?,
        })
    }

    fn tokenize_response(
        &self,
        tok: &Tokenizer,
        response: &str,
        format: PromptFormat,
    ) -> Result<MaskedTokens> {
        match format {
            PromptFormat::Chat => {
                let chat = render_chat(&[
                    Message::new(Role::User, self.prompt.clone()),
                    Message::new(Role::Assistant, response),
                ])?;
                tokenize_masked(tok, &chat.text, &chat.assistant_spans, true)
            }
            PromptFormat::Plain => {
                let text = format!("{}\n{response}", self.prompt);
                let response_span = self.prompt.len() + 1..text.len();
                tokenize_masked(tok, &text, std::slice::from_ref(&response_span), true)
            }
        }
    }
}
