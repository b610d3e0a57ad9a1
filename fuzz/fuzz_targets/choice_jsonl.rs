//! multiple_choice JSONL (`McExample`): every line parsed and validated, strict and lenient, then
//! each record turned into what training or evaluation consumes.
#![no_main]

use std::sync::OnceLock;

use hymba_datasets::{McExample, Tokenizer, default_tokenizer, parse_jsonl};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| default_tokenizer().expect("embedded tokenizer"))
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_jsonl::<McExample>(data, "fuzz", true);
    let Ok(records) = parse_jsonl::<McExample>(data, "fuzz", false) else {
        return;
    };
    let tok = tokenizer();
    for record in &records.records {
        let _ = record.tokenize_choices(tok);
    }
});
