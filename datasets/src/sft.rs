//! Supervised fine-tuning data: chat JSONL rendered with Hymba's chat template, a loss
//! mask on the assistant's tokens, and packing into fixed-length sequences.
//!
//! Template (Hymba-1.5B-Instruct `tokenizer_config.json`, see `docs/hymba_spec.md` §7):
//!
//! ```text
//! <extra_id_0>System\n{system}\n\n<extra_id_1>User\n{user}\n<extra_id_1>Assistant\n{assistant}\n
//! ```
//!
//! Without a system message the header reads `<extra_id_0>System\n\n`. BOS goes first; EOS
//! after the last assistant turn. The `<extra_id_*>` markers are plain text for LLaMA-2's
//! vocabulary (Hymba's 32,001 ids have no such tokens), so they are tokenized like any text.
//!
//! **Loss mask.** 1 on every token of each assistant turn's content *and its closing `\n`*,
//! and on the final EOS; 0 elsewhere (BOS, system, user, headers, padding). A token belongs
//! to the span its first byte falls in. So the model learns to answer and to stop.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::jsonl::Validate;
use crate::tokenizer::Tokenizer;

/// Opens the system block.
pub const SYSTEM_HEADER: &str = "<extra_id_0>System\n";
/// Opens a user turn.
pub const USER_HEADER: &str = "<extra_id_1>User\n";
/// Opens an assistant turn (and ends a generation prompt).
pub const ASSISTANT_HEADER: &str = "<extra_id_1>Assistant\n";

/// The chat template as a Jinja string, for `tokenizer_config.json`'s `chat_template`, so
/// that `transformers`' `apply_chat_template` renders what [`render_chat`] and
/// [`tokenize_chat`] do: `bos_token`, the template text, then `eos_token` when the last
/// message is the assistant's; with `add_generation_prompt`, the assistant header instead of
/// the EOS (= BOS + [`render_generation_prompt`]). Every newline sits inside a Jinja string
/// literal, so HF's `trim_blocks` / `lstrip_blocks` change nothing.
pub const CHAT_TEMPLATE_JINJA: &str = concat!(
    "{{ bos_token }}{{ '<extra_id_0>System\n' }}",
    "{% if messages|length > 0 and messages[0]['role'] == 'system' %}",
    "{{ messages[0]['content'] + '\n' }}",
    "{% endif %}",
    "{{ '\n' }}",
    "{% for message in messages %}",
    "{% if message['role'] == 'user' %}",
    "{{ '<extra_id_1>User\n' + message['content'] + '\n' }}",
    "{% elif message['role'] == 'assistant' %}",
    "{{ '<extra_id_1>Assistant\n' + message['content'] + '\n' }}",
    "{% endif %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}",
    "{{ '<extra_id_1>Assistant\n' }}",
    "{% elif messages|length > 0 and messages[-1]['role'] == 'assistant' %}",
    "{{ eos_token }}",
    "{% endif %}",
);

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt (at most one, first).
    System,
    /// The user.
    User,
    /// The model; only its turns carry loss.
    Assistant,
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// One SFT record: `{"messages": [{"role", "content"}, ...]}` (other keys are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftExample {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Provenance, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Validate for SftExample {
    fn validate(&self) -> std::result::Result<(), String> {
        check_messages(&self.messages, true)
    }
}

impl SftExample {
    /// Rendered, tokenized and masked (see [`tokenize_chat`]).
    pub fn tokenize(&self, tok: &Tokenizer) -> Result<MaskedTokens> {
        tokenize_chat(tok, &self.messages)
    }
}

/// A system message may only come first; with `need_assistant`, some turn must be the
/// assistant's. Empty contents are allowed (an empty reply still teaches the turn's end).
fn check_messages(messages: &[Message], need_assistant: bool) -> std::result::Result<(), String> {
    if messages.is_empty() {
        return Err("`messages` is empty".into());
    }
    if let Some(i) = messages.iter().skip(1).position(|m| m.role == Role::System) {
        return Err(format!(
            "message {} is a system message; only the first may be",
            i + 1
        ));
    }
    if need_assistant && !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err("no assistant message to learn from".into());
    }
    Ok(())
}

