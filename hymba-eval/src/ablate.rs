//! `hymba-eval ablate`: the paper's design roadmap (Tab. 1) at tiny scale, in one
//! deterministic command: every configuration of [`Roadmap`] trained on the same data for
//! the same steps at the same parameter count, then scored on validation loss, in-context
//! recall, cache size and decode speed. Two sweeps the paper leaves open ride along: the
//! attention share of the hybrid head (open question 1) and the number of meta tokens
//! (open question 2).
//!
//! **Data.** The embedded corpus plus synthetic phone books (`name: number` lists with a
//! question about one entry, [`phonebook`]), so a few minutes of training can teach lookup.
//! **Recall** is scored teacher-forced on held-out phone books whose queried entry lies
//! beyond the sliding window: the share of answer tokens the model predicts (argmax) given
//! everything before them. Digits are ~10 % by chance.
//! **Cache** is analytic at 8K context in fp16 (the paper's setting; tested equal to the
//! measured cache in `bench cache`). **Decode** is greedy tokens/s on the chosen backend.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use hymba::roadmap::{Roadmap, branch_params, roadmap_configs, with_attention_width};
use hymba::{BackendKind, BackendRunner, Hymba, HymbaBackend, HymbaConfig, run_on};
use hymba_datasets::{InputSource, PrepareConfig, Tokenizer};
use hymba_train::{RunConfig, Stage, TrainJob};
use serde::Serialize;

use crate::bench_cache::hymba_cache_bytes;
use crate::recall::phonebook;

/// Arguments of `hymba-eval ablate`.
#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    /// Backend: ndarray (CPU), wgpu, cuda (the binary needs the feature).
    #[arg(long, default_value = "ndarray")]
    pub backend: String,
    /// Device index (CUDA).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Working directory: the data and one training run per configuration.
    #[arg(long, default_value = "runs/ablate")]
    pub dir: PathBuf,
    /// Write the table as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Which runs: `roadmap` (Tab. 1), `attention` (attention-share sweep), `meta`
    /// (meta-token sweep), or `all`.
    #[arg(long, default_value = "all")]
    pub runs: String,
    /// Optimizer steps per configuration.
    #[arg(long, default_value_t = 150)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Phone books mixed into the training text.
    #[arg(long, default_value_t = 6000)]
    pub phonebooks: usize,
    /// Entries per phone book.
    #[arg(long, default_value_t = 6)]
    pub entries: usize,
    /// Held-out phone-book queries scored for recall.
    #[arg(long, default_value_t = 96)]
    pub recall_items: usize,
    /// Seed of weights, data order and phone books.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One configuration's results.
#[derive(Debug, Clone, Serialize)]
pub struct AblateRow {
    /// `roadmap`, `attention` or `meta`.
    pub group: String,
    /// Row label.
    pub name: String,
    /// Parameters.
    pub params: usize,
    /// Attention branch / (attention + SSM branch) parameters of the mixers.
    pub attention_share: f64,
    /// Validation loss (nats/token) on the held-out split.
    pub val_loss: f64,
    /// Teacher-forced accuracy on the phone-book answers.
    pub recall_accuracy: f64,
    /// Analytic cache at 8K context, fp16, batch 1, MB.
    pub cache_mb_8k: f64,
    /// Greedy decode tokens/s (batch 1, after a prompt of `seq_len` tokens).
    pub decode_tokens_per_s: f64,
}

/// The ablation's base model: the `tiny` layout (4 layers, width 64, window 16, 8 meta
/// tokens, globals {0, 3}, layers 1–2 sharing K/V) on the corpus tokenizer's vocabulary.
pub fn ablation_base(vocab: usize) -> HymbaConfig {
    let mut c = HymbaConfig::tiny();
    c.vocab_size = vocab;
    c.max_position_embeddings = 2048;
    c.orig_max_position_embeddings = 2048;
    c
}

