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

/// A standard-normal tensor from the backend's (seeded) RNG.
pub fn random<Bk: Backend, const D: usize>(
    shape: [usize; D],
    device: &Bk::Device,
) -> Tensor<Bk, D> {
    Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), device)
}

/// Random selective-scan inputs of `(batch, d_inner, S, T)`, with `A = −exp(N(0, 1)) < 0`
/// as the model's `A_log` parametrisation guarantees.
///
/// A test binary must use one ndarray float type only: burn 0.21 keeps the default float
/// dtype per *device type*, so the first of `NdArray<f32>` / `NdArray<f64>` to create a
/// tensor decides the dtype of `Tensor::random` for the other one too (the f64 checks would
/// silently run in f32).
pub fn scan_inputs<Bk: Backend>(
    (batch, d_inner, states, len): (usize, usize, usize, usize),
    with_state: bool,
    device: &Bk::Device,
) -> hymba::scan::ScanInput<Bk> {
    hymba::scan::ScanInput {
        u: random([batch, d_inner, len], device),
        delta: random([batch, d_inner, len], device),
        a: random::<Bk, 2>([d_inner, states], device).exp().neg(),
        b: random([batch, states, len], device),
        c: random([batch, states, len], device),
        d: random([d_inner], device),
        z: random([batch, d_inner, len], device),
        delta_bias: random([d_inner], device),
        initial_state: with_state.then(|| random([batch, d_inner, states], device)),
    }
}

/// Every element as f64, whatever the tensor's dtype.
pub fn host_f64<Bk: Backend, const D: usize>(t: &Tensor<Bk, D>) -> Vec<f64> {
    t.to_data().convert::<f64>().to_vec().expect("float data")
}

/// Asserts `|a − b| / (1 + |b|) ≤ tol` element-wise, naming the first offender.
pub fn assert_close_f64(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length mismatch");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let err = (x - y).abs() / (1.0 + y.abs());
        assert!(err <= tol, "{what}[{i}]: {x} vs {y}");
    }
}
