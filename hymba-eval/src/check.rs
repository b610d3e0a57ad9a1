//! `hymba-eval check`: does a backend compute what the CPU computes? A random model of a
//! preset is built on ndarray, copied to the chosen backend, and the full-forward logits of
//! both, plus the chosen backend's prefill + token-by-token decode, are compared.

use burn::backend::NdArray;
use burn::prelude::*;
use hymba::{BackendRunner, Hymba, HymbaCache, HymbaConfig, HymbaError};

/// What to compare.
#[derive(Debug, Clone)]
pub struct CheckJob {
    /// Architecture (random weights).
    pub config: HymbaConfig,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub len: usize,
    /// Seed of weights and tokens.
    pub seed: u64,
}

/// Largest absolute differences found.
#[derive(Debug, Clone, Copy)]
pub struct CheckReport {
    /// Backend forward vs ndarray forward.
    pub forward_vs_cpu: f32,
    /// Backend prefill (half) + decode vs backend forward.
    pub decode_vs_forward: f32,
}

fn ids<B: Backend>(rows: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

impl BackendRunner for CheckJob {
    type Output = Result<CheckReport, HymbaError>;

    fn run<B: hymba::HymbaBackend>(self, device: B::Device) -> Self::Output {
        type Cpu = NdArray<f32>;
        let cpu_device = Default::default();
        Cpu::seed(&cpu_device, self.seed);
        let cpu = Hymba::<Cpu>::new(&self.config, &cpu_device)?;
        let model = cpu.to_backend::<B>(&device)?;
        let mut state = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let rows: Vec<Vec<u32>> = (0..self.batch)
            .map(|_| {
                (0..self.len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        1 + (state % (self.config.vocab_size as u64 - 1)) as u32
                    })
                    .collect()
            })
            .collect();
        let want = host(cpu.forward(ids::<Cpu>(&rows, &cpu_device)));
        let full = host(model.forward(ids::<B>(&rows, &device)));
        let mut cache = HymbaCache::new(&self.config);
        let half = self.len / 2;
        let head: Vec<Vec<u32>> = rows.iter().map(|r| r[..half].to_vec()).collect();
        let mut pieces = vec![model.forward_cached(ids::<B>(&head, &device), &mut cache)];
        for t in half..self.len {
            let step: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[t]]).collect();
            pieces.push(model.forward_cached(ids::<B>(&step, &device), &mut cache));
        }
        let decoded = host(Tensor::cat(pieces, 1));
        Ok(CheckReport {
            forward_vs_cpu: max_diff(&full, &want),
            decode_vs_forward: max_diff(&decoded, &full),
        })
    }
}
