//! `hymba-eval generate`: run batched generation on any compiled-in backend and report
//! tokens and tokens/s — from random weights of a preset, or from a checkpoint directory
//! (`--model DIR`) with text prompts encoded by its `tokenizer.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hymba::{BackendRunner, GenerationConfig, Hymba, HymbaConfig, HymbaError};
use hymba_datasets::sft::render_generation_prompt;
use hymba_datasets::{DataError, Message, Role, Tokenizer};

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum Weights {
    /// Random weights of this architecture, from this seed.
    Random {
        /// The architecture.
        config: Box<HymbaConfig>,
        /// Seed of the random weights.
        seed: u64,
    },
    /// An HF checkpoint directory (`config.json` + safetensors), see [`hymba::weights`].
    Pretrained(PathBuf),
}

impl Weights {
    /// Builds the model on `device`: random weights from the seed, or the checkpoint.
    pub fn load<B: hymba::HymbaBackend>(&self, device: &B::Device) -> Result<Hymba<B>, HymbaError> {
        match self {
            Weights::Random { config, seed } => {
                B::seed(device, *seed);
                Hymba::<B>::new(config, device)
            }
            Weights::Pretrained(dir) => hymba::load_pretrained::<B>(dir, device),
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone)]
pub struct GenerateJob {
    /// The model.
    pub weights: Weights,
    /// Prompts as token ids.
    pub prompts: Vec<Vec<u32>>,
    /// Sampling settings.
    pub generation: GenerationConfig,
}

/// Result of a generation run.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    /// New tokens per prompt.
    pub tokens: Vec<Vec<u32>>,
    /// Seconds spent building or loading the model.
    pub load_secs: f64,
    /// Prefill throughput, tokens/s (batch × prompt tokens over the prefill time).
    pub prefill_tokens_per_sec: f64,
    /// Decode throughput, tokens/s over all rows.
    pub decode_tokens_per_sec: f64,
    /// Decode steps run.
    pub decode_steps: usize,
}

impl BackendRunner for GenerateJob {
    type Output = Result<GenerateReport, HymbaError>;

    fn run<B: hymba::HymbaBackend>(self, device: B::Device) -> Self::Output {
        let start = Instant::now();
        let model = self.weights.load::<B>(&device)?;
        let load_secs = start.elapsed().as_secs_f64();
        let Some(first) = self.prompts.first() else {
            return Err(HymbaError::Input("no prompt given".into()));
        };
        // A first tiny call compiles kernels on GPU backends so the timing below is warm.
        hymba::generate(
            &model,
            std::slice::from_ref(first),
            &GenerationConfig {
                max_new_tokens: 1,
                ..self.generation.clone()
            },
        )?;
        let out = hymba::generate(&model, &self.prompts, &self.generation)?;
        Ok(GenerateReport {
            load_secs,
            prefill_tokens_per_sec: out.prefill_tokens as f64 / out.prefill_secs.max(1e-9),
            decode_tokens_per_sec: out.decode_tokens_per_sec(),
            decode_steps: out.decode_steps,
            tokens: out.tokens,
        })
    }
}

/// Parses `"1,2,3"` into token ids.
pub fn parse_ids(text: &str) -> Result<Vec<u32>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| format!("`{s}` is not a token id"))
        })
        .collect()
}

/// Why text prompts could not be turned into token ids.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The checkpoint directory has no tokenizer and none was named.
    #[error(
        "{}: no tokenizer.json in the model directory; copy one there or pass --tokenizer FILE",
        dir.display()
    )]
    MissingTokenizer {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// The tokenizer has more ids than the model's embedding has rows.
    #[error("the tokenizer has {tokenizer} ids but the model's vocab_size is {model}")]
    VocabMismatch {
        /// Ids of the tokenizer.
        tokenizer: usize,
        /// `vocab_size` of the model.
        model: usize,
    },
    /// Reading the tokenizer, applying the chat template or encoding failed.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// The tokenizer of a checkpoint directory: `explicit` when given, else `dir/tokenizer.json`
/// (an error saying it is missing otherwise).
pub fn checkpoint_tokenizer(dir: &Path, explicit: Option<&Path>) -> Result<Tokenizer, PromptError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => dir.join(hymba::weights::TOKENIZER_FILE),
    };
    if explicit.is_none() && !path.is_file() {
        return Err(PromptError::MissingTokenizer {
            dir: dir.to_path_buf(),
        });
    }
    Ok(Tokenizer::from_file(path)?)
}

/// Token ids of text prompts, BOS first. With `chat`, each prompt becomes one user turn
/// (after `system`, if given) in Hymba's chat template, ending with the assistant header,
/// as an instruct model expects.
pub fn encode_prompts(
    tok: &Tokenizer,
    prompts: &[String],
    chat: bool,
    system: Option<&str>,
    vocab_size: usize,
) -> Result<Vec<Vec<u32>>, PromptError> {
    if tok.vocab_size() > vocab_size {
        return Err(PromptError::VocabMismatch {
            tokenizer: tok.vocab_size(),
            model: vocab_size,
        });
    }
    prompts
        .iter()
        .map(|p| {
            let text = if chat {
                let mut messages = Vec::new();
                if let Some(s) = system {
                    messages.push(Message::new(Role::System, s));
                }
                messages.push(Message::new(Role::User, p.as_str()));
                render_generation_prompt(&messages)?
            } else {
                p.clone()
            };
            Ok(tok.encode(&text, true)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tokenizer_is_named() {
        let dir = std::env::temp_dir().join("hymba-eval-no-tokenizer-here");
        let err = checkpoint_tokenizer(&dir, None)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("no tokenizer.json")));
    }

    #[test]
    fn chat_prompts_use_the_template() {
        let tok = hymba_datasets::default_tokenizer().expect("default tokenizer");
        let plain = encode_prompts(&tok, &["Hi".into()], false, None, 4096).expect("plain");
        let chat = encode_prompts(&tok, &["Hi".into()], true, None, 4096).expect("chat");
        assert_eq!(plain[0][0], tok.bos_id());
        assert!(chat[0].len() > plain[0].len());
        let text = tok.decode(&chat[0]).expect("decode");
        assert!(
            text.contains("User") && text.contains("Assistant"),
            "{text}"
        );
        assert!(matches!(
            encode_prompts(&tok, &["Hi".into()], false, None, 512),
            Err(PromptError::VocabMismatch { .. })
        ));
    }
}
