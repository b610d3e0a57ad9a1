//! The attention heads' masked softmax as one backend operation:
//! `probs = softmax(scores + mask)` over the keys, computed in f32 whatever the storage dtype,
//! returned in the scores' dtype, with the Hymba mask (causal, SWA band, meta tokens always
//! visible; spec §2.3 step 4) evaluated from a [`MaskRule`] rather than read from a tensor.
//!
//! # Why an operation of its own
//! Written in tensor ops, the step is an upcast of the `[batch, H, Tq, Tk]` scores to f32, a
//! mask fill, a softmax (max, subtract, exp, sum, divide) and a cast back, and autodiff saves
//! the f32 probabilities and replays the chain backwards. At hymba-125m, batch 8 × 2,176
//! positions, the scores are 303 M elements per layer (1.2 GB in f32), so every pass over them
//! costs, and there are about twenty per layer. The kernel reads the scores and writes the
//! probabilities once each in the storage dtype, and its backward,
//! `dS = P ⊙ (dP − Σₖ P ⊙ dP)`, reads P and dP and writes dS once each.
//!
//! | backend | forward | backward |
//! |---|---|---|
//! | `NdArray` (any other backend) | tensor ops ([`masked_softmax_reference`]) | tensor ops |
//! | `CubeBackend<R, ..>` (CUDA, wgpu) | `kernel` (CubeCL) | `kernel` |
//! | `Fusion<B>` | custom op → `B`'s | custom op → `B`'s |
//! | `Autodiff<B, C>` | `B`'s, recorded as one op saving P | [`AttentionBackend::masked_softmax_backward`] of `B` |

pub mod autodiff;
#[cfg(feature = "cube")]
pub mod fusion;
#[cfg(feature = "cube")]
pub mod kernel;

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::activation::softmax;
use burn::tensor::ops::FloatTensor;

use crate::precision::upcast;

/// The Hymba mask as a rule over positions: key `j` is hidden from query `i` iff
/// `k > q ∨ (window = Some(w) ∧ q − k > w ∧ k ≥ num_meta)`, where `q = q_start + i` and
/// `k` is key `j`'s position (`j` for `j < key_meta`, `text_start + j − key_meta` after: a
/// cache holds the meta tokens' keys, then a run of text positions).
///
/// A kernel evaluates it per element; nothing of size `Tq × Tk` is built or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskRule {
    /// Position of the first query.
    pub q_start: usize,
    /// Keys `0..key_meta` sit at positions `0..key_meta` (the meta tokens' keys).
    pub key_meta: usize,
    /// Position of key `key_meta`; the keys after it are consecutive.
    pub text_start: usize,
    /// SWA window (`None`: a global layer, causal only).
    pub window: Option<usize>,
    /// Positions below this are meta tokens, visible through any window.
    pub num_meta: usize,
}

impl MaskRule {
    /// Plain causal masking aligned at the bottom-right corner: the `tq` queries are the
    /// last `tq` of the `tk` key positions.
    pub fn causal(tq: usize, tk: usize) -> Self {
        Self {
            q_start: tk.saturating_sub(tq),
            key_meta: 0,
            text_start: 0,
            window: None,
            num_meta: 0,
        }
    }

    /// Every key visible: the queries sit after every key.
    pub fn none(tk: usize) -> Self {
        Self {
            q_start: tk,
            ..Self::causal(0, 0)
        }
    }

    /// Position of key `j`.
    pub fn key_position(&self, j: usize) -> usize {
        if j < self.key_meta {
            j
        } else {
            self.text_start + j - self.key_meta
        }
    }

    /// Whether key `j` is hidden from query `i` (the host-side statement of the rule, which
    /// the kernel and the tensor form below both follow).
    pub fn hidden(&self, i: usize, j: usize) -> bool {
        let (q, k) = (self.q_start + i, self.key_position(j));
        k > q || self.window.is_some_and(|w| q > k + w && k >= self.num_meta)
    }

