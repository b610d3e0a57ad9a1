//! Helpers shared by the model tests.
#![allow(dead_code)]

use burn::backend::NdArray;
use burn::prelude::*;
use hymba::{Hymba, HymbaConfig};

pub type B = NdArray<f32>;

pub fn device() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// A deterministic tiny model (burn's RNG seeded per test).
pub fn tiny_model(seed: u64) -> Hymba<B> {
    B::seed(&device(), seed);
    Hymba::new(&HymbaConfig::tiny(), &device()).expect("tiny config is valid")
}

/// Deterministic pseudo-random token ids in `1..vocab`.
pub fn ids(batch: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    1 + ((state >> 33) % (vocab as u64 - 1)) as u32
                })
                .collect()
        })
        .collect()
}

pub fn to_tensor<Bk: Backend>(rows: &[Vec<u32>], device: &Bk::Device) -> Tensor<Bk, 2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

pub fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("float data")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
