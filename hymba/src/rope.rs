//! Rotary position embedding, NeoX `rotate_half` style with static NTK scaling (spec §2.3).
//!
//! burn's `RotaryEncoding` rotates interleaved pairs; HF Hymba weights expect the first half
//! of each head paired with the second half, hence this small module of our own.

use burn::prelude::*;
use burn::tensor::DType;

/// cos/sin tables for a run of consecutive positions, shared by every layer of one forward.
///
/// The tables are kept as `[1, 1, T, 2, d/2]` (the head dim cut into its two halves), so
/// that `rotate_half(x) = [−x₂, x₁]` becomes one flip of the halves with the sign folded into
/// the sine table. The textbook form (negate, then concatenate) costs four kernels forward
/// and about eight backward per call on the GPU backends (the concatenation's slice
/// assignments, and zero-filled buffers in the backward of each half's narrowing); the flip
/// is one kernel each way, and its backward is a flip.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// `[1, 1, T, 2, d/2]`: `cos θ` in both halves.
    cos: Tensor<B, 5>,
    /// `[1, 1, T, 2, d/2]`: `−sin θ` in the first half, `sin θ` in the second.
    sin: Tensor<B, 5>,
}

impl<B: Backend> Rope<B> {
    /// Tables for positions `start .. start + len`, head dim `head_dim`, base `base`
    /// (already NTK-scaled): `inv_freq[i] = base^(−2i/d)`, angles `pos · inv_freq` for each
    /// half; computed in f32 then cast to `dtype`.
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
        let mut angles = Vec::with_capacity(len * half);
        for p in start..start + len {
            angles.extend(inv_freq.iter().map(|f| (p as f64 * f) as f32));
        }
        let angles = Tensor::<B, 2>::from_data(TensorData::new(angles, [len, half]), device)
            .reshape([1, 1, len, 1, half]);
        let cos = angles.clone().cos();
        let sin = angles.sin();
        Self {
            cos: Tensor::cat(vec![cos.clone(), cos], 3).cast(dtype),
            sin: Tensor::cat(vec![sin.clone().neg(), sin], 3).cast(dtype),
        }
    }

    /// Rotates queries or keys: `x·cos + rotate_half(x)·sin`, with `rotate_half(x) = [−x₂,
    /// x₁]` for the halves `x₁`, `x₂` of the head dim (NeoX style).
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, T, head_dim]` → same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, t, d] = x.dims();
        let halves = x.reshape([b, h, t, 2, d / 2]);
        let swapped = halves.clone().flip([3]);
        (halves * self.cos.clone() + swapped * self.sin.clone()).reshape([b, h, t, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = Autodiff<NdArray>;

    /// `x·cos + [−x₂, x₁]·sin` written out, tables from scratch.
    fn textbook(x: Tensor<B, 4>, start: usize, base: f64) -> Tensor<B, 4> {
        let [_, _, t, d] = x.dims();
        let half = d / 2;
        let mut angles = Vec::new();
        for p in start..start + t {
            for _ in 0..2 {
                angles.extend(
                    (0..half).map(|i| (p as f64 * base.powf(-(2.0 * i as f64) / d as f64)) as f32),
                );
            }
        }
        let angles = Tensor::<B, 2>::from_data(TensorData::new(angles, [t, d]), &x.device())
            .reshape([1, 1, t, d]);
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * angles.clone().cos() + rotated * angles.sin()
    }

    #[test]
    fn flipped_halves_equal_rotate_half_forward_and_backward() {
        let device = Default::default();
        let (start, len, d, base) = (5, 7, 8, 10_000.0);
        // The device's default float dtype is process-wide: other tests of this crate set
        // it to f64 while this one runs, so the tables take x's dtype, whichever it is.
        let values = |seed: f32| {
            let v: Vec<f32> = (0..2 * 3 * len * d)
                .map(|i| (i as f32 * 0.731 + seed).sin())
                .collect();
            Tensor::<B, 4>::from_data(TensorData::new(v, [2, 3, len, d]), &device)
        };
        let x = values(0.3).require_grad();
        let dy = values(1.7);
        let rope = Rope::<B>::new(start, len, d, base, x.dtype(), &device);

        let ours = rope.apply(x.clone());
        let reference = textbook(x.clone(), start, base);
        ours.to_data()
            .assert_approx_eq::<f32>(&reference.to_data(), Default::default());

        let g_ours = (ours * dy.clone()).sum().backward();
        let g_ref = (reference * dy).sum().backward();
        let (Some(a), Some(b)) = (x.grad(&g_ours), x.grad(&g_ref)) else {
            panic!("x has no gradient");
        };
        a.to_data()
            .assert_approx_eq::<f32>(&b.to_data(), Default::default());
        // Not vacuous: the rotation moves values (a position past 0 has θ ≠ 0).
        let moved = (rope.apply(x.clone()) - x).abs().max().into_scalar();
        assert!(moved > 1e-2, "rotation left x unchanged ({moved})");
    }
}
