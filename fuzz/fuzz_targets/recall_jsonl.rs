//! recall JSONL (`RecallExample`): every line parsed and validated, strict and lenient, then
//! each record turned into what training or evaluation consumes.
#![no_main]

use std::sync::OnceLock;

use hymba_datasets::{RecallExample, Tokenizer, default_tokenizer, parse_jsonl};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| default_tokenizer().expect("embedded tokenizer"))
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_jsonl::<RecallExample>(data, "fuzz", true);
    let Ok(records) = parse_jsonl::<RecallExample>(data, "fuzz", false) else {
        return;
    };
    let tok = tokenizer();
    for record in &records.records {
        let prompt = record.prompt();
        let _ = tok.encode(&prompt, true);
        let _ = (record.exact_match(&prompt), record.token_f1(&prompt));
    }
});
