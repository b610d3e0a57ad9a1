//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use hymba_datasets::Tokenizer;

/// `shared/data`, or `None` (with a note on stderr) when this checkout has no data folder.
pub fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} not found (the shared data folder sits beside the workspace)",
            dir.display()
        );
        None
    }
}

/// The LLaMA-2 tokenizer from `shared/data/tokenizer/llama2`.
pub fn llama() -> Option<Tokenizer> {
    let dir = data_dir()?;
    Some(
        Tokenizer::from_file(dir.join("tokenizer/llama2/tokenizer.json"))
            .expect("llama2 tokenizer loads"),
    )
}

/// The first `n` non-empty lines of a data file.
pub fn head_lines(rel: &str, n: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(data_dir()?.join(rel)).expect("data file readable");
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .take(n)
            .map(str::to_owned)
            .collect(),
    )
}
