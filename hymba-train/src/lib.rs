//! # hymba-train
//!
//! Pretraining, SFT and DPO of Hymba models on burn-train's `Learner`, with one custom LM
//! training strategy for all three: optimizer-step checkpoints with exact resume, averaged
//! gradient accumulation, global-norm clipping, WSD/cosine schedules, tokens/s and MFU.

pub mod checkpoint;
pub mod data;
pub mod dpo;
pub mod error;
pub mod fault;
pub mod flops;
pub mod hf_files;
pub mod job;
pub mod logger;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod packed;
pub mod plot;
pub mod posttrain;
#[cfg(feature = "cpu-profile")]
pub mod profile;
pub mod renderer;
pub mod run_config;
pub mod schedule;
pub mod strategy;

pub use error::TrainError;
pub use job::{TrainJob, TrainReport};
pub use run_config::{RunConfig, Stage};
