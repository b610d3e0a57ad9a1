//! The tokenizer: any Hugging Face `tokenizer.json` (e.g. LLaMA-2's, 32,001 ids with `[PAD]`),
//! or a byte-level BPE trained here for from-scratch runs.
//!
//! [`Tokenizer`] wraps `tokenizers::Tokenizer` with what training and eval need: encode with or
//! without BOS, decode, the vocabulary size an embedding must have, the BOS/EOS/PAD ids and a
//! stable [`Tokenizer::hash`] that shard headers record, so data tokenized with one tokenizer is
//! never read with another.

use std::path::Path;

use tokenizers::AddedToken;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;

use crate::error::{DataError, Result};

/// Byte span `(start, end)` in the input text of each token.
pub type TokenOffsets = Vec<(usize, usize)>;

/// Token strings accepted as BOS, in order of preference.
const BOS_CANDIDATES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"];
/// Token strings accepted as EOS, in order of preference.
const EOS_CANDIDATES: &[&str] = &["</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"];
/// Token strings accepted as PAD; without one, PAD falls back to EOS.
const PAD_CANDIDATES: &[&str] = &["[PAD]", "<pad>", "<|pad|>"];

/// Special tokens of a BPE trained by [`train_bpe`], in id order (`<unk>`=0, `<s>`=1,
/// `</s>`=2, `<pad>`=3: BOS and EOS have LLaMA's ids).
pub const TRAINED_SPECIAL_TOKENS: [&str; 4] = ["<unk>", "<s>", "</s>", "<pad>"];

/// A loaded tokenizer with its special ids and content hash.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    vocab_size: usize,
    hash: u64,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("hash", &format_args!("{:016x}", self.hash))
            .finish()
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_json_bytes(&bytes)
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Parses the bytes of a `tokenizer.json`.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| DataError::tokenizer("cannot parse tokenizer.json", e))?;
        Self::from_inner(inner)
    }

    /// Wraps an already built `tokenizers::Tokenizer`.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Result<Self> {
        let find = |candidates: &[&str]| candidates.iter().find_map(|t| inner.token_to_id(t));
        let bos = find(BOS_CANDIDATES).ok_or_else(|| DataError::MissingSpecialToken {
            what: "BOS",
            candidates: BOS_CANDIDATES.join(" "),
        })?;
        let eos = find(EOS_CANDIDATES).ok_or_else(|| DataError::MissingSpecialToken {
            what: "EOS",
            candidates: EOS_CANDIDATES.join(" "),
        })?;
        let pad = find(PAD_CANDIDATES).unwrap_or(eos);
        // The embedding needs max id + 1 rows; the vocab map may have holes or overlaps.
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let canonical = inner
            .to_string(false)
            .map_err(|e| DataError::tokenizer("cannot serialise tokenizer", e))?;
        Ok(Self {
            hash: fnv1a64(canonical.as_bytes()),
            inner,
            bos,
            eos,
            pad,
            vocab_size,
        })
    }

    /// The `tokenizer.json` text (pretty-printed or compact). The compact form is the
    /// canonical one that [`Tokenizer::hash`] hashes.
    pub fn to_json(&self, pretty: bool) -> Result<String> {
        self.inner
            .to_string(pretty)
            .map_err(|e| DataError::tokenizer("cannot serialise tokenizer", e))
    }

    /// Writes the tokenizer as a (pretty-printed) `tokenizer.json`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut json = self.to_json(true)?;
        json.push('\n');
        std::fs::write(path, json).map_err(|e| DataError::io(path, e))
    }

    /// Encodes `text` to ids, with BOS first when `add_bos`. Never adds EOS.
    ///
    /// Special-token strings inside `text` (e.g. a literal `</s>`) are matched as special
    /// tokens, as Hugging Face does.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text, add_bos)?.0)
    }

    /// Encodes `text` and returns each token's byte span in `text` (BOS gets `(0, 0)`).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_bos: bool,
    ) -> Result<(Vec<u32>, TokenOffsets)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| DataError::tokenizer("encode", e))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        let mut offsets = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.push(self.bos);
            offsets.push((0, 0));
        }
        ids.extend_from_slice(enc.get_ids());
        offsets.extend_from_slice(enc.get_offsets());
        Ok((ids, offsets))
    }

    /// Encodes many texts (in parallel; the output order is the input order).
    pub fn encode_batch(&self, texts: &[&str], add_bos: bool) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| DataError::tokenizer("encode", e))?;
        Ok(encs
            .into_iter()
            .map(|enc| {
                let mut ids = Vec::with_capacity(enc.len() + 1);
                if add_bos {
                    ids.push(self.bos);
                }
                ids.extend_from_slice(enc.get_ids());
                ids
            })
            .collect())
    }

    /// Decodes ids to text, dropping special tokens (BOS, EOS, PAD).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| DataError::tokenizer("decode", e))
    }

    /// Decodes ids to text, keeping special tokens as their strings (`<s>`, `</s>`, ...).
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| DataError::tokenizer("decode", e))
    }

    /// Number of ids (largest id + 1, added tokens included): the embedding's row count.
    /// 32,001 for LLaMA-2 with `[PAD]`.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Beginning-of-sequence id (`<s>` = 1 for LLaMA-2).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// End-of-sequence id (`</s>` = 2 for LLaMA-2); separates documents in shards.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Padding id (`[PAD]` = 32000 for LLaMA-2); EOS when the tokenizer has no pad token.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// FNV-1a (64-bit) of the canonical (compact) `tokenizer.json`: equal for equal
    /// tokenizers whatever the file's whitespace. Recorded in shard headers.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The text of token `id` (special tokens included), if the vocabulary has it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The unknown token's text: the BPE model's `unk_token`, else `<unk>` when the
    /// vocabulary has it; `None` for a byte-level BPE, which never needs one.
    pub fn unk_token(&self) -> Option<String> {
        if let tokenizers::models::ModelWrapper::BPE(bpe) = self.inner.get_model()
            && let Some(unk) = &bpe.unk_token
        {
            return Some(unk.clone());
        }
        self.inner.token_to_id("<unk>").map(|_| "<unk>".to_string())
    }

    /// The `transformers` class that loads this `tokenizer.json` like we do:
    /// `LlamaTokenizerFast` for a LLaMA-style vocabulary (a byte-fallback BPE with
    /// `<unk>`=0, `<s>`=1, `</s>`=2, BOS added, no EOS), else the generic
    /// `PreTrainedTokenizerFast`.
    pub fn hf_class(&self) -> &'static str {
        let byte_fallback = matches!(
            self.inner.get_model(),
            tokenizers::models::ModelWrapper::BPE(bpe) if bpe.byte_fallback
        );
        let llama_ids = self.inner.token_to_id("<unk>") == Some(0)
            && self.inner.token_to_id("<s>") == Some(1)
            && self.inner.token_to_id("</s>") == Some(2)
            && (self.bos, self.eos) == (1, 2);
        if byte_fallback && llama_ids {
            "LlamaTokenizerFast"
        } else {
            "PreTrainedTokenizerFast"
        }
    }

    /// The wrapped `tokenizers::Tokenizer`, for anything this wrapper does not cover.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// FNV-1a, 64-bit: a tiny stable hash (unlike `std`'s, it never changes between releases).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Settings for [`train_bpe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpeConfig {
    /// Total ids: the 4 special tokens + 256 byte symbols + merges. At least 260.
    pub vocab_size: usize,
    /// A pair must occur this often to be merged.
    pub min_frequency: u64,
}

