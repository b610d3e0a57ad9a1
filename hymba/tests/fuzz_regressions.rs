//! Inputs the fuzz targets (`fuzz/`) found or were pointed at, replayed: each must be refused
//! with an error, never a panic (debug builds check integer overflow, as the fuzz builds do).

use std::path::{Path, PathBuf};

use hymba::HymbaConfig;

/// Every file under `fuzz/regressions/TARGET/`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn config_json_with_absurd_sizes_is_refused_not_overflowed() {
    let files = inputs("hf_config");
    assert!(files.len() >= 2);
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        let err = HymbaConfig::from_json_str(&text).expect_err("refused");
        assert!(
            err.to_string().contains("limit"),
            "{}: {err}",
            path.display()
        );
    }
}
