//! The conv + SiLU and its backward as CubeCL kernels (CUDA and wgpu).
//!
//! Every kernel maps one unit to one element of a contiguous `[batch, ·, d]` buffer, so
//! neighbouring units read neighbouring channels. The forward sums the `k` taps and the bias
//! in f32 and writes `silu` of it once, in the storage dtype (as `causal_conv1d` does). The
//! backward writes `dz = dy · silu'(z)` to an f32 buffer, then `dfull` from it (`k` taps per
//! element), and the taps' and bias's gradients as column sums: cubes of [`COLUMN_UNITS`]
//! channels by a chunk of rows and one tap (or the bias) each, summed over the chunks by a
//! tensor-op sum.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::{CubeCount, CubeDim};

use crate::cube_common::{GRID_MAX, alloc, grid};

use self::cube::{conv_dfull_kernel, conv_dz_kernel, conv_forward_kernel, conv_param_grad_kernel};
use super::ConvBackend;

/// Units per cube of the element-wise kernels.
const UNITS: usize = 256;

/// Channels per cube of the parameter-gradient kernel.
pub const COLUMN_UNITS: usize = 64;

/// Rows (batch × time) per cube of the parameter-gradient kernel (more when the rows would
/// need more cubes than one grid dimension takes).
pub const CHUNK_ROWS: usize = 64;

/// The largest tap count the kernels take (the taps sit in a loop over `k`; beyond this
/// the tensor ops run).
pub const MAX_TAPS: usize = 16;

/// A fingerprint of this file, passed to every kernel here as a comptime value, so that
/// CubeCL's persistent kernel cache (keyed by kernel name and comptime values only) never
/// serves a kernel compiled from older source (see `crate::scan::launch::SOURCE`).
const SOURCE: u64 = crate::cube_common::fnv1a(
    concat!(include_str!("kernel.rs"), include_str!("../cube_common.rs")).as_bytes(),
);

pub(crate) mod cube {
    use cubecl::prelude::*;