/// A conversation rendered as text, with the byte spans that carry loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The template applied (no BOS/EOS: those are tokens, added by [`tokenize_chat`]).
    pub text: String,
    /// Byte ranges of each assistant turn's content plus its closing `\n`.
    pub assistant_spans: Vec<Range<usize>>,
}

/// Renders `messages` with the chat template.
pub fn render_chat(messages: &[Message]) -> Result<RenderedChat> {
    check_messages(messages, false).map_err(DataError::Invalid)?;
    let mut text = String::from(SYSTEM_HEADER);
    let mut turns = messages;
    if let Some((first, rest)) = messages.split_first()
        && first.role == Role::System
    {
        text.push_str(&first.content);
        text.push('\n');
        turns = rest;
    }
    text.push('\n');
    let mut assistant_spans = Vec::new();
    for m in turns {
        match m.role {
            Role::User => text.push_str(USER_HEADER),
            Role::Assistant => text.push_str(ASSISTANT_HEADER),
            Role::System => unreachable!("checked above"),
        }
        let start = text.len();
        text.push_str(&m.content);
        text.push('\n');
        if m.role == Role::Assistant {
            assistant_spans.push(start..text.len());
        }
    }
    Ok(RenderedChat {
        text,
        assistant_spans,
    })
}

/// The text to generate from: the conversation so far, then the assistant header.
pub fn render_generation_prompt(messages: &[Message]) -> Result<String> {
    let mut text = render_chat(messages)?.text;
    text.push_str(ASSISTANT_HEADER);
    Ok(text)
}

/// Token ids with a loss mask aligned to them.
///
/// `mask[i] == 1` means token `ids[i]` is a prediction target: a trainer feeding
/// `ids[..n-1]` as inputs takes `ids[1..]` as targets and `mask[1..]` as their weights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskedTokens {
    /// Token ids.
    pub ids: Vec<u32>,
    /// 1 where the token carries loss, else 0; same length as `ids`.
    pub mask: Vec<u8>,
}

impl MaskedTokens {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of tokens that carry loss.
    pub fn target_count(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0).count()
    }
}

/// `BOS + tokens(text) + EOS`, with mask 1 on tokens whose first byte lies in one of
/// `spans`, and on the EOS when `mask_eos`.
pub fn tokenize_masked(
    tok: &Tokenizer,
    text: &str,
    spans: &[Range<usize>],
    mask_eos: bool,
) -> Result<MaskedTokens> {
    let (mut ids, offsets) = tok.encode_with_offsets(text, true)?;
    let mut mask: Vec<u8> = offsets
        .iter()
        .enumerate()
        .map(|(i, &(start, end))| {
            // BOS (index 0) has no text; special tokens matched in text do.
            let in_span = i > 0 && end > start && spans.iter().any(|s| s.contains(&start));
            u8::from(in_span)
        })
        .collect();
    ids.push(tok.eos_id());
    mask.push(u8::from(mask_eos));
    Ok(MaskedTokens { ids, mask })
}

/// Renders and tokenizes a conversation: `BOS + template + EOS`, mask on assistant turns
/// (content + closing `\n`) and on the EOS.
pub fn tokenize_chat(tok: &Tokenizer, messages: &[Message]) -> Result<MaskedTokens> {
    check_messages(messages, true).map_err(DataError::Invalid)?;
    let chat = render_chat(messages)?;
    tokenize_masked(tok, &chat.text, &chat.assistant_spans, true)
}

/// Sequences from [`pack`], and what did not fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// Every sequence has exactly `seq_len + 1` tokens (inputs `[..seq_len]`, targets `[1..]`).
    pub sequences: Vec<MaskedTokens>,
    /// Examples longer than `seq_len + 1`, cut to that length.
    pub truncated: usize,
    /// Examples dropped because no loss token survived the cut.
    pub dropped: usize,
}

