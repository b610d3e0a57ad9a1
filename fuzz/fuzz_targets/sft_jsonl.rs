//! SFT JSONL (`SftExample`): parsed strictly and leniently, each record through the chat
//! template and the assistant-only loss mask.
#![no_main]

use hymba_datasets::SftExample;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hymba_fuzz::jsonl::<SftExample>(data, |record, tok| {
        let _ = record.tokenize(tok);
    });
});
