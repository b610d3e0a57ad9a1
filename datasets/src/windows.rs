//! Fixed-length training windows over the memory-mapped shards of one split, and a seeded,
//! resumable order over them.
//!
//! The split's shards are one token stream `t[0..N]`. Window `i` is
//! `t[i·L .. i·L + L + 1]` for sequence length `L`: inputs are its first `L` tokens, targets
//! its last `L`. Inputs never overlap and every token after the first is a target exactly
//! once per epoch; there are `(N − 1) / L` windows (a tail shorter than a window is unused).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::manifest::{Manifest, Split};
use crate::shard::Shard;
use crate::tokenizer::Tokenizer;

/// The concatenated tokens of a list of shards.
#[derive(Debug)]
pub struct TokenStream {
    shards: Vec<Shard>,
    /// `starts[k]` = stream position of shard k's first token; one extra entry = total.
    starts: Vec<u64>,
    tokenizer_hash: u64,
}

impl TokenStream {
    /// Opens one split of a prepared folder, checking every shard's header (dtype, tokenizer
    /// hash, token count), size and checksum against `manifest.json`. The checksum means one
    /// read of every shard per open (page-cache speed once warm); it is what finds a flipped
    /// bit that the header cannot.
    pub fn open(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let manifest = Manifest::load(dir)?;
        let info = manifest.split(split);
        let mut shards = Vec::with_capacity(info.shards.len());
        for s in &info.shards {
            let path = dir.join(&s.file);
            let shard = Shard::open_expecting(&path, manifest.dtype, manifest.tokenizer.hash)?;
            if shard.len() != s.tokens {
                return Err(DataError::Truncated {
                    path,
                    expected: s.tokens,
                    found: shard.len(),
                });
            }
            if let Some(sum) = &s.checksum {
                sum.check(&path)?;
            }
            shards.push(shard);
        }
        Self::from_shards(shards, manifest.tokenizer.hash)
    }

    /// Opens the given shard files in order; all must carry `tokenizer_hash` and one dtype.
    pub fn open_files(paths: &[PathBuf], tokenizer_hash: u64) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        for path in paths {
            let shard = Shard::open(path)?;
            let dtype = shards
                .first()
                .map_or(shard.header().dtype, |s: &Shard| s.header().dtype);
            shards.push(shard.expect(dtype, tokenizer_hash)?);
        }
        Self::from_shards(shards, tokenizer_hash)
    }

    fn from_shards(shards: Vec<Shard>, tokenizer_hash: u64) -> Result<Self> {
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut total = 0u64;
        for s in &shards {
            starts.push(total);
            total += s.len();
        }
        starts.push(total);
        Ok(Self {
            shards,
            starts,
            tokenizer_hash,
        })
    }

    /// Total tokens.
    pub fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Whether the stream holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hash of the tokenizer the shards were made with.
    pub fn tokenizer_hash(&self) -> u64 {
        self.tokenizer_hash
    }

    /// Copies tokens `start .. start + out.len()` of the stream (across shard borders).
    pub fn read(&self, start: u64, out: &mut [u32]) -> Result<()> {
        let end = start
            .checked_add(out.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "tokens {start}..{start}+{} out of range (stream has {})",
                    out.len(),
                    self.len()
                ))
            })?;
        let mut pos = start;
        let mut filled = 0usize;
        // Shard holding `start`: the last k with starts[k] <= start.
        let mut k = self
            .starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        while pos < end {
            let shard_end = self.starts[k + 1];
            let take = (end.min(shard_end) - pos) as usize;
            if take > 0 {
                self.shards[k].read(pos - self.starts[k], &mut out[filled..filled + take])?;
                filled += take;
                pos += take as u64;
            }
            k += 1;
        }
        Ok(())
    }
}

/// `seq_len + 1`-token windows over a [`TokenStream`], by index.
#[derive(Debug)]
pub struct WindowDataset {
    stream: TokenStream,
    seq_len: usize,
}

impl WindowDataset {
    /// Windows of `seq_len + 1` tokens over `stream`. `seq_len` must be ≥ 1.
    pub fn new(stream: TokenStream, seq_len: usize) -> Result<Self> {
        if seq_len == 0 {
            return Err(DataError::Invalid("seq_len must be at least 1".into()));
        }
        Ok(Self { stream, seq_len })
    }

    /// Opens one split of a prepared folder (see [`TokenStream::open`]).
    pub fn open(dir: impl AsRef<Path>, split: Split, seq_len: usize) -> Result<Self> {
        Self::new(TokenStream::open(dir, split)?, seq_len)
    }

    /// Fails with [`DataError::TokenizerMismatch`] unless the shards were made by `tok`.
    pub fn check_tokenizer(&self, tok: &Tokenizer) -> Result<()> {
        if tok.hash() != self.stream.tokenizer_hash {
            return Err(DataError::TokenizerMismatch {
                path: PathBuf::from("<shards>"),
                found: self.stream.tokenizer_hash,
                expected: tok.hash(),
            });
        }
        Ok(())
    }

    /// Number of windows: `(N − 1) / seq_len`.
    pub fn len(&self) -> usize {
        (self.stream.len().saturating_sub(1) / self.seq_len as u64) as usize
    }