/// Packs examples, in order, into sequences of `seq_len + 1` tokens: an example that does
/// not fit in the current sequence starts a new one (examples are never split across
/// sequences); the rest is filled with `pad_id` at mask 0. Packed examples attend to each
/// other (plain causal attention), as in Hymba's and LMFlow's packed SFT.
pub fn pack(
    examples: impl IntoIterator<Item = MaskedTokens>,
    seq_len: usize,
    pad_id: u32,
) -> Result<Packed> {
    if seq_len == 0 {
        return Err(DataError::Invalid("seq_len must be at least 1".into()));
    }
    let window = seq_len + 1;
    let mut out = Packed::default();
    let mut cur = MaskedTokens::default();
    let finish = |cur: &mut MaskedTokens, out: &mut Packed| {
        if !cur.is_empty() {
            cur.ids.resize(window, pad_id);
            cur.mask.resize(window, 0);
            out.sequences.push(std::mem::take(cur));
        }
    };
    for mut ex in examples {
        if ex.ids.len() != ex.mask.len() {
            return Err(DataError::Invalid(format!(
                "example has {} ids but {} mask entries",
                ex.ids.len(),
                ex.mask.len()
            )));
        }
        if ex.len() > window {
            ex.ids.truncate(window);
            ex.mask.truncate(window);
            out.truncated += 1;
        }
        if ex.target_count() == 0 {
            out.dropped += 1;
            continue;
        }
        if cur.len() + ex.len() > window {
            finish(&mut cur, &mut out);
        }
        cur.ids.extend_from_slice(&ex.ids);
        cur.mask.extend_from_slice(&ex.mask);
    }
    finish(&mut cur, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_hymba() {
        let msgs = [
            Message::new(Role::System, "S"),
            Message::new(Role::User, "U"),
            Message::new(Role::Assistant, "A"),
        ];
        let r = render_chat(&msgs).unwrap();
        assert_eq!(
            r.text,
            "<extra_id_0>System\nS\n\n<extra_id_1>User\nU\n<extra_id_1>Assistant\nA\n"
        );
        assert_eq!(&r.text[r.assistant_spans[0].clone()], "A\n");
        let no_system = render_chat(&msgs[1..]).unwrap();
        assert_eq!(
            no_system.text,
            "<extra_id_0>System\n\n<extra_id_1>User\nU\n<extra_id_1>Assistant\nA\n"
        );
        assert_eq!(
            render_generation_prompt(&msgs[..2]).unwrap(),
            "<extra_id_0>System\nS\n\n<extra_id_1>User\nU\n<extra_id_1>Assistant\n"
        );
    }

    #[test]
    fn misplaced_system_and_missing_assistant_are_rejected() {
        let ex = SftExample {
            messages: vec![
                Message::new(Role::User, "U"),
                Message::new(Role::System, "S"),
                Message::new(Role::Assistant, "A"),
            ],
            source: None,
        };
        assert!(ex.validate().unwrap_err().contains("system"));
        let ex = SftExample {
            messages: vec![Message::new(Role::User, "U")],
            source: None,
        };
        assert!(ex.validate().unwrap_err().contains("assistant"));
    }

    #[test]
    fn pack_fills_pads_truncates_and_drops() {
        let ex = |n: usize, masked: bool| MaskedTokens {
            ids: (0..n as u32).map(|i| i + 10).collect(),
            mask: (0..n).map(|i| u8::from(masked && i > 0)).collect(),
        };
        let p = pack(
            vec![
                ex(3, true),
                ex(3, true),
                ex(4, true),
                ex(9, true),
                ex(2, false),
            ],
            5,
            0,
        )
        .unwrap();
        assert_eq!(p.sequences.len(), 3);
        assert_eq!(p.sequences[0].ids, vec![10, 11, 12, 10, 11, 12]);
        assert_eq!(p.sequences[1].ids, vec![10, 11, 12, 13, 0, 0]);
        assert_eq!(p.sequences[1].mask, vec![0, 1, 1, 1, 0, 0]);
        assert_eq!(p.sequences[2].ids, vec![10, 11, 12, 13, 14, 15]);
        assert_eq!((p.truncated, p.dropped), (1, 1));
    }
}
