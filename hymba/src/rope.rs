//! Rotary position embedding, NeoX `rotate_half` style with static NTK scaling (spec §2.3).
//!
//! burn's `RotaryEncoding` rotates interleaved pairs; HF Hymba weights expect the first half
//! of each head paired with the second half, hence this small module of our own.

use burn::prelude::*;
use burn::tensor::DType;

/// cos/sin tables for a run of consecutive positions, shared by every layer of one forward.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// `[1, 1, T, d]`
    cos: Tensor<B, 4>,
    /// `[1, 1, T, d]`
    sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// Tables for positions `start .. start + len`, head dim `head_dim`, base `base`
    /// (already NTK-scaled): `inv_freq[i] = base^(−2i/d)`, angles `pos · inv_freq`,
    /// concatenated with themselves; computed in f32 then cast to `dtype`.
    pub fn new(
        start: usize,
        len: usize,
        head_dim: usize,
        base: f64,
        dtype: DType,
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| base.powf(-(2.0 * i as f64) / head_dim as f64))
            .collect();
        let mut angles = Vec::with_capacity(len * head_dim);
        for p in start..start + len {
            for _ in 0..2 {
                angles.extend(inv_freq.iter().map(|f| (p as f64 * f) as f32));
            }
        }
        let angles = Tensor::<B, 2>::from_data(TensorData::new(angles, [len, head_dim]), device)
            .reshape([1, 1, len, head_dim]);
        Self {
            cos: angles.clone().cos().cast(dtype),
            sin: angles.sin().cast(dtype),
        }
    }

    /// Rotates queries or keys: `x·cos + rotate_half(x)·sin`.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, T, head_dim]` → same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, _, d] = x.dims();
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x.mul(self.cos.clone()) + rotated.mul(self.sin.clone())
    }
}
