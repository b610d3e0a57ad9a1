//! The masked softmax and its backward as CubeCL kernels (CUDA and wgpu).
//!
//! One cube of [`THREADS`] units per row (one query of one head): the units stride over the
//! row's keys, so neighbouring units read neighbouring elements. The forward makes one pass
//! for an online max and sum (each unit keeps its own running pair, rescaled when its max
//! grows), two cube reductions through shared memory, and one pass writing P; the mask is
//! evaluated from the [`MaskRule`] per element. The backward makes one pass for
//! `Σₖ P ⊙ dP` and one writing `dS = P ⊙ (dP − Σ)`. Everything is computed in f32; scores,
//! P, dP and dS are read and written in their storage dtype. No fast-math flags: exp of a
//! score minus the row max is at most 1 and the reductions are plain sums.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::CubeDim;

use crate::cube_common::{alloc, grid};

use self::cube::{masked_softmax_backward_kernel, masked_softmax_kernel};
use super::{AttentionBackend, MaskRule, reference_backward_primitive, reference_primitive};

/// Units per cube (per row). A power of two (the reductions halve it).
pub const THREADS: usize = 256;

/// A fingerprint of this file, passed to both kernels as a comptime value, so that CubeCL's
/// persistent kernel cache (keyed by kernel name and comptime values only) never serves a
/// kernel compiled from older source (see `crate::scan::launch::SOURCE`).
const SOURCE: u64 = crate::cube_common::fnv1a(
    concat!(include_str!("kernel.rs"), include_str!("../cube_common.rs")).as_bytes(),
);

pub(crate) mod cube {
    use crate::cube_common::cube::cube_reduce;
    use cubecl::prelude::*;

    /// Whether key `j` is visible to the query at position `qpos` ([`super::MaskRule`]).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn visible(
        qpos: usize,
        j: usize,
        key_meta: usize,
        text_start: usize,
        window: usize,
        num_meta: usize,
        #[comptime] has_window: bool,
    ) -> bool {
        let mut k = j;
        if j >= key_meta {
            k = text_start + j - key_meta;
        }
        let mut vis = k <= qpos;
        if has_window {
            let outside = qpos > k + window && k >= num_meta;
            vis = vis && !outside;
        }
        vis
    }

    /// `probs[row, j] = softmax over visible j of scores[row, ·]` (0 where hidden); rows
    /// are `[Tk]`-long runs of a contiguous `[rows, Tk]` buffer, row `r` being query
    /// `r mod Tq`.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn masked_softmax_kernel<F: Float>(
        scores: &Tensor<F>,
        probs: &mut Tensor<F>,
        rows: u32,
        tq: u32,
        tk: u32,
        grid_x: u32,
        q_start: u32,
        key_meta: u32,
        text_start: u32,
        window: u32,
        num_meta: u32,
        #[comptime] threads: usize,
        #[comptime] has_window: bool,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (CUBE_POS_Y * grid_x + CUBE_POS_X) as usize;
        if row >= rows as usize {
            terminate!();
        }
        let lane = UNIT_POS_X as usize;
        let len = tk as usize;
        let qpos = q_start as usize + row % (tq as usize);
        let km = key_meta as usize;
        let ts = text_start as usize;
        let w = window as usize;
        let nm = num_meta as usize;
        let base = row * len;
        let mut smem = SharedMemory::<f32>::new(threads);

        // Online max and sum of this unit's visible keys.
        let mut m = f32::new(-3.0e38);
        let mut s = 0.0f32;
        let mut j = lane;
        while j < len {
            if visible(qpos, j, km, ts, w, nm, has_window) {
                let x = f32::cast_from(scores[base + j]);
                if x > m {
                    s = s * f32::exp(m - x) + 1.0;
                    m = x;
                } else {
                    s += f32::exp(x - m);
                }
            }
            j += threads;
        }
        let row_max = cube_reduce(&mut smem, m, lane, true);
        let mut mine = 0.0f32;
        if s > 0.0 {
            mine = s * f32::exp(m - row_max);
        }
        let total = cube_reduce(&mut smem, mine, lane, false);
        let inv = 1.0f32 / total;

        j = lane;
        while j < len {
            let mut p = 0.0f32;
            if visible(qpos, j, km, ts, w, nm, has_window) {
                p = f32::exp(f32::cast_from(scores[base + j]) - row_max) * inv;
            }
            probs[base + j] = F::cast_from(p);
            j += threads;
        }
    }

    /// `ds[row, j] = p[row, j] · (dp[row, j] − Σₖ p[row, k] · dp[row, k])`.
    #[cube(launch_unchecked)]
    pub fn masked_softmax_backward_kernel<F: Float>(
        probs: &Tensor<F>,
        grad: &Tensor<F>,
        ds: &mut Tensor<F>,
        rows: u32,
        tk: u32,
        grid_x: u32,
        #[comptime] threads: usize,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (CUBE_POS_Y * grid_x + CUBE_POS_X) as usize;
        if row >= rows as usize {
            terminate!();
        }
        let lane = UNIT_POS_X as usize;
        let len = tk as usize;
        let base = row * len;
        let mut smem = SharedMemory::<f32>::new(threads);

        let mut dot = 0.0f32;
        let mut j = lane;
        while j < len {
            dot += f32::cast_from(probs[base + j]) * f32::cast_from(grad[base + j]);
            j += threads;
        }
        let dot = cube_reduce(&mut smem, dot, lane, false);
        j = lane;
        while j < len {
            let p = f32::cast_from(probs[base + j]);
            ds[base + j] = F::cast_from(p * (f32::cast_from(grad[base + j]) - dot));
            j += threads;
        }
    }
}

