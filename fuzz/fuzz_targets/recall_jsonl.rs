//! Recall JSONL (`RecallExample`): parsed strictly and leniently, each record's prompt
//! tokenized and scored (exact match, token F1) against itself.
#![no_main]

use hymba_datasets::RecallExample;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hymba_fuzz::jsonl::<RecallExample>(data, |record, tok| {
        let prompt = record.prompt();
        let _ = tok.encode(&prompt, true);
        let _ = (record.exact_match(&prompt), record.token_f1(&prompt));
    });
});
