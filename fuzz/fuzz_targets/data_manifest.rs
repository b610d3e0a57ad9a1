//! `manifest.json` of a prepared data folder.
#![no_main]

use std::path::PathBuf;

use hymba_datasets::{Manifest, Split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::from_json_str(text, PathBuf::from("manifest.json")) else {
        return;
    };
    for split in [Split::Train, Split::Val] {
        let _ = m.split(split).shards.len();
    }
});