    /// The rule as a `[tq, tk]` boolean tensor, `true` = hidden (for the tensor-op path).
    pub fn to_tensor<B: Backend>(
        &self,
        tq: usize,
        tk: usize,
        device: &B::Device,
    ) -> Tensor<B, 2, Bool> {
        let text = tk.saturating_sub(self.key_meta);
        let meta = tk - text;
        let keys = Tensor::cat(
            vec![
                Tensor::<B, 1, Int>::arange(0..meta as i64, device),
                Tensor::<B, 1, Int>::arange(
                    self.text_start as i64..(self.text_start + text) as i64,
                    device,
                ),
            ],
            0,
        )
        .reshape([1, tk])
        .expand([tq, tk]);
        let q =
            Tensor::<B, 1, Int>::arange(self.q_start as i64..(self.q_start + tq) as i64, device)
                .reshape([tq, 1])
                .expand([tq, tk]);
        let future = keys.clone().greater(q.clone());
        match self.window {
            None => future,
            Some(w) => {
                let too_far = q.sub(keys.clone()).greater_elem(w as i64);
                let is_text = keys.greater_equal_elem(self.num_meta as i64);
                future.bool_or(too_far.bool_and(is_text))
            }
        }
    }
}

/// Backend extension for the masked softmax. The default bodies are tensor ops, correct on
/// every backend; CubeCL backends override them with kernels.
pub trait AttentionBackend: Backend {
    /// `softmax(scores with hidden keys at −∞)` over the last dim, in f32, returned in the
    /// scores' dtype. Every query must see at least one key (each Hymba query sees itself).
    ///
    /// # Shapes
    /// - `scores`: `[batch, H, Tq, Tk]` → `[batch, H, Tq, Tk]`
    fn masked_softmax(scores: FloatTensor<Self>, rule: MaskRule) -> FloatTensor<Self> {
        reference_primitive::<Self>(scores, rule)
    }

    /// The softmax's vector-Jacobian product from its output: `dS = P ⊙ (dP − Σₖ P ⊙ dP)`,
    /// in f32, returned in P's dtype. Hidden keys have `P = 0`, so their gradient is 0 and
    /// the mask is not needed.
    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference_backward_primitive::<Self>(probs, grad)
    }
}

fn tensor<B: Backend>(p: FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// [`masked_softmax_reference`] on primitives: the trait's default body, and the kernels'
/// fallback for what they do not take.
pub fn reference_primitive<B: Backend>(scores: FloatTensor<B>, rule: MaskRule) -> FloatTensor<B> {
    masked_softmax_reference(tensor::<B>(scores), rule)
        .into_primitive()
        .tensor()
}

/// [`masked_softmax_backward_reference`] on primitives (as [`reference_primitive`]).
pub fn reference_backward_primitive<B: Backend>(
    probs: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    masked_softmax_backward_reference(tensor::<B>(probs), tensor::<B>(grad))
        .into_primitive()
        .tensor()
}

/// The tensor-op masked softmax (the CPU path and the kernels' oracle).
pub fn masked_softmax_reference<B: Backend>(scores: Tensor<B, 4>, rule: MaskRule) -> Tensor<B, 4> {
    let [b, h, tq, tk] = scores.dims();
    let dtype = scores.dtype();
    let hidden = rule
        .to_tensor::<B>(tq, tk, &scores.device())
        .reshape([1, 1, tq, tk])
        .expand([b, h, tq, tk]);
    let scores = upcast(scores).mask_fill(hidden, f32::NEG_INFINITY);
    softmax(scores, 3).cast(dtype)
}

/// The tensor-op backward of the masked softmax (the CPU path and the kernels' oracle).
pub fn masked_softmax_backward_reference<B: Backend>(
    probs: Tensor<B, 4>,
    grad: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let dtype = probs.dtype();
    let p = upcast(probs);
    let g = upcast(grad);
    let dot = p.clone().mul(g.clone()).sum_dim(3);
    p.mul(g.sub(dot)).cast(dtype)
}

/// The masked softmax the attention heads call ([`AttentionBackend::masked_softmax`]).
///
/// # Shapes
/// - `scores`: `[batch, H, Tq, Tk]` → `[batch, H, Tq, Tk]`
pub fn masked_softmax<B: AttentionBackend>(scores: Tensor<B, 4>, rule: MaskRule) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::masked_softmax(
        scores.into_primitive().tensor(),
        rule,
    )))
}

