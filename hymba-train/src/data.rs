//! Training items as next-token batches for the trainer: token windows from memory-mapped
//! shards (pretraining), packed chat sequences with a loss mask (SFT), and preference pairs
//! with their reference log-probs (DPO).
//!
//! Training draws items from a resumable [`WindowSampler`] held by the strategy (its
//! position is part of every checkpoint); validation iterates a fixed list through a burn
//! `DataLoader`, which is also what the dashboard's progress bar counts.

use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use hymba_datasets::{DpoPair, MaskedTokens, WindowDataset};

use crate::error::TrainError;
use crate::model::{LmBatch, Preference};

/// A preference pair and the frozen reference model's summed response log-probs.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPair {
    /// Both tokenized sides.
    pub pair: DpoPair,
    /// `log π_ref(chosen response | prompt)`.
    pub reference_chosen: f64,
    /// `log π_ref(rejected response | prompt)`.
    pub reference_rejected: f64,
}

/// What a run trains on; every variant is a list of items addressed by index.
#[derive(Debug)]
pub enum TrainData {
    /// Pretraining: `seq_len + 1`-token windows, loss on every target.
    Windows(WindowDataset),
    /// SFT: packed sequences of `seq_len + 1` tokens with the assistant-only loss mask.
    Packed(Vec<MaskedTokens>),
    /// DPO: preference pairs, one item per pair.
    Pairs {
        /// The pairs.
        pairs: Vec<ScoredPair>,
        /// DPO's β.
        beta: f64,
    },
}

impl TrainData {
    /// Number of items (windows, packed sequences or pairs).
    pub fn len(&self) -> usize {
        match self {
            Self::Windows(w) => w.len(),
            Self::Packed(p) => p.len(),
            Self::Pairs { pairs, .. } => pairs.len(),
        }
    }

    /// Whether there is no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every batch of a run has the same shape (windows and packed sequences; pairs
    /// are padded to the longest of each batch), so that the device may keep buffers by
    /// exact size ([`hymba::FixedShapeMemory`]).
    pub fn fixed_shapes(&self) -> bool {
        !matches!(self, Self::Pairs { .. })
    }

    /// Items `indices` as one batch whose loss is multiplied by `scale`.
    ///
    /// A batch of pairs has `2·P` rows, the chosen sides first, right-padded to the longest
    /// (causal attention never sees the padding, and the mask gives it no weight).
    pub fn batch<B: Backend>(
        &self,
        indices: &[usize],
        scale: f32,
        device: &B::Device,
    ) -> Result<LmBatch<B>, TrainError> {
        let mut batch = match self {
            // Every target of a window counts: no mask tensor is built.
            Self::Windows(w) => {
                let width = w.seq_len() + 1;
                let mut buf = vec![0u32; width];
                let mut ids = Vec::with_capacity(indices.len() * width);
                for &i in indices {
                    w.window_into(i, &mut buf)?;
                    ids.extend(buf.iter().map(|&t| i64::from(t)));
                }
                let n = indices.len();
                LmBatch {
                    ids: Tensor::from_data(TensorData::new(ids, [n, width]), device),
                    loss_mask: None,
                    targets: n * (width - 1),
                    preference: None,
                    scale: 1.0,
                }
            }
            Self::Packed(p) => {
                let rows: Vec<&MaskedTokens> = indices.iter().map(|&i| &p[i]).collect();
                rows_to_batch::<B>(&rows, device)
            }
            Self::Pairs { pairs, beta } => {
                let chosen = indices.iter().map(|&i| &pairs[i].pair.chosen);
                let rejected = indices.iter().map(|&i| &pairs[i].pair.rejected);
                let rows: Vec<&MaskedTokens> = chosen.chain(rejected).collect();
                let reference: Vec<f32> = indices
                    .iter()
                    .map(|&i| pairs[i].reference_chosen as f32)
                    .chain(indices.iter().map(|&i| pairs[i].reference_rejected as f32))
                    .collect();
                let n = reference.len();
                let mut batch = rows_to_batch::<B>(&rows, device);
                batch.preference = Some(Preference {
                    reference: Tensor::from_data(TensorData::new(reference, [n]), device),
                    beta: *beta,
                });
                batch
            }
        };
        batch.scale = scale;
        Ok(batch)
    }
}