    /// `bias[c] + Σ_j weight[c, j] · full[b, t + j, c]` in f32, for output element `i` of a
    /// `[batch, T, d]` buffer.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn pre_activation<F: Float>(
        full: &Tensor<F>,
        weight: &Tensor<F>,
        bias: &Tensor<F>,
        i: usize,
        t_len: usize,
        len: usize,
        d: usize,
        k: usize,
    ) -> f32 {
        let c = i % d;
        let row = i / d;
        let b = row / t_len;
        let t = row % t_len;
        let base = (b * len + t) * d + c;
        let mut z = f32::cast_from(bias[c]);
        for j in 0..k {
            z += f32::cast_from(weight[c * k + j]) * f32::cast_from(full[base + j * d]);
        }
        z
    }

    /// `1 / (1 + e^−z)`.
    #[cube]
    fn sigmoid(z: f32) -> f32 {
        1.0f32 / (1.0f32 + f32::exp(-z))
    }

    /// `y[b, t, c] = silu(pre-activation)`, one unit per output element.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn conv_forward_kernel<F: Float>(
        full: &Tensor<F>,
        weight: &Tensor<F>,
        bias: &Tensor<F>,
        y: &mut Tensor<F>,
        n: u32,
        t_len: u32,
        len: u32,
        d: u32,
        k: u32,
        grid_x: u32,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ((CUBE_POS_Y * grid_x + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X) as usize;
        if i >= n as usize {
            terminate!();
        }
        let z = pre_activation::<F>(
            full,
            weight,
            bias,
            i,
            t_len as usize,
            len as usize,
            d as usize,
            k as usize,
        );
        y[i] = F::cast_from(z * sigmoid(z));
    }

    /// `dz = dy · σ(z) · (1 + z · (1 − σ(z)))` in f32, one unit per output element.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn conv_dz_kernel<F: Float>(
        full: &Tensor<F>,
        weight: &Tensor<F>,
        bias: &Tensor<F>,
        grad: &Tensor<F>,
        dz: &mut Tensor<f32>,
        n: u32,
        t_len: u32,
        len: u32,
        d: u32,
        k: u32,
        grid_x: u32,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ((CUBE_POS_Y * grid_x + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X) as usize;
        if i >= n as usize {
            terminate!();
        }
        let z = pre_activation::<F>(
            full,
            weight,
            bias,
            i,
            t_len as usize,
            len as usize,
            d as usize,
            k as usize,
        );
        let s = sigmoid(z);
        dz[i] = f32::cast_from(grad[i]) * s * (1.0f32 + z * (1.0f32 - s));
    }

    /// `dfull[b, s, c] = Σ_j weight[c, j] · dz[b, s − j, c]` over `0 ≤ s − j < T`, one unit
    /// per input element.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn conv_dfull_kernel<F: Float>(
        dz: &Tensor<f32>,
        weight: &Tensor<F>,
        dfull: &mut Tensor<F>,
        n: u32,
        t_len: u32,
        len: u32,
        d: u32,
        k: u32,
        grid_x: u32,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ((CUBE_POS_Y * grid_x + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X) as usize;
        if i >= n as usize {
            terminate!();
        }
        let dd = d as usize;
        let kk = k as usize;
        let tl = t_len as usize;
        let c = i % dd;
        let row = i / dd;
        let b = row / (len as usize);
        let s = row % (len as usize);
        let mut acc = 0.0f32;
        for j in 0..kk {
            if s >= j && s - j < tl {
                acc += f32::cast_from(weight[c * kk + j]) * dz[(b * tl + s - j) * dd + c];
            }
        }
        dfull[i] = F::cast_from(acc);
    }

    /// `partial[chunk, j, c] = Σ_{rows r of the chunk} dz[r, c] · full[b, t + j, c]` for
    /// `j < k` (the taps), and `Σ dz[r, c]` for `j = k` (the bias): one unit per channel,
    /// cubes over (channels, chunks, k + 1).
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn conv_param_grad_kernel<F: Float>(
        full: &Tensor<F>,
        dz: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        rows: u32,
        t_len: u32,
        len: u32,
        d: u32,
        k: u32,
        chunk: u32,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let c = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let dd = d as usize;
        if c >= dd {
            terminate!();
        }
        let j = CUBE_POS_Z as usize;
        let tl = t_len as usize;
        let start = CUBE_POS_Y as usize * chunk as usize;
        let mut end = start + chunk as usize;
        if end > rows as usize {
            end = rows as usize;
        }
        let mut acc = 0.0f32;
        let mut r = start;
        while r < end {
            let g = dz[r * dd + c];
            if j < k as usize {
                let b = r / tl;
                let t = r % tl;
                acc += g * f32::cast_from(full[(b * (len as usize) + t + j) * dd + c]);
            } else {
                acc += g;
            }
            r += 1;
        }
        partial[(CUBE_POS_Y as usize * (k as usize + 1) + j) * dd + c] = acc;
    }
}

/// Whether the kernels take these operands (else the tensor ops run).
fn supported<R: CubeRuntime>(
    full: &CubeTensor<R>,
    weight: &CubeTensor<R>,
    bias: &CubeTensor<R>,
) -> bool {
    let [batch, len, d] = full.shape().dims::<3>();
    let [wd, k] = weight.shape().dims::<2>();
    matches!(full.dtype, DType::F32 | DType::F16 | DType::BF16)
        && weight.dtype == full.dtype
        && bias.dtype == full.dtype
        && bias.shape().as_slice() == [d]
        && wd == d
        && (1..=MAX_TAPS).contains(&k)
        && len >= k
        && batch * d > 0
        && batch * len * d < u32::MAX as usize
}

/// `[batch, L, d]`, `k` and `T = L − k + 1`.
fn dims<R: CubeRuntime>(
    full: &CubeTensor<R>,
    weight: &CubeTensor<R>,
) -> ([usize; 3], usize, usize) {
    let dims = full.shape().dims::<3>();
    let k = weight.shape().dims::<2>()[1];
    (dims, k, dims[1] + 1 - k)
}

fn forward<R: CubeRuntime>(
    full: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: CubeTensor<R>,
) -> CubeTensor<R> {
    let [full, weight, bias] = [full, weight, bias].map(into_contiguous);
    let ([batch, len, d], k, t) = dims(&full, &weight);
    let y = alloc(&full, Shape::new([batch, t, d]), full.dtype);
    let n = batch * t * d;
    let (count, grid_x) = grid(n.div_ceil(UNITS));
    let dtype = full.dtype;
    let client = full.client.clone();
    // SAFETY: unit `i < n` (guarded) reads `full[(b·L + t + j)·d + c]` with `t + j < L`,
    // `weight[c·k + j]` and `bias[c]`, and writes `y[i]`, all contiguous buffers of those
    // shapes.
    unsafe {
        conv_forward_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(UNITS as u32),
            full.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            n as u32,
            t as u32,
            len as u32,
            d as u32,
            k as u32,
            grid_x,
            SOURCE,
            dtype.into(),
        );
    }
    y
}

