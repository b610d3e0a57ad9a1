//! Token windows from memory-mapped shards, as next-token batches for the trainer.
//!
//! Training draws windows from a resumable [`WindowSampler`] held by the strategy (its
//! position is part of every checkpoint); validation iterates a fixed list through a burn
//! `DataLoader`, which is also what the dashboard's progress bar counts.

use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use hymba_datasets::{DataError, WindowDataset};

use crate::model::LmBatch;

/// Reads windows `indices` into one batch `[indices.len(), seq_len + 1]`.
pub fn make_batch<B: Backend>(
    dataset: &WindowDataset,
    indices: &[usize],
    scale: f32,
    device: &B::Device,
) -> Result<LmBatch<B>, DataError> {
    let width = dataset.seq_len() + 1;
    let mut buf = vec![0u32; width];
    let mut ids = Vec::with_capacity(indices.len() * width);
    for &i in indices {
        dataset.window_into(i, &mut buf)?;
        ids.extend(buf.iter().map(|&t| t as i64));
    }
    Ok(LmBatch {
        ids: Tensor::from_data(TensorData::new(ids, [indices.len(), width]), device),
        loss_mask: None,
        scale,
    })
}

/// A burn `DataLoader` over a fixed list of windows.
pub struct WindowLoader<B: Backend> {
    dataset: Arc<WindowDataset>,
    indices: Arc<Vec<usize>>,
    batch_size: usize,
    device: B::Device,
}

impl<B: Backend> WindowLoader<B> {
    /// Serves windows `indices` in order, `batch_size` at a time.
    pub fn new(
        dataset: Arc<WindowDataset>,
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

struct WindowIter<'a, B: Backend> {
    loader: &'a WindowLoader<B>,
    next: usize,
}

impl<B: Backend> Iterator for WindowIter<'_, B> {
    type Item = LmBatch<B>;

    fn next(&mut self) -> Option<LmBatch<B>> {
        let l = self.loader;
        if self.next >= l.indices.len() {
            return None;
        }
        let end = (self.next + l.batch_size).min(l.indices.len());
        let batch = make_batch(&l.dataset, &l.indices[self.next..end], 1.0, &l.device);
        self.next = end;
        // Shards are checked when opened; a read failing now means the files changed under
        // us, which ends the pass rather than panicking.
        batch.ok()
    }
}

impl<B: Backend> DataLoaderIterator<LmBatch<B>> for WindowIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress {
            items_processed: self.next,
            items_total: self.loader.indices.len(),
        }
    }
}

impl<B: Backend> DataLoader<B, LmBatch<B>> for WindowLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch<B>> + 'a> {
        Box::new(WindowIter {
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