/// Variable-length batches (chats, preference pairs) are padded so that the model's sequence
/// length is a multiple of this. GPU backends compile kernels per shape class (vector width,
/// tiling), so a new length in every batch would keep the compiler busy; the padding costs
/// at most 63 positions and changes no loss, since every mixer is causal and padded targets
/// weigh 0.
pub const SEQ_MULTIPLE: usize = 64;

/// Rows of tokens as a batch: right-padded with id 0 (at weight 0) to the longest row, the
/// model's input length (`width − 1`) rounded up to [`SEQ_MULTIPLE`]; the targets' weights
/// `mask[1..]` as the loss mask.
pub fn rows_to_batch<B: Backend>(rows: &[&MaskedTokens], device: &B::Device) -> LmBatch<B> {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(2).max(2);
    let width = (longest - 1).next_multiple_of(SEQ_MULTIPLE) + 1;
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * (width - 1));
    let mut targets = 0;
    for r in rows {
        ids.extend(r.ids.iter().map(|&t| i64::from(t)));
        ids.extend(std::iter::repeat_n(0, width - r.len()));
        let m = r.mask.iter().skip(1).map(|&m| f32::from(m));
        mask.extend(m.chain(std::iter::repeat(0.0)).take(width - 1));
        targets += r.mask.iter().skip(1).filter(|&&m| m != 0).count();
    }
    let n = rows.len();
    LmBatch {
        ids: Tensor::from_data(TensorData::new(ids, [n, width]), device),
        loss_mask: Some(Tensor::from_data(
            TensorData::new(mask, [n, width - 1]),
            device,
        )),
        targets,
        preference: None,
        scale: 1.0,
    }
}

/// A burn `DataLoader` over a fixed list of items.
pub struct BatchLoader<B: Backend> {
    dataset: Arc<TrainData>,
    indices: Arc<Vec<usize>>,
    batch_size: usize,
    device: B::Device,
}

impl<B: Backend> BatchLoader<B> {
    /// Serves items `indices` in order, `batch_size` at a time.
    pub fn new(
        dataset: Arc<TrainData>,
        indices: Vec<usize>,
        batch_size: usize,
        device: B::Device,
    ) -> Self {
        Self {
            dataset,
            indices: Arc::new(indices),
            batch_size: batch_size.max(1),
            device,
        }
    }
}

struct BatchIter<'a, B: Backend> {
    loader: &'a BatchLoader<B>,
    next: usize,
}

impl<B: Backend> Iterator for BatchIter<'_, B> {
    type Item = LmBatch<B>;

    fn next(&mut self) -> Option<LmBatch<B>> {
        let l = self.loader;
        if self.next >= l.indices.len() {
            return None;
        }
        let end = (self.next + l.batch_size).min(l.indices.len());
        let batch = l.dataset.batch(&l.indices[self.next..end], 1.0, &l.device);
        self.next = end;
        // Shards are checked when opened; a read failing now means the files changed under
        // us, which ends the pass rather than panicking.
        batch.ok()
    }
}

impl<B: Backend> DataLoaderIterator<LmBatch<B>> for BatchIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress {
            items_processed: self.next,
            items_total: self.loader.indices.len(),
        }
    }
}

impl<B: Backend> DataLoader<B, LmBatch<B>> for BatchLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch<B>> + 'a> {
        Box::new(BatchIter {
            loader: self,
            next: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.indices.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        Arc::new(Self {
            dataset: self.dataset.clone(),
            indices: self.indices.clone(),
            batch_size: self.batch_size,
            device: device.clone(),
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        let end = end.min(self.indices.len());
        let start = start.min(end);
        Arc::new(Self {
            dataset: self.dataset.clone(),
            indices: Arc::new(self.indices[start..end].to_vec()),
            batch_size: self.batch_size,
            device: self.device.clone(),
        })
    }
}
