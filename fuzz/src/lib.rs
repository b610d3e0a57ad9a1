//! What the JSONL fuzz targets share: the embedded tokenizer, loaded once, and one driver that
//! parses the input strictly and leniently and hands each record to the target's consumer.

use std::sync::OnceLock;

use hymba_datasets::{Tokenizer, Validate, default_tokenizer, parse_jsonl};
use serde::de::DeserializeOwned;

/// The embedded tokenizer (what the tests and tiny runs use), loaded once per process.
pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| default_tokenizer().expect("embedded tokenizer"))
}

/// Parses `data` as JSONL of `T` in strict and lenient mode, then gives every record the
/// lenient parse kept to `consume` (what training or evaluation does with it next).
pub fn jsonl<T: DeserializeOwned + Validate>(data: &[u8], consume: impl Fn(&T, &Tokenizer)) {
    let _ = parse_jsonl::<T>(data, "fuzz", true);
    let Ok(records) = parse_jsonl::<T>(data, "fuzz", false) else {
        return;
    };
    for record in &records.records {
        consume(record, tokenizer());
    }
}
