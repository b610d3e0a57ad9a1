//! DPO JSONL (`DpoExample`): parsed strictly and leniently, each pair tokenized in both
//! prompt formats.
#![no_main]

use hymba_datasets::{DpoExample, PromptFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hymba_fuzz::jsonl::<DpoExample>(data, |record, tok| {
        let _ = record.tokenize(tok, PromptFormat::Chat);
        let _ = record.tokenize(tok, PromptFormat::Plain);
    });
});