/// Every configuration the `runs` selection asks for: `(group, label, config)`.
pub fn ablation_configs(
    base: &HymbaConfig,
    runs: &str,
) -> Result<Vec<(String, String, HymbaConfig)>, String> {
    let all = runs == "all";
    if !all && !["roadmap", "attention", "meta"].contains(&runs) {
        return Err(format!(
            "--runs {runs}: expected roadmap, attention, meta or all"
        ));
    }
    let target = Roadmap::MetaTokens.config(base).num_params();
    let mut out = Vec::new();
    if all || runs == "roadmap" {
        for (step, c) in roadmap_configs(base) {
            out.push(("roadmap".into(), step.label().to_string(), c));
        }
    }
    if all || runs == "attention" {
        for f in [0.25, 0.5, 2.0] {
            let c = with_attention_width(base, f, target);
            out.push((
                "attention".into(),
                format!("Hymba, attention width ×{f}"),
                c,
            ));
        }
    }
    if all || runs == "meta" {
        for m in [0, 16, 64, 128] {
            let mut c = Roadmap::MetaTokens.config(base);
            c.num_memory_tokens = m;
            hymba::roadmap::match_params(&mut c, target);
            out.push(("meta".into(), format!("Hymba, {m} meta tokens"), c));
        }
    }
    Ok(out)
}

/// Writes the training text (corpus + phone books) and tokenizes it into shards once.
fn prepare_data(args: &AblateArgs, tok: &Tokenizer) -> anyhow::Result<PathBuf> {
    let data = args.dir.join("data");
    if data.join("manifest.json").is_file() {
        return Ok(data);
    }
    std::fs::create_dir_all(&args.dir)?;
    let books = args.dir.join("phonebooks.jsonl");
    let mut text = String::new();
    for i in 0..args.phonebooks {
        let distance = 1 + i % args.entries;
        if let Some(item) = phonebook(args.entries, distance, args.seed * 1_000_003 + i as u64) {
            let doc = format!("{}{}\n", item.prompt, item.answer);
            text.push_str(&serde_json::json!({ "text": doc }).to_string());
            text.push('\n');
        }
    }
    std::fs::write(&books, text)?;
    let mut prep = PrepareConfig::new(
        vec![InputSource::DefaultCorpus, InputSource::Path(books)],
        &data,
    );
    prep.val_fraction = 0.05;
    prep.seed = args.seed;
    prep.tokenizer_source = "default".into();
    hymba_datasets::prepare(tok, &prep, &mut |_| {})?;
    Ok(data)
}

/// Held-out phone books (seeds disjoint from training), queried beyond the window: the
/// prompt's ids and the answer's ids.
fn recall_items(args: &AblateArgs, tok: &Tokenizer) -> anyhow::Result<Vec<(Vec<u32>, Vec<u32>)>> {
    let mut items = Vec::new();
    for i in 0..args.recall_items {
        let distance = args.entries - i % 2; // the first or second entry: far from the question
        let seed = u64::MAX / 2 + args.seed * 7919 + i as u64;
        let Some(item) = phonebook(args.entries, distance, seed) else {
            anyhow::bail!("--entries must be between 2 and 24");
        };
        let text = format!("{}{}", item.prompt, item.answer);
        let (ids, offsets) = tok.encode_with_offsets(&text, true)?;
        let split = offsets
            .iter()
            .position(|&(start, end)| end > start && start >= item.prompt.len())
            .unwrap_or(ids.len());
        if split == 0 || split >= ids.len() {
            continue;
        }
        items.push((ids[..split].to_vec(), ids[split..].to_vec()));
    }
    Ok(items)
}

/// Recall accuracy and decode speed of a trained model.
struct EvalJob {
    model_dir: PathBuf,
    items: Vec<(Vec<u32>, Vec<u32>)>,
    context: usize,
}

