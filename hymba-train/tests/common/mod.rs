//! Helpers shared by the tests that run the `hymba-train` binary.

use std::path::Path;

/// `(step, loss)` of the training rows of a run's `loss.csv`, exactly as written, so that two
/// runs compare digit for digit.
pub fn train_losses(out: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(out.join("loss.csv"))
        .expect("loss.csv exists")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.get(1) == Some(&"train")).then(|| (f[0].parse().expect("step"), f[2].to_string()))
        })
        .collect()
}