/// Whether the kernels take a tensor of this shape and dtype (else the tensor ops run).
fn supported(t: &impl TensorMetadata) -> bool {
    let dims = t.shape().dims::<4>();
    matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && dims.iter().all(|&d| d > 0)
        && dims.iter().product::<usize>() < u32::MAX as usize
}

fn forward<R: CubeRuntime>(scores: CubeTensor<R>, rule: MaskRule) -> CubeTensor<R> {
    let scores = into_contiguous(scores);
    let [b, h, tq, tk] = scores.shape().dims::<4>();
    let rows = b * h * tq;
    let probs = alloc(&scores, scores.shape(), scores.dtype);
    let (count, grid_x) = grid(rows);
    let dtype = scores.dtype;
    let client = scores.client.clone();
    let u = |v: usize| v.min(u32::MAX as usize) as u32;
    // SAFETY: every index is `row · Tk + j` with `row < rows` (guarded) and `j < Tk`, inside
    // the contiguous `[rows, Tk]` buffers allocated here or made contiguous above.
    unsafe {
        masked_softmax_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(THREADS as u32),
            scores.into_tensor_arg(),
            probs.clone().into_tensor_arg(),
            rows as u32,
            tq as u32,
            tk as u32,
            grid_x,
            u(rule.q_start),
            u(rule.key_meta),
            u(rule.text_start),
            u(rule.window.unwrap_or(0)),
            u(rule.num_meta),
            THREADS,
            rule.window.is_some(),
            SOURCE,
            dtype.into(),
        );
    }
    probs
}

fn backward<R: CubeRuntime>(probs: CubeTensor<R>, grad: CubeTensor<R>) -> CubeTensor<R> {
    let probs = into_contiguous(probs);
    let grad = into_contiguous(if grad.dtype == probs.dtype {
        grad
    } else {
        cast(grad, probs.dtype)
    });
    let [b, h, tq, tk] = probs.shape().dims::<4>();
    let rows = b * h * tq;
    let ds = alloc(&probs, probs.shape(), probs.dtype);
    let (count, grid_x) = grid(rows);
    let dtype = probs.dtype;
    let client = probs.client.clone();
    // SAFETY: as in `forward`; P, dP and dS are contiguous `[rows, Tk]` buffers.
    unsafe {
        masked_softmax_backward_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(THREADS as u32),
            probs.into_tensor_arg(),
            grad.into_tensor_arg(),
            ds.clone().into_tensor_arg(),
            rows as u32,
            tk as u32,
            grid_x,
            THREADS,
            SOURCE,
            dtype.into(),
        );
    }
    ds
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionBackend
    for CubeBackend<R, F, I, BT>
{
    fn masked_softmax(scores: FloatTensor<Self>, rule: MaskRule) -> FloatTensor<Self> {
        if supported(&scores) && rule_fits(&rule) {
            forward(scores, rule)
        } else {
            reference_primitive::<Self>(scores, rule)
        }
    }

    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if supported(&probs) {
            backward(probs, grad)
        } else {
            reference_backward_primitive::<Self>(probs, grad)
        }
    }
}

/// Whether every position of the rule fits the kernel's u32 arithmetic with room to add a
/// window (positions are far below this in any real run).
fn rule_fits(rule: &MaskRule) -> bool {
    let limit = (u32::MAX / 4) as usize;
    [
        rule.q_start,
        rule.key_meta,
        rule.text_start,
        rule.window.unwrap_or(0),
        rule.num_meta,
    ]
    .iter()
    .all(|&v| v < limit)
}