impl BackendRunner for EvalJob {
    type Output = anyhow::Result<(f64, f64)>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        let model: Hymba<B> = hymba::load_pretrained(&self.model_dir, &device)?;
        let width = self
            .items
            .iter()
            .map(|(p, a)| p.len() + a.len())
            .max()
            .unwrap_or(2);
        let mut ids = Vec::with_capacity(self.items.len() * width);
        for (p, a) in &self.items {
            ids.extend(p.iter().chain(a).map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(0, width - p.len() - a.len()));
        }
        let n = self.items.len();
        let batch = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, width]), &device);
        // Right padding is invisible to causal attention and to the causal scan.
        let predicted: Vec<i64> = model
            .forward(batch)
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("reading predictions: {e:?}"))?;
        let (mut hits, mut total) = (0, 0);
        for (row, (p, a)) in self.items.iter().enumerate() {
            for (j, &want) in a.iter().enumerate() {
                // Position p.len() + j − 1 predicts answer token j.
                let got = predicted[row * width + p.len() + j - 1];
                hits += usize::from(got == i64::from(want));
                total += 1;
            }
        }
        let prompt = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![5i64; self.context], [1, self.context]),
            &device,
        );
        crate::bench_generate::generate_once(&model, prompt.clone(), 2)?;
        let decode = 32;
        let mut times: Vec<f64> = (0..3)
            .map(|_| crate::bench_generate::generate_once(&model, prompt.clone(), decode))
            .map(|r| r.map(|(_, d, _)| d))
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        Ok((hits as f64 / total.max(1) as f64, decode as f64 / times[1]))
    }
}

fn train_one(
    args: &AblateArgs,
    kind: BackendKind,
    data: &Path,
    run_dir: &Path,
    config: &HymbaConfig,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(run_dir);
    std::fs::create_dir_all(run_dir)?;
    let config_path = run_dir.join("model_config.json");
    config.save(&config_path)?;
    let overrides = vec![
        format!("out_dir={}", run_dir.join("run").display()),
        format!("model.config_json={}", config_path.display()),
        format!("data.shards={}", data.display()),
        format!("data.seq_len={}", args.seq_len),
        format!("batch_size={}", args.batch),
        format!("steps={}", args.steps),
        format!("optimizer.lr={}", args.lr),
        format!("seed={}", args.seed),
        "valid_every=0".into(),
        "valid_batches=0".into(),
        format!("checkpoint_every={}", args.steps),
        "keep_checkpoints=1".into(),
        "samples=0".into(),
        "log_every=1000000".into(),
    ];
    let run = RunConfig::load(Stage::Pretrain, None, &overrides)?;
    let job = TrainJob::new(Stage::Pretrain, run, kind);
    let report = run_on(kind, args.device, job)??;
    Ok(report.final_valid_loss)
}

/// Runs `hymba-eval ablate`: trains and scores every configuration, prints the table and
/// the paper's orderings it does or does not reproduce, writes JSON with `--out`.
pub fn run(args: AblateArgs) -> anyhow::Result<Vec<AblateRow>> {
    if args.steps == 0 || args.batch == 0 || args.seq_len < 16 {
        anyhow::bail!("--steps and --batch must be positive and --seq-len at least 16");
    }
    let kind: BackendKind = args.backend.parse()?;
    let tok = hymba_datasets::default_tokenizer()?;
    let base = ablation_base(tok.vocab_size());
    let configs = ablation_configs(&base, &args.runs).map_err(anyhow::Error::msg)?;
    let data = prepare_data(&args, &tok)?;
    let items = recall_items(&args, &tok)?;
    let mut rows = Vec::new();
    for (i, (group, name, config)) in configs.iter().enumerate() {
        eprintln!(
            "[{}/{}] {name}: training {} steps",
            i + 1,
            configs.len(),
            args.steps
        );
        let run_dir = args.dir.join(format!("{i:02}-{group}"));
        let val_loss = train_one(&args, kind, &data, &run_dir, config)?;
        let job = EvalJob {
            model_dir: run_dir.join("run").join("model"),
            items: items.clone(),
            context: args.seq_len,
        };
        let (recall_accuracy, decode_tokens_per_s) = run_on(kind, args.device, job)??;
        let (a, s) = branch_params(config);
        rows.push(AblateRow {
            group: group.clone(),
            name: name.clone(),
            params: config.num_params(),
            attention_share: a as f64 / (a + s).max(1) as f64,
            val_loss,
            recall_accuracy,
            cache_mb_8k: hymba_cache_bytes(config, 8192, 2).total() as f64 / 1e6,
            decode_tokens_per_s,
        });
    }
    print_table(&rows);
    print_orderings(&rows);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(rows)
}