    /// Whether there is no complete window.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence length `L` (a window holds `L + 1` tokens).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The underlying token stream.
    pub fn stream(&self) -> &TokenStream {
        &self.stream
    }

    /// Window `index`: tokens `index·L .. index·L + L + 1`.
    pub fn window(&self, index: usize) -> Result<Vec<u32>> {
        let mut out = vec![0; self.seq_len + 1];
        self.window_into(index, &mut out)?;
        Ok(out)
    }

    /// Writes window `index` into `out` (length `seq_len + 1`).
    pub fn window_into(&self, index: usize, out: &mut [u32]) -> Result<()> {
        if index >= self.len() {
            return Err(DataError::Invalid(format!(
                "window {index} out of range ({} windows)",
                self.len()
            )));
        }
        if out.len() != self.seq_len + 1 {
            return Err(DataError::Invalid(format!(
                "window buffer holds {} tokens, expected seq_len + 1 = {}",
                out.len(),
                self.seq_len + 1
            )));
        }
        self.stream.read(index as u64 * self.seq_len as u64, out)
    }

    /// A sampler over this dataset's windows, starting at epoch 0, position 0.
    pub fn sampler(&self, seed: u64) -> WindowSampler {
        WindowSampler::new(self.len(), seed)
    }
}

/// Everything needed to resume a [`WindowSampler`] exactly: save it with a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Shuffle seed.
    pub seed: u64,
    /// Current epoch (each epoch has its own order).
    pub epoch: u64,
    /// Windows already served in the current epoch.
    pub position: u64,
    /// Windows per epoch (checked on resume).
    pub num_windows: u64,
}

/// A seeded shuffled order of window indices: epoch `e` is a Fisher–Yates permutation
/// driven by SplitMix64 seeded from `(seed, e)`. Own generator, so orders never change with
/// a dependency upgrade. After the last window of an epoch the next epoch starts.
#[derive(Debug, Clone)]
pub struct WindowSampler {
    state: SamplerState,
    /// Permutation of the current epoch.
    order: Vec<u64>,
}

impl WindowSampler {
    /// A sampler over `num_windows` windows at epoch 0, position 0.
    pub fn new(num_windows: usize, seed: u64) -> Self {
        let state = SamplerState {
            seed,
            epoch: 0,
            position: 0,
            num_windows: num_windows as u64,
        };
        Self {
            order: epoch_order(state.num_windows, seed, 0),
            state,
        }
    }

    /// Resumes from a saved state; fails if the dataset's window count changed or the
    /// position is past the end of the epoch.
    pub fn resume(state: SamplerState, num_windows: usize) -> Result<Self> {
        if state.num_windows != num_windows as u64 {
            return Err(DataError::Invalid(format!(
                "cannot resume sampler: it was saved for {} windows, the dataset has {num_windows}",
                state.num_windows
            )));
        }
        if state.position > state.num_windows
            || (state.num_windows > 0 && state.position == state.num_windows)
        {
            return Err(DataError::Invalid(format!(
                "cannot resume sampler: position {} is not below {} windows",
                state.position, state.num_windows
            )));
        }
        Ok(Self {
            order: epoch_order(state.num_windows, state.seed, state.epoch),
            state,
        })
    }

    /// The state to save: resuming from it yields exactly the windows that would follow.
    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Windows served so far in the current epoch.
    pub fn position(&self) -> u64 {
        self.state.position
    }

    /// The whole order of one epoch.
    pub fn order(num_windows: usize, seed: u64, epoch: u64) -> Vec<u64> {
        epoch_order(num_windows as u64, seed, epoch)
    }

    /// The next `n` window indices (crossing into the next epoch if needed).
    pub fn next_batch(&mut self, n: usize) -> Vec<usize> {
        self.by_ref().take(n).collect()
    }
}

/// Endless: after the last window of an epoch the next epoch's order begins. Yields `None`
/// only when there are no windows at all.
impl Iterator for WindowSampler {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let index = *self.order.get(self.state.position as usize)?;
        self.state.position += 1;
        if self.state.position == self.state.num_windows {
            self.state.epoch += 1;
            self.state.position = 0;
            self.order = epoch_order(self.state.num_windows, self.state.seed, self.state.epoch);
        }
        Some(index as usize)
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny, well-mixed, stable generator.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `0..bound` (multiply-shift; bias below 2^-64 · bound, irrelevant here).
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// SplitMix64's finaliser: a bijective 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn epoch_order(n: u64, seed: u64, epoch: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n).collect();
    let mut rng = SplitMix64::new(mix64(seed) ^ mix64(epoch.wrapping_add(1)));
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_sequence() {
        let mut r = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn datasets_can_be_shared_across_loader_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<WindowDataset>();
        send_sync::<WindowSampler>();
        send_sync::<crate::Tokenizer>();
    }

    #[test]
    fn epoch_order_is_a_permutation() {
        let mut o = epoch_order(1000, 7, 3);
        assert_ne!(o, (0..1000).collect::<Vec<_>>());
        o.sort_unstable();
        assert_eq!(o, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn empty_sampler_yields_nothing() {
        let mut s = WindowSampler::new(0, 1);
        assert_eq!(s.next(), None);
        assert!(WindowSampler::resume(s.state(), 0).is_ok());
    }
}
