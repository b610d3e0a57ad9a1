//! `hymba-train`: pretraining of Hymba models (SFT and DPO to come).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hymba::{BackendKind, run_on};
use hymba_train::{PretrainJob, RunConfig};

/// Train Hymba models on CPU (ndarray), wgpu or CUDA with burn-train's dashboard.
#[derive(Parser, Debug)]
#[command(name = "hymba-train", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pretrain on token shards. With no arguments: a small Hymba on the embedded corpus, on
    /// the CPU, for a few minutes, ending with a saved model and generated samples.
    Pretrain {
        /// TOML run config; every field has a default (see `RunConfig`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Backend: ndarray (CPU), wgpu or cuda (the last two need the cargo feature).
        #[arg(long, default_value = "ndarray")]
        backend: String,
        /// Device index.
        #[arg(long, default_value_t = 0)]
        device: usize,
        /// Continue from the newest checkpoint in the run's out_dir.
        #[arg(long)]
        resume: bool,
        /// `key=value` overrides of the run config, e.g. `steps=100 optimizer.lr=1e-3`.
        overrides: Vec<String>,
    },
}

fn pretrain(
    config: Option<PathBuf>,
    backend: &str,
    device: usize,
    resume: bool,
    overrides: &[String],
) -> Result<()> {
    let kind: BackendKind = backend.parse()?;
    let config = RunConfig::load(config.as_deref(), overrides)?;
    let job = PretrainJob {
        config,
        resume,
        backend: kind,
    };
    let report = run_on(kind, device, job)??;
    println!("steps run:            {}", report.steps_run);
    println!(
        "final train loss:     {:.4} nats/token",
        report.final_train_loss
    );
    println!(
        "final valid loss:     {:.4} nats/token",
        report.final_valid_loss
    );
    println!(
        "unigram entropy:      {:.4} nats/token (validation tokens)",
        report.unigram_entropy
    );
    println!("median tokens/s:      {:.0}", report.tokens_per_sec);
    println!("model saved to:       {}", report.model_dir.display());
    for (i, s) in report.samples.iter().enumerate() {
        println!("sample {i}: {s}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => pretrain(None, "ndarray", 0, false, &[]),
        Some(Command::Pretrain {
            config,
            backend,
            device,
            resume,
            overrides,
        }) => pretrain(config, &backend, device, resume, &overrides),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
