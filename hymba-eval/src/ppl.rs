//! `hymba-eval ppl`: token-weighted perplexity over a held-out token stream.
//!
//! Windows of `seq_len` tokens start every `stride` tokens. The first window scores all of
//! its tokens (each given what precedes it); every later one scores only its last `stride`
//! tokens, so every token is scored exactly once and, past the first window, with at least
//! `seq_len − stride` tokens of context (sliding evaluation). `stride = seq_len` is plain
//! non-overlapping chunking, as in training: there the first token of each window has no
//! context and is not scored. Perplexity = `exp(Σ NLL / Σ tokens)`.

use hymba::score::{Continuation, score_continuations};
use hymba::{BackendRunner, HymbaBackend, HymbaError};
use hymba_datasets::TokenStream;
use serde::Serialize;

use crate::generate::Weights;

/// The result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PplReport {
    /// Tokens scored.
    pub tokens: u64,
    /// Mean negative log-likelihood, nats per token.
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Window length.
    pub seq_len: usize,
    /// Window step.
    pub stride: usize,
}

/// `(start, target_start)` of every window over a stream of `len` tokens (at most
/// `max_tokens` of them).
pub fn windows(
    len: u64,
    seq_len: usize,
    stride: usize,
    max_tokens: Option<u64>,
) -> Vec<(u64, usize)> {
    let len = max_tokens.map_or(len, |m| m.min(len));
    let (l, s) = (seq_len as u64, stride as u64);
    if len < 2 || seq_len < 2 || stride == 0 || stride > seq_len {
        return Vec::new();
    }
    let mut out = vec![(0, 1)];
    // A later window ends `stride` tokens after the previous one and scores those.
    let mut end = l.min(len);
    while end < len {
        let next_end = (end + s).min(len);
        let start = next_end.saturating_sub(l);
        out.push((start, ((end - start) as usize).max(1)));
        end = next_end;
    }
    out
}

/// The evaluation as a job for [`hymba::run_on`].
pub struct PplJob {
    /// The model.
    pub weights: Weights,
    /// The held-out tokens.
    pub stream: TokenStream,
    /// Window length.
    pub seq_len: usize,
    /// Window step (≤ `seq_len`).
    pub stride: usize,
    /// Score at most this many tokens from the start of the stream.
    pub max_tokens: Option<u64>,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Show a progress bar.
    pub progress: bool,
}

impl BackendRunner for PplJob {
    type Output = Result<PplReport, HymbaError>;

    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output {
        let model = self.weights.load::<B>(&device)?;
        let plan = windows(
            self.stream.len(),
            self.seq_len,
            self.stride,
            self.max_tokens,
        );
        if plan.is_empty() {
            return Err(HymbaError::Input(format!(
                "nothing to score: {} tokens, seq_len {}, stride {} (need ≥ 2 tokens and 1 ≤ stride ≤ seq_len)",
                self.stream.len(),
                self.seq_len,
                self.stride
            )));
        }
        let limit = self
            .max_tokens
            .map_or(self.stream.len(), |m| m.min(self.stream.len()));
        let bar = crate::tasks::progress_bar(plan.len() as u64, self.progress, "windows");
        let (mut nll, mut tokens) = (0.0f64, 0u64);
        for chunk in plan.chunks(self.batch_size.max(1)) {
            let mut bufs = Vec::with_capacity(chunk.len());
            for &(start, _) in chunk {
                let len = (limit - start).min(self.seq_len as u64) as usize;
                let mut buf = vec![0u32; len];
                self.stream
                    .read(start, &mut buf)
                    .map_err(|e| HymbaError::Input(format!("reading tokens: {e}")))?;
                bufs.push(buf);
            }
            let seqs: Vec<Continuation> = bufs
                .iter()
                .zip(chunk)
                .map(|(ids, &(_, target_start))| Continuation { ids, target_start })
                .collect();
            for s in score_continuations(&model, &seqs, 0)? {
                nll -= s.logprob;
                tokens += s.tokens as u64;
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let mean = nll / tokens.max(1) as f64;
        Ok(PplReport {
            tokens,
            nll: mean,
            perplexity: mean.exp(),
            seq_len: self.seq_len,
            stride: self.stride,
        })
    }
}
