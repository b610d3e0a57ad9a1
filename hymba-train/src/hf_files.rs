//! The HF side files of a saved model (`tokenizer_config.json`, `generation_config.json`;
//! see [`hymba::hf`]) filled from the run's tokenizer, so that `transformers` loads the
//! directory with the same special tokens, context length and (after SFT) chat template
//! that training used.

use std::path::Path;

use hymba::HymbaConfig;
use hymba::hf::{HfGenerationConfig, SideFiles, TokenIds, TokenText, TokenizerConfig};
use hymba_datasets::{CHAT_TEMPLATE_JINJA, Tokenizer};

use crate::error::TrainError;

/// The side files for a model of `config` trained with `tok`; `chat` adds the chat template
/// (a model that saw Hymba's chat format in SFT or chat-format DPO).
///
/// The special tokens are the tokenizer's own (`[PAD]` = 32000 for LLaMA-2, not the
/// `pad_token_id` 0 that `config.json` keeps from the reference), `model_max_length` and
/// `max_length` are `max_position_embeddings`, and `do_sample` is `false`: this project
/// decodes greedily unless told otherwise.
pub fn side_files(tok: &Tokenizer, config: &HymbaConfig, chat: bool) -> SideFiles {
    let text = |id: u32| tok.id_to_token(id).map(TokenText::Plain);
    let tokenizer = TokenizerConfig {
        tokenizer_class: Some(tok.hf_class().to_string()),
        bos_token: text(tok.bos_id()),
        eos_token: text(tok.eos_id()),
        pad_token: text(tok.pad_id()),
        unk_token: tok.unk_token().map(TokenText::Plain),
        add_bos_token: Some(true),
        add_eos_token: Some(false),
        model_max_length: Some(config.max_position_embeddings.into()),
        chat_template: chat.then(|| CHAT_TEMPLATE_JINJA.into()),
        extra: Default::default(),
    };
    let generation = HfGenerationConfig {
        bos_token_id: Some(tok.bos_id()),
        eos_token_id: Some(TokenIds::One(tok.eos_id())),
        pad_token_id: Some(tok.pad_id()),
        max_length: Some(config.max_position_embeddings),
        do_sample: Some(false),
        extra: Default::default(),
    };
    SideFiles {
        tokenizer: Some(tokenizer),
        generation: Some(generation),
    }
}

/// Writes [`side_files`] into the model directory `dir` (which must exist).
pub fn write_side_files(
    dir: &Path,
    tok: &Tokenizer,
    config: &HymbaConfig,
    chat: bool,
) -> Result<(), TrainError> {
    side_files(tok, config, chat)
        .write(dir)
        .map_err(hymba::HymbaError::from)?;
    Ok(())
}
