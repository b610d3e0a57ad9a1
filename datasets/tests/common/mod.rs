//! Helpers shared by the integration tests: the committed fixtures (`fixtures/` at the
//! workspace root) and, for the `#[ignore]`d `shared_data_*` tests, the shared data folder.
#![allow(dead_code)]

use std::path::PathBuf;

use hymba_datasets::Tokenizer;

/// The workspace's `fixtures/` folder: excerpts of the shared data, laid out like it.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures"))
}

/// A fixture file by its path under `fixtures/`; panics (naming it) when it is missing.
pub fn fixture(rel: &str) -> PathBuf {
    let path = fixtures_dir().join(rel);
    assert!(
        path.is_file(),
        "fixture {} is missing (it is committed with the repository)",
        path.display()
    );
    path
}

/// `shared/data` beside the workspace, for the `#[ignore]`d tests that need the large files.
/// Panics when it is absent: such a test was asked for explicitly and must not pass silently.
pub fn data_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"));
    assert!(
        dir.is_dir(),
        "{} not found: this test needs the shared data folder beside the workspace \
         (run it where ../shared/data exists, as .ci/run does)",
        dir.display()
    );
    dir
}

/// The LLaMA-2 tokenizer (`fixtures/tokenizer/llama2/tokenizer.json`).
pub fn llama() -> Tokenizer {
    Tokenizer::from_file(fixture("tokenizer/llama2/tokenizer.json"))
        .expect("llama2 tokenizer loads")
}

/// The first `n` non-empty lines of a fixture file; panics if it has fewer.
pub fn head_lines(rel: &str, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(fixture(rel)).expect("fixture readable");
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), n, "fixture {rel} has fewer than {n} lines");
    lines
}
