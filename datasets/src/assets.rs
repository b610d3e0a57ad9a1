//! The data shipped inside the crate, so tiny pretraining runs with no download:
//! a 2 MB slice of the State of the Union corpus (CC0, see `assets/NOTICE.md`) and a
//! 4096-id byte-level BPE trained on it (`assets/make_assets.sh` rebuilds both).

use std::io::Read;

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};
use crate::tokenizer::Tokenizer;

/// The gzipped default corpus (the last 58 State of the Union addresses, one per
/// paragraph, blank line between).
pub const DEFAULT_CORPUS_GZ: &[u8] = include_bytes!("../assets/default_corpus.txt.gz");

/// The default tokenizer's `tokenizer.json` (byte-level BPE, 4096 ids, trained on the
/// default corpus; `<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3).
pub const DEFAULT_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/default_tokenizer.json");

/// The default corpus as text (≈ 2 MB).
pub fn default_corpus_text() -> Result<String> {
    let mut text = String::new();
    MultiGzDecoder::new(DEFAULT_CORPUS_GZ)
        .read_to_string(&mut text)
        .map_err(|e| DataError::io("<default corpus>", e))?;
    Ok(text)
}

/// The default tokenizer.
pub fn default_tokenizer() -> Result<Tokenizer> {
    Tokenizer::from_json_bytes(DEFAULT_TOKENIZER_JSON)
}

/// Loads a tokenizer from a `tokenizer.json` path, or the default one for `"default"`.
pub fn load_tokenizer(spec: &str) -> Result<Tokenizer> {
    if spec == crate::input::DEFAULT_NAME {
        default_tokenizer()
    } else {
        Tokenizer::from_file(spec)
    }
}
