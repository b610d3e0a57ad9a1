//! `hymba-datasets`: prepare token shards, train a tokenizer, check JSONL files.
//! Thin: parse flags, call the library, print.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hymba_datasets::input::read_documents;
use hymba_datasets::{
    BpeConfig, DocMode, DocOptions, DpoExample, InputSource, McExample, PrepareConfig,
    PrepareProgress, RecallExample, SftExample, SkippedLine, Validate, load_tokenizer, prepare,
    read_jsonl, train_bpe,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;

#[derive(Parser)]
#[command(
    name = "hymba-datasets",
    version,
    about = "Tokenizers and token shards for Hymba"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize text / JSONL (optionally .gz) into token shards and a manifest.json.
    Prepare(PrepareArgs),
    /// Train a byte-level BPE tokenizer and save it as tokenizer.json.
    TrainTokenizer(TrainArgs),
    /// Parse and validate JSONL files of a known format; report malformed lines.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct DocArgs {
    /// How plain text is cut into documents.
    #[arg(long, value_enum, default_value = "paragraph")]
    doc_mode: DocModeArg,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Fail on the first malformed JSONL line instead of skipping it.
    #[arg(long)]
    strict: bool,
}

#[derive(clap::Args)]
struct PrepareArgs {
    /// tokenizer.json path, or `default` for the tokenizer shipped in the crate.
    #[arg(long)]
    tokenizer: String,
    /// Files or folders (searched for .txt/.text/.jsonl/.ndjson[.gz]); `default` = the
    /// shipped corpus.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of documents held out for validation.
    #[arg(long, default_value_t = 0.01)]
    val_fraction: f64,
    /// Seed of the train/val assignment.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Maximum tokens per shard file.
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: u64,
    #[command(flatten)]
    docs: DocArgs,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Files or folders; `default` = the shipped corpus.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Vocabulary size (4 special tokens + 256 bytes + merges).
    #[arg(long)]
    vocab_size: usize,
    /// Minimum pair frequency for a merge.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// Output tokenizer.json.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    docs: DocArgs,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Record format.
    #[arg(long, value_enum)]
    format: Format,
    /// JSONL files (optionally .gz).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Fail on the first malformed line instead of skipping it.
    #[arg(long)]
    strict: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DocModeArg {
    Paragraph,
    Line,
    File,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// {"messages": [{"role", "content"}, ...]}
    Sft,
    /// {"prompt", "chosen", "rejected"}
    Dpo,
    /// {"context", "choices", "gold"}
    Mc,
    /// {"context", "question", "answers"}
    Recall,
}

impl DocArgs {
    fn options(&self) -> DocOptions {
        DocOptions {
            doc_mode: match self.doc_mode {
                DocModeArg::Paragraph => DocMode::Paragraph,
                DocModeArg::Line => DocMode::Line,
                DocModeArg::File => DocMode::File,
            },
            text_field: self.text_field.clone(),
            strict: self.strict,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes its message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Prepare(args) => run_prepare(args),
        Command::TrainTokenizer(args) => run_train(args),
        Command::Check(args) => run_check(args),
    }
}

fn warn_skipped(skipped: &[(String, SkippedLine)]) {
    const SHOWN: usize = 10;
    for (file, s) in skipped.iter().take(SHOWN) {
        eprintln!("warning: {file}:{}: {} (skipped)", s.line, s.reason);
    }
    if skipped.len() > SHOWN {
        eprintln!(
            "warning: … and {} more malformed lines skipped (--strict to fail instead)",
            skipped.len() - SHOWN
        );
    }
}

fn run_prepare(args: PrepareArgs) -> Result<()> {
    let tok = load_tokenizer(&args.tokenizer)?;
    let config = PrepareConfig {
        inputs: args.input.iter().map(|s| InputSource::parse(s)).collect(),
        out_dir: args.out.clone(),
        val_fraction: args.val_fraction,
        seed: args.seed,
        docs: args.docs.options(),
        shard_tokens: args.shard_tokens,
        tokenizer_source: args.tokenizer.clone(),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} {msg}",
        )?
        .progress_chars("=> "),
    );
    let start = Instant::now();
    let report = prepare(&tok, &config, &mut |p: &PrepareProgress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_read);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{} docs, {} tokens, {:.0} tok/s",
            p.documents,
            p.tokens,
            p.tokens as f64 / secs
        ));
    })?;
    bar.finish_and_clear();
    warn_skipped(&report.skipped);
    let m = &report.manifest;
    let secs = start.elapsed().as_secs_f64();
    let total = m.train.tokens + m.val.tokens;
    println!(
        "{}: train {} tokens / {} docs in {} shards, val {} tokens / {} docs in {} shards ({}, vocab {}, tokenizer {:016x}; {:.1}s, {:.0} tok/s)",
        args.out
            .join(hymba_datasets::manifest::MANIFEST_FILE)
            .display(),
        m.train.tokens,
        m.train.documents,
        m.train.shards.len(),
        m.val.tokens,
        m.val.documents,
        m.val.shards.len(),
        m.dtype,
        m.tokenizer.vocab_size,
        m.tokenizer.hash,
        secs,
        total as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn run_train(args: TrainArgs) -> Result<()> {
    let sources: Vec<InputSource> = args.input.iter().map(|s| InputSource::parse(s)).collect();
    let (docs, skipped) = read_documents(&sources, &args.docs.options())?;
    warn_skipped(&skipped);
    if docs.is_empty() {
        bail!("no documents in the inputs");
    }
    let bytes: usize = docs.iter().map(String::len).sum();
    let n_docs = docs.len();
    let start = Instant::now();
    let tok = train_bpe(
        docs.into_iter(),
        BpeConfig {
            vocab_size: args.vocab_size,
            min_frequency: args.min_frequency,
        },
    )?;
    tok.save(&args.out)?;
    println!(
        "{}: byte-level BPE, {} ids (requested {}), trained on {} docs / {} bytes in {:.1}s, hash {:016x}",
        args.out.display(),
        tok.vocab_size(),
        args.vocab_size,
        n_docs,
        bytes,
        start.elapsed().as_secs_f64(),
        tok.hash()
    );
    Ok(())
}

fn check_file<T: DeserializeOwned + Validate>(path: &Path, strict: bool) -> Result<()> {
    let r = read_jsonl::<T>(path, strict)?;
    let name = path.display().to_string();
    let skipped: Vec<(String, SkippedLine)> =
        r.skipped.into_iter().map(|s| (name.clone(), s)).collect();
    warn_skipped(&skipped);
    println!(
        "{name}: {} records, {} skipped",
        r.records.len(),
        skipped.len()
    );
    Ok(())
}

fn run_check(args: CheckArgs) -> Result<()> {
    for path in &args.files {
        match args.format {
            Format::Sft => check_file::<SftExample>(path, args.strict)?,
            Format::Dpo => check_file::<DpoExample>(path, args.strict)?,
            Format::Mc => check_file::<McExample>(path, args.strict)?,
            Format::Recall => check_file::<RecallExample>(path, args.strict)?,
        }
    }
    Ok(())
}
