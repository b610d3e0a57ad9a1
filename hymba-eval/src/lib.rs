//! # hymba-eval
//!
//! Evaluation, benchmarks and generation for Hymba models. The `hymba-eval` binary is a thin
//! command-line layer over the functions here.

pub mod ablate;
pub mod bench_cache;
pub mod bench_generate;
pub mod bench_matmul;
pub mod bench_scan;
pub mod bench_step;
pub mod check;
pub mod checkpoint;
pub mod generate;
pub mod ppl;
pub mod recall;
pub mod tasks;