fn print_table(rows: &[AblateRow]) {
    println!(
        "{:<34} {:>9} {:>7} {:>9} {:>8} {:>10} {:>10}",
        "configuration", "params", "attn %", "val loss", "recall", "cache MB", "decode t/s"
    );
    let mut group = "";
    for r in rows {
        if r.group != group {
            group = &r.group;
            println!("-- {group}");
        }
        println!(
            "{:<34} {:>9} {:>7.1} {:>9.4} {:>7.1}% {:>10.2} {:>10.1}",
            r.name,
            r.params,
            100.0 * r.attention_share,
            r.val_loss,
            100.0 * r.recall_accuracy,
            r.cache_mb_8k,
            r.decode_tokens_per_s
        );
    }
}

/// A column of the ablation table, and which way is better.
#[derive(Debug, Clone, Copy)]
enum Column {
    ValLoss,
    Recall,
    Cache,
    Decode,
}

impl Column {
    fn what(self) -> &'static str {
        match self {
            Self::ValLoss => "lower val loss",
            Self::Recall => "better recall",
            Self::Cache => "smaller cache",
            Self::Decode => "faster decode",
        }
    }

    /// Whether row `a` is better than row `b` in this column.
    fn better(self, a: &AblateRow, b: &AblateRow) -> bool {
        match self {
            Self::ValLoss => a.val_loss < b.val_loss,
            Self::Recall => a.recall_accuracy > b.recall_accuracy,
            Self::Cache => a.cache_mb_8k < b.cache_mb_8k,
            Self::Decode => a.decode_tokens_per_s > b.decode_tokens_per_s,
        }
    }
}

/// The orderings of the paper's Tab. 1: in `column`, the first configuration beats the
/// second.
const PAPER_ORDERINGS: [(Column, Roadmap, Roadmap); 12] = [
    (Column::ValLoss, Roadmap::AttentionOnly, Roadmap::SsmOnly),
    (Column::ValLoss, Roadmap::Parallel, Roadmap::Sequential),
    (Column::ValLoss, Roadmap::MetaTokens, Roadmap::Parallel),
    (Column::Recall, Roadmap::AttentionOnly, Roadmap::SsmOnly),
    (Column::Recall, Roadmap::Parallel, Roadmap::Sequential),
    (Column::Recall, Roadmap::MetaTokens, Roadmap::KvSharing),
    (Column::Cache, Roadmap::Sequential, Roadmap::AttentionOnly),
    (Column::Cache, Roadmap::LocalGlobal, Roadmap::Parallel),
    (Column::Cache, Roadmap::KvSharing, Roadmap::LocalGlobal),
    (Column::Cache, Roadmap::SsmOnly, Roadmap::KvSharing),
    (Column::Decode, Roadmap::SsmOnly, Roadmap::AttentionOnly),
    (Column::Decode, Roadmap::LocalGlobal, Roadmap::Parallel),
];

/// The orderings of the paper's Tab. 1 and whether this run shows them (those whose two
/// configurations both ran).
pub fn orderings(rows: &[AblateRow]) -> Vec<(String, bool)> {
    let get = |s: Roadmap| {
        rows.iter()
            .find(|r| r.group == "roadmap" && r.name == s.label())
    };
    PAPER_ORDERINGS
        .iter()
        .filter_map(|&(column, a, b)| {
            let (x, y) = (get(a)?, get(b)?);
            let what = format!("{}: {} vs {}", column.what(), a.label(), b.label());
            Some((what, column.better(x, y)))
        })
        .collect()
}

fn print_orderings(rows: &[AblateRow]) {
    let checks = orderings(rows);
    if checks.is_empty() {
        return;
    }
    println!("paper's orderings (Tab. 1):");
    for (what, holds) in checks {
        println!(
            "  {} {what}",
            if holds {
                "reproduced:    "
            } else {
                "NOT reproduced:"
            }
        );
    }
}
