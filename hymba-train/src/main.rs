//! `hymba-train`: pretraining, SFT and DPO of Hymba models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use hymba::{BackendKind, run_on};
use hymba_train::{RunConfig, Stage, TrainJob};

/// Train Hymba models on CPU (ndarray), wgpu or CUDA with burn-train's dashboard: pretrain,
/// then SFT, then DPO, each stage starting from the previous stage's output.
#[derive(Parser, Debug)]
#[command(name = "hymba-train", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    profile: ProfileArgs,
}

/// Host-side profiling of the run (a build with the `cpu-profile` feature).
#[derive(Args, Debug)]
struct ProfileArgs {
    /// Sample every thread of the process ~1,000 times per CPU-second and write the stacks to
    /// FILE in the folded format of flame-graph tools when the run ends. Needs a build with
    /// `--features cpu-profile`.
    #[arg(long, value_name = "FILE", global = true, help_heading = "Profiling")]
    cpu_profile: Option<PathBuf>,
    /// With --cpu-profile: from SECS seconds after the start on, sample the main thread and
    /// the device-service threads every millisecond of wall time instead of CPU time, so
    /// that a blocked thread is sampled where it waits.
    #[arg(
        long,
        value_name = "SECS",
        global = true,
        help_heading = "Profiling",
        requires = "cpu_profile",
        value_parser = parse_secs
    )]
    cpu_profile_wall: Option<f64>,
}

/// A number of seconds ≥ 0.
fn parse_secs(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| format!("{text:?} is not a number of seconds ≥ 0"))
}

/// What every stage takes.
#[derive(Args, Debug, Default)]
struct RunArgs {
    /// TOML run config; every field has a default (see `RunConfig`), chosen per stage.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Backend: ndarray (CPU), wgpu, cuda or cuda-raw (the GPU ones need the cargo feature).
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Device indices, comma-separated. More than one trains data-parallel: every device runs
    /// `grad_accum` micro-batches of `batch_size` per step on its own replica, the gradients
    /// are summed on the first, which takes the optimizer step (global batch = batch_size ×
    /// grad_accum × devices). On the CPU backend every index is the same CPU.
    #[arg(
        long,
        visible_alias = "device",
        value_delimiter = ',',
        default_value = "0"
    )]
    devices: Vec<u16>,
    /// Continue from the newest checkpoint in the run's out_dir.
    #[arg(long)]
    resume: bool,
    /// Print the time of each phase of every optimizer step (data, forward, backward,
    /// accumulate, other devices, clip, optimizer) on stderr. The device is synchronised
    /// after each phase, which slows the step a little.
    #[arg(long)]
    step_times: bool,
    /// `key=value` overrides of the run config, e.g. `steps=100 optimizer.lr=1e-3`.
    overrides: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pretrain on token shards. With no arguments: a small Hymba on the embedded corpus, on
    /// the CPU, for a few minutes, ending with a saved model and generated samples.
    Pretrain {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Supervised fine-tuning on chat JSONL (`data.jsonl=FILE`): Hymba's chat template, loss
    /// on assistant tokens only, packed sequences, cosine schedule (lr 5e-5, one epoch).
    Sft {
        /// The model to start from: a model directory (config.json + safetensors, ours or
        /// Hugging Face's) or a step checkpoint (`RUN/checkpoints/step-N`).
        #[arg(long)]
        init: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Direct preference optimisation on `{"prompt","chosen","rejected"}` JSONL
    /// (`data.jsonl=FILE`): a reference pass of the `--init` model first (stored in
    /// `OUT/data/`), then the DPO loss (β = 0.1, lr 3e-6, one epoch); reports held-out reward
    /// accuracy.
    Dpo {
        /// The SFT model to start from (and the frozen reference).
        #[arg(long)]
        init: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
}

fn train(stage: Stage, args: RunArgs, init: Option<PathBuf>) -> Result<()> {
    let kind: BackendKind = args.backend.parse()?;
    let config = RunConfig::load(stage, args.config.as_deref(), &args.overrides)?;
    let (&main, replicas) = args
        .devices
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("--devices: give at least one device index"))?;
    if let Some(d) = replicas
        .iter()
        .enumerate()
        .find_map(|(i, d)| args.devices[..=i].contains(d).then_some(d))
    {
        anyhow::bail!("--devices lists device {d} twice");
    }
    let job = TrainJob {
        resume: args.resume,
        init,
        replicas: replicas.to_vec(),
        step_times: args.step_times,
        ..TrainJob::new(stage, config, kind)
    };
    let report = run_on(kind, usize::from(main), job)??;
    println!("steps run:            {}", report.steps_run);
    println!("final train loss:     {:.4}", report.final_train_loss);
    println!("final valid loss:     {:.4}", report.final_valid_loss);
    if let Some(h) = report.unigram_entropy {
        println!("unigram entropy:      {h:.4} nats/token (validation tokens)");
    }
    if let Some(a) = report.reference_accuracy {
        println!(
            "held-out preference:  {:.1} % of pairs where the reference (--init) model gives chosen the higher log-prob",
            100.0 * a
        );
    }
    if let Some(a) = report.valid_reward_accuracy {
        println!(
            "held-out reward acc.: {:.1} % after training (0 % at the start: every reward is 0)",
            100.0 * a
        );
    }
    println!("median tokens/s:      {:.0}", report.tokens_per_sec);
    println!("median step time:     {:.3} s", report.step_secs);
    println!("model saved to:       {}", report.model_dir.display());
    for (i, s) in report.samples.iter().enumerate() {
        println!("sample {i}: {s}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "cpu-profile")]
    let profile = cli.profile.cpu_profile.clone().and_then(|path| {
        hymba_train::profile::CpuProfile::start(path, cli.profile.cpu_profile_wall)
    });
    #[cfg(not(feature = "cpu-profile"))]
    if cli.profile.cpu_profile.is_some() || cli.profile.cpu_profile_wall.is_some() {
        eprintln!(
            "error: --cpu-profile needs a hymba-train built with the cpu-profile feature \
             (cargo build -p hymba-train --features cpu-profile)"
        );
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        None => train(Stage::Pretrain, RunArgs::default_main(), None),
        Some(Command::Pretrain { run }) => train(Stage::Pretrain, run, None),
        Some(Command::Sft { init, run }) => train(Stage::Sft, run, init),
        Some(Command::Dpo { init, run }) => train(Stage::Dpo, run, init),
    };
    #[cfg(feature = "cpu-profile")]
    drop(profile);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl RunArgs {
    /// The main job: all defaults on the CPU.
    fn default_main() -> Self {
        Self {
            backend: "ndarray".into(),
            devices: vec![0],
            ..Default::default()
        }
    }
}