impl Default for BpeConfig {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            min_frequency: 2,
        }
    }
}

/// Trains a byte-level BPE (GPT-2 style pre-tokenizer, no prefix space, every byte in the
/// alphabet, so any text round-trips) on `texts`. Special tokens are
/// [`TRAINED_SPECIAL_TOKENS`]; the post-processor adds `<s>` like LLaMA-2's, so the saved
/// file behaves the same in Python. Deterministic: same texts and config, same tokenizer.
pub fn train_bpe<I>(texts: I, config: BpeConfig) -> Result<Tokenizer>
where
    I: Iterator<Item = String> + Send,
{
    let min_vocab = TRAINED_SPECIAL_TOKENS.len() + 256;
    if config.vocab_size < min_vocab {
        return Err(DataError::Invalid(format!(
            "vocab size {} is below the minimum {min_vocab} (4 special tokens + 256 bytes)",
            config.vocab_size
        )));
    }
    let specials: Vec<AddedToken> = TRAINED_SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let alphabet = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(alphabet)
        .build()
        .into();
    let byte_level = ByteLevel::new(false, true, true);
    let post = TemplateProcessing::builder()
        .try_single("<s> $A")
        .and_then(|b| b.try_pair("<s> $A <s> $B:1"))
        .map_err(|e| DataError::tokenizer("template", e))?
        .special_tokens(vec![("<s>", 1u32)])
        .build()
        .map_err(|e| DataError::tokenizer("template", e))?;
    let mut inner = tokenizers::Tokenizer::new(BPE::default());
    inner
        .with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(byte_level))
        .with_post_processor(Some(post));
    inner
        .train(&mut trainer, texts)
        .map_err(|e| DataError::tokenizer("BPE training", e))?;
    Tokenizer::from_inner(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn trained_bpe_round_trips_and_is_deterministic() {
        let text = "the cat sat on the mat. the dog sat on the log. ünïcödé ok\n".repeat(20);
        let train = || {
            train_bpe(
                std::iter::once(text.clone()),
                BpeConfig {
                    vocab_size: 300,
                    min_frequency: 2,
                },
            )
            .unwrap()
        };
        let (a, b) = (train(), train());
        assert_eq!(a.hash(), b.hash());
        // 4 specials + 256 bytes + merges, stopping early when no pair repeats.
        assert!(
            a.vocab_size() > 260 && a.vocab_size() <= 300,
            "{}",
            a.vocab_size()
        );
        assert_eq!((a.bos_id(), a.eos_id(), a.pad_id()), (1, 2, 3));
        let ids = a.encode("the cat sat, 🐈!", true).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(a.decode(&ids).unwrap(), "the cat sat, 🐈!");
        // Saved and reloaded, it is the same tokenizer.
        let reloaded = Tokenizer::from_json_bytes(a.to_json(true).unwrap().as_bytes()).unwrap();
        assert_eq!(reloaded.hash(), a.hash());
    }

    #[test]
    fn too_small_vocab_is_an_error() {
        let err = train_bpe(
            std::iter::once("x".to_string()),
            BpeConfig {
                vocab_size: 10,
                min_frequency: 2,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("below the minimum"), "{err}");
    }
}