/// The backward of [`masked_softmax`] as a function (what `Autodiff` calls; exposed for
/// tests and benchmarks).
pub fn masked_softmax_backward<B: AttentionBackend>(
    probs: Tensor<B, 4>,
    grad: Tensor<B, 4>,
) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::masked_softmax_backward(
        probs.into_primitive().tensor(),
        grad.into_primitive().tensor(),
    )))
}

/// ndarray f32: the tensor-op bodies.
#[cfg(feature = "ndarray")]
impl AttentionBackend for burn::backend::NdArray<f32> {}

/// ndarray f64 (the finite-difference gradient checks): the tensor-op bodies.
#[cfg(feature = "ndarray")]
impl AttentionBackend for burn::backend::NdArray<f64> {}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tolerance};

    type B = NdArray<f64>;

    #[test]
    fn rule_tensor_matches_the_host_rule() {
        let device = Default::default();
        let rules = [
            MaskRule::causal(5, 9),
            MaskRule::none(7),
            MaskRule {
                q_start: 10,
                key_meta: 3,
                text_start: 6,
                window: Some(4),
                num_meta: 3,
            },
        ];
        for rule in rules {
            let (tq, tk) = (5, 9);
            let t: Vec<bool> = rule
                .to_tensor::<B>(tq, tk, &device)
                .into_data()
                .to_vec()
                .unwrap();
            for i in 0..tq {
                for j in 0..tk {
                    assert_eq!(t[i * tk + j], rule.hidden(i, j), "{rule:?} at ({i}, {j})");
                }
            }
        }
    }

    /// The op under autodiff (its own backward) gives the gradient that autodiff of the
    /// tensor-op chain gives.
    #[test]
    fn backward_matches_autodiff_of_the_tensor_ops() {
        type A = Autodiff<B>;
        let device = Default::default();
        let rule = MaskRule {
            q_start: 4,
            key_meta: 2,
            text_start: 2,
            window: Some(3),
            num_meta: 2,
        };
        let x = Tensor::<B, 4>::random([2, 3, 6, 8], Distribution::Normal(0.0, 2.0), &device);
        let w = Tensor::<B, 4>::random([2, 3, 6, 8], Distribution::Normal(0.0, 1.0), &device);
        let grad_of = |op: bool| {
            let xa = Tensor::<A, 4>::from_inner(x.clone()).require_grad();
            let p = if op {
                masked_softmax(xa.clone(), rule)
            } else {
                masked_softmax_reference(xa.clone(), rule)
            };
            let loss = (p * Tensor::from_inner(w.clone())).sum();
            let g = loss.backward();
            xa.grad(&g).unwrap()
        };
        let (ours, theirs) = (grad_of(true), grad_of(false));
        ours.into_data()
            .assert_approx_eq::<f64>(&theirs.into_data(), Tolerance::absolute(1e-12));
        // Hidden keys get probability 0 and gradient 0; rows sum to 1.
        let p = masked_softmax(x, rule);
        let sums: Vec<f64> = p.clone().sum_dim(3).into_data().to_vec().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12));
        let p: Vec<f64> = p.into_data().to_vec().unwrap();
        for (n, v) in p.iter().enumerate() {
            let (i, j) = ((n / 8) % 6, n % 8);
            if rule.hidden(i, j) {
                assert_eq!(*v, 0.0);
            } else {
                assert!(*v > 0.0);
            }
        }
    }
}