type Grads<R> = (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>);

fn backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    full: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> Grads<R> {
    let grad = if grad.dtype == full.dtype {
        grad
    } else {
        burn_cubecl::kernel::cast(grad, full.dtype)
    };
    let [full, weight, bias, grad] = [full, weight, bias, grad].map(into_contiguous);
    let ([batch, len, d], k, t) = dims(&full, &weight);
    let dtype = full.dtype;
    let client = full.client.clone();
    let u = |v: usize| v as u32;

    let n = batch * t * d;
    let dz = alloc(&full, Shape::new([batch, t, d]), DType::F32);
    let (count, grid_x) = grid(n.div_ceil(UNITS));
    // SAFETY: as in `forward`, plus `grad[i]` and `dz[i]` of `[batch, T, d]` buffers.
    unsafe {
        conv_dz_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(UNITS as u32),
            full.clone().into_tensor_arg(),
            weight.clone().into_tensor_arg(),
            bias.into_tensor_arg(),
            grad.into_tensor_arg(),
            dz.clone().into_tensor_arg(),
            u(n),
            u(t),
            u(len),
            u(d),
            u(k),
            grid_x,
            SOURCE,
            dtype.into(),
        );
    }

    let n_full = batch * len * d;
    let dfull = alloc(&full, full.shape(), dtype);
    let (count, grid_x) = grid(n_full.div_ceil(UNITS));
    // SAFETY: unit `i < batch·L·d` (guarded) reads `dz[(b·T + s − j)·d + c]` only for
    // `0 ≤ s − j < T` and `weight[c·k + j]`, and writes `dfull[i]`.
    unsafe {
        conv_dfull_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(UNITS as u32),
            dz.clone().into_tensor_arg(),
            weight.clone().into_tensor_arg(),
            dfull.clone().into_tensor_arg(),
            u(n_full),
            u(t),
            u(len),
            u(d),
            u(k),
            grid_x,
            SOURCE,
            dtype.into(),
        );
    }

    let rows = batch * t;
    let chunk = CHUNK_ROWS.max(rows.div_ceil(GRID_MAX));
    let chunks = rows.div_ceil(chunk);
    let partial = alloc(&full, Shape::new([chunks, k + 1, d]), DType::F32);
    // SAFETY: unit `c < d` (guarded) of chunk `y < chunks` and tap `j ≤ k` reads rows
    // `y·chunk .. min((y + 1)·chunk, rows)` of dz and, for `j < k`, `full[(b·L + t + j)·d +
    // c]` with `t + j < L`, and writes `partial[y, j, c]`.
    unsafe {
        conv_param_grad_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(u(d.div_ceil(COLUMN_UNITS)), u(chunks), u(k + 1)),
            CubeDim::new_1d(COLUMN_UNITS as u32),
            full.into_tensor_arg(),
            dz.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            u(rows),
            u(t),
            u(len),
            u(d),
            u(k),
            u(chunk),
            SOURCE,
            dtype.into(),
        );
    }
    let partial: Tensor<CubeBackend<R, F, I, BT>, 3> =
        Tensor::from_primitive(TensorPrimitive::Float(partial));
    let sums = partial.sum_dim(0).reshape([k + 1, d]);
    let dw = sums
        .clone()
        .narrow(0, 0, k)
        .swap_dims(0, 1)
        .cast(weight.dtype);
    let db = sums.narrow(0, k, 1).reshape([d]).cast(dtype);
    (
        dfull,
        dw.into_primitive().tensor(),
        db.into_primitive().tensor(),
    )
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ConvBackend
    for CubeBackend<R, F, I, BT>
{
    fn causal_conv_silu(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if supported(&full, &weight, &bias) {
            forward(full, weight, bias)
        } else {
            super::reference_primitive::<Self>(full, weight, bias)
        }
    }

    fn causal_conv_silu_backward(
        full: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if supported(&full, &weight, &bias) {
            backward::<R, F, I, BT>(full, weight, bias, grad)
        } else {
            super::reference_backward_primitive::<Self>(full, weight, bias, grad)
        }
    }
}
