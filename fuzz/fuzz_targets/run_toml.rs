//! `run.toml` and `key=value` overrides, for every stage: parsed, merged, validated.
#![no_main]

use std::path::Path;

use hymba_train::run_config::{RunConfig, Stage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line doubles as one command-line override, the rest as the file.
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    for stage in [Stage::Pretrain, Stage::Sft, Stage::Dpo] {
        let file = Some((text, Path::new("run.toml")));
        if let Ok(c) = RunConfig::from_toml_str(stage, file, &[]) {
            let again = RunConfig::from_toml_str(stage, Some((&c.to_toml(), Path::new("x"))), &[]);
            assert!(again.is_ok(), "{:?}", again.err());
        }
        let _ = RunConfig::from_toml_str(stage, Some((rest, Path::new("r"))), &[first.into()]);
    }
});
