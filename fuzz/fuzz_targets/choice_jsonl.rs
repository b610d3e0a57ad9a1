//! Multiple-choice JSONL (`McExample`): parsed strictly and leniently, each question's
//! continuations tokenized for scoring.
#![no_main]

use hymba_datasets::McExample;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hymba_fuzz::jsonl::<McExample>(data, |record, tok| {
        let _ = record.tokenize_choices(tok);
    });
});
