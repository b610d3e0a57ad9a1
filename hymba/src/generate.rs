//! Batched generation: prefill, one-token decode steps through the cache, and sampling
//! (greedy, temperature, top-k, top-p, stop ids, max new tokens).
//!
//! Prompts of different lengths need no padding (which meta tokens and SWA cannot handle,
//! spec §3): the batch is prefilled with the shortest prompt's length, then all rows advance
//! in lock-step, and a row whose prompt is not used up yet is fed its own next prompt token
//! instead of a sample. Every row therefore sees exactly what it would see alone.

use std::time::Instant;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::HymbaBackend;
use crate::error::{HymbaError, Result};
use crate::model::Hymba;

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Tokens to generate per row at most.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = off).
    pub top_p: f32,
    /// A row stops after emitting one of these ids (the id is kept in its output).
    pub stop_ids: Vec<u32>,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            stop_ids: Vec::new(),
            seed: 0,
        }
    }
}

/// Generated tokens and timings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens of each row (prompt excluded).
    pub tokens: Vec<Vec<u32>>,
    /// Seconds spent in the prefill call.
    pub prefill_secs: f64,
    /// Tokens processed by the prefill call (batch × shortest prompt).
    pub prefill_tokens: usize,
    /// Seconds spent in decode steps.
    pub decode_secs: f64,
    /// Decode steps run (each processes one token per row).
    pub decode_steps: usize,
}

impl Generation {
    /// Decode throughput, tokens per second over all rows.
    pub fn decode_tokens_per_sec(&self) -> f64 {
        let rows = self.tokens.len();
        (self.decode_steps * rows) as f64 / self.decode_secs.max(1e-9)
    }
}

/// Samples one token from a row of logits.
pub fn sample(logits: &[f32], config: &GenerationConfig, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 { (i, l) } else { best }
            })
            .0 as u32
    };
    if config.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i].is_finite())
        .collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if config.top_k > 0 {
        order.truncate(config.top_k);
    }
    let Some(&best) = order.first() else {
        return argmax();
    };
    let max = logits[best];
    let mut probs: Vec<f32> = order
        .iter()
        .map(|&i| ((logits[i] - max) / config.temperature).exp())
        .collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if config.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                mass += p;
                mass >= config.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut r = rng.random::<f32>() * total;
    for (p, &i) in probs.iter().zip(&order) {
        r -= p;
        if r <= 0.0 {
            return i as u32;
        }
    }
    order[order.len() - 1] as u32
}

/// Generates continuations of a batch of prompts (token ids, BOS included if wanted).
pub fn generate<B: HymbaBackend>(
    model: &Hymba<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
) -> Result<Generation> {
    if prompts.is_empty() {
        return Err(HymbaError::Input("no prompts given".into()));
    }
    if prompts.iter().any(Vec::is_empty) {
        return Err(HymbaError::Input("a prompt has no tokens".into()));
    }
    for p in prompts {
        model.check_ids(p)?;
    }
    let device = model.embed_tokens.device();
    let rows = prompts.len();
    let common = prompts.iter().map(Vec::len).min().unwrap_or(1);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let to_ids = |ids: Vec<i64>, len: usize| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, len]), &device)
    };

    let start = Instant::now();
    // The meta tokens' state once for the whole batch; the prefill runs only the prompts.
    let mut cache = model.meta_cache(rows);
    let prefill: Vec<i64> = prompts
        .iter()
        .flat_map(|p| p[..common].iter().map(|&t| t as i64))
        .collect();
    let mut logits = model.forward_last(to_ids(prefill, common), &mut cache);
    let mut host = logits_to_host(logits);
    let prefill_secs = start.elapsed().as_secs_f64();

    let mut out = vec![Vec::new(); rows];
    let mut done = vec![config.max_new_tokens == 0; rows];
    let mut consumed = common;
    let mut steps = 0;
    let start = Instant::now();
    while done.iter().any(|d| !d) {
        let vocab = host.len() / rows;
        let next: Vec<i64> = (0..rows)
            .map(|r| {
                if let Some(&t) = prompts[r].get(consumed) {
                    return t as i64;
                }
                if done[r] {
                    return model.config.eos_token_id as i64;
                }
                let t = sample(&host[r * vocab..(r + 1) * vocab], config, &mut rng);
                out[r].push(t);
                if config.stop_ids.contains(&t) || out[r].len() >= config.max_new_tokens {
                    done[r] = true;
                }
                t as i64
            })
            .collect();
        consumed += 1;
        if done.iter().all(|d| *d) {
            break;
        }
        logits = model.forward_last(to_ids(next, 1), &mut cache);
        host = logits_to_host(logits);
        steps += 1;
    }
    Ok(Generation {
        tokens: out,
        prefill_secs,
        prefill_tokens: rows * common,
        decode_secs: start.elapsed().as_secs_f64(),
        decode_steps: steps,
    })
}

fn logits_to_host<B: Backend>(logits: Tensor<B, 2>) -> Vec<f32> {
    logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}
