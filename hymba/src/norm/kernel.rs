//! The RMS norm and its backward as CubeCL kernels (CUDA and wgpu).
//!
//! The forward and the input's gradient: one cube per row, of [`threads_for`] units (a power
//! of two from 32 to 256, from the row length), striding over the row so that neighbouring
//! units read neighbouring elements; the row's sums are reduced through shared memory. The
//! weight's gradient is a column sum over rows: cubes of [`COLUMN_UNITS`] columns by a chunk
//! of rows, each unit adding its column over the chunk into an f32 partial sum, and the
//! chunks' partial sums added by a tensor-op sum. All arithmetic is f32; x, y, dy, dx and
//! the weight are read and written in their storage dtype, and the forward rounds the
//! normalised value to it before the weight product, as the reference does.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::{CubeCount, CubeDim};

use crate::cube_common::{GRID_MAX, alloc, grid};

use self::cube::{rms_norm_backward_kernel, rms_norm_kernel, rms_norm_weight_grad_kernel};
use super::NormBackend;

/// Columns per cube of the weight-gradient kernel.
pub const COLUMN_UNITS: usize = 64;

/// Rows per cube of the weight-gradient kernel (more when the rows would need more cubes
/// than one grid dimension takes).
pub const CHUNK_ROWS: usize = 64;

/// A fingerprint of this file, passed to every kernel here as a comptime value, so that
/// CubeCL's persistent kernel cache (keyed by kernel name and comptime values only) never
/// serves a kernel compiled from older source (see `crate::scan::launch::SOURCE`).
const SOURCE: u64 = crate::cube_common::fnv1a(
    concat!(include_str!("kernel.rs"), include_str!("../cube_common.rs")).as_bytes(),
);

pub(crate) mod cube {
    use crate::cube_common::cube::cube_reduce;
    use cubecl::prelude::*;

    /// `sqrt(mean(x[row]²) + eps)` of the contiguous row at `base`, over the cube.
    #[cube]
    fn row_rms<F: Float>(
        x: &Tensor<F>,
        smem: &mut SharedMemory<f32>,
        base: usize,
        len: usize,
        lane: usize,
        eps: f32,
        #[comptime] threads: usize,
    ) -> f32 {
        let mut ss = 0.0f32;
        let mut j = lane;
        while j < len {
            let v = f32::cast_from(x[base + j]);
            ss += v * v;
            j += threads;
        }
        let total = cube_reduce(smem, ss, lane, false);
        f32::sqrt(total / f32::cast_from(len as u32) + eps)
    }

    /// `y[row, j] = cast(cast(x[row, j] / rms(row)) · weight[j])` over contiguous
    /// `[rows, d]` buffers.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        y: &mut Tensor<F>,
        rows: u32,
        d: u32,
        grid_x: u32,
        eps: f32,
        #[comptime] threads: usize,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (CUBE_POS_Y * grid_x + CUBE_POS_X) as usize;
        if row >= rows as usize {
            terminate!();
        }
        let lane = UNIT_POS_X as usize;
        let len = d as usize;
        let base = row * len;
        let mut smem = SharedMemory::<f32>::new(threads);
        let rms = row_rms::<F>(x, &mut smem, base, len, lane, eps, threads);
        let mut j = lane;
        while j < len {
            let n = F::cast_from(f32::cast_from(x[base + j]) / rms);
            y[base + j] = F::cast_from(f32::cast_from(n) * f32::cast_from(weight[j]));
            j += threads;
        }
    }

    /// `dx[row, j] = (dn − n · mean(dn ⊙ n)) / rms(row)` with `n = x / rms(row)` and
    /// `dn = dy ⊙ weight`; also stores each row's rms for the weight's gradient.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        grad: &Tensor<F>,
        dx: &mut Tensor<F>,
        rms_out: &mut Tensor<f32>,
        rows: u32,
        d: u32,
        grid_x: u32,
        eps: f32,
        #[comptime] threads: usize,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (CUBE_POS_Y * grid_x + CUBE_POS_X) as usize;
        if row >= rows as usize {
            terminate!();
        }
        let lane = UNIT_POS_X as usize;
        let len = d as usize;
        let base = row * len;
        let mut smem = SharedMemory::<f32>::new(threads);
        let rms = row_rms::<F>(x, &mut smem, base, len, lane, eps, threads);
        let mut dot = 0.0f32;
        let mut j = lane;
        while j < len {
            let dn = f32::cast_from(grad[base + j]) * f32::cast_from(weight[j]);
            dot += dn * (f32::cast_from(x[base + j]) / rms);
            j += threads;
        }
        let mean = cube_reduce(&mut smem, dot, lane, false) / f32::cast_from(d);
        j = lane;
        while j < len {
            let n = f32::cast_from(x[base + j]) / rms;
            let dn = f32::cast_from(grad[base + j]) * f32::cast_from(weight[j]);
            dx[base + j] = F::cast_from((dn - n * mean) / rms);
            j += threads;
        }
        if lane == 0 {
            rms_out[row] = rms;
        }
    }

    /// `partial[c, j] = Σ_{rows r of chunk c} dy[r, j] · cast(x[r, j] / rms[r])`: one unit
    /// per column, one cube row per chunk of `chunk` rows.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_weight_grad_kernel<F: Float>(
        x: &Tensor<F>,
        grad: &Tensor<F>,
        rms: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        rows: u32,
        d: u32,
        chunk: u32,
        #[comptime] _source: u64,
        #[define(F)] _dtype: StorageType,
    ) {
        let j = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let len = d as usize;
        if j >= len {
            terminate!();
        }
        let start = CUBE_POS_Y as usize * chunk as usize;
        let mut end = start + chunk as usize;
        if end > rows as usize {
            end = rows as usize;
        }
        let mut acc = 0.0f32;
        let mut r = start;
        while r < end {
            let n = F::cast_from(f32::cast_from(x[r * len + j]) / rms[r]);
            acc += f32::cast_from(grad[r * len + j]) * f32::cast_from(n);
            r += 1;
        }
        partial[CUBE_POS_Y as usize * len + j] = acc;
    }
}

/// Units per row: the row length's next power of two, from 32 to 256 (a Δ, B or C row of a
/// few dozen channels does not leave 224 of 256 units idle; a hidden row of thousands
/// strides).
pub fn threads_for(d: usize) -> usize {
    d.next_power_of_two().clamp(32, 256)
}

/// Whether the kernels take these operands (else the tensor ops run).
fn supported<R: CubeRuntime>(x: &CubeTensor<R>, weight: &CubeTensor<R>) -> bool {
    let shape = x.shape();
    let d = shape.as_slice().last().copied().unwrap_or(0);
    matches!(x.dtype, DType::F32 | DType::F16 | DType::BF16)
        && weight.dtype == x.dtype
        && weight.shape().as_slice() == [d]
        && d > 0
        && shape.num_elements() > 0
        && shape.num_elements() < u32::MAX as usize
}

/// `(rows, d)` of a `[..., d]` tensor.
fn rows_and_width<R: CubeRuntime>(x: &CubeTensor<R>) -> (usize, usize) {
    let shape = x.shape();
    let d = shape.as_slice().last().copied().unwrap_or(1);
    (shape.num_elements() / d, d)
}

fn forward<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, eps: f64) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let weight = into_contiguous(weight);
    let (rows, d) = rows_and_width(&x);
    let y = alloc(&x, x.shape(), x.dtype);
    let (count, grid_x) = grid(rows);
    let threads = threads_for(d);
    let dtype = x.dtype;
    let client = x.client.clone();
    // SAFETY: every index is `row · d + j` with `row < rows` (guarded) and `j < d`, or `j`
    // into the `[d]` weight, inside contiguous buffers made or allocated here.
    unsafe {
        rms_norm_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(threads as u32),
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            rows as u32,
            d as u32,
            grid_x,
            eps as f32,
            threads,
            SOURCE,
            dtype.into(),
        );
    }
    y
}

fn backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    grad: CubeTensor<R>,
    eps: f64,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let x = into_contiguous(x);
    let weight = into_contiguous(weight);
    let grad = into_contiguous(if grad.dtype == x.dtype {
        grad
    } else {
        cast(grad, x.dtype)
    });
    let (rows, d) = rows_and_width(&x);
    let dtype = x.dtype;
    let client = x.client.clone();
    let dx = alloc(&x, x.shape(), dtype);
    let rms = alloc(&x, Shape::new([rows]), DType::F32);
    let (count, grid_x) = grid(rows);
    let threads = threads_for(d);
    // SAFETY: as in `forward`; dy and dx are contiguous `[rows, d]` buffers, the rms one
    // `[rows]`.
    unsafe {
        rms_norm_backward_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(threads as u32),
            x.clone().into_tensor_arg(),
            weight.clone().into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            rms.clone().into_tensor_arg(),
            rows as u32,
            d as u32,
            grid_x,
            eps as f32,
            threads,
            SOURCE,
            dtype.into(),
        );
    }
    let chunk = CHUNK_ROWS.max(rows.div_ceil(GRID_MAX));
    let chunks = rows.div_ceil(chunk);
    let partial = alloc(&x, Shape::new([chunks, d]), DType::F32);
    // SAFETY: unit `j < d` (guarded) of chunk `c < chunks` reads rows `c · chunk ..
    // min((c + 1) · chunk, rows)` of the `[rows, d]` buffers and writes `partial[c, j]`.
    unsafe {
        rms_norm_weight_grad_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(d.div_ceil(COLUMN_UNITS) as u32, chunks as u32, 1),
            CubeDim::new_1d(COLUMN_UNITS as u32),
            x.into_tensor_arg(),
            grad.into_tensor_arg(),
            rms.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            rows as u32,
            d as u32,
            chunk as u32,
            SOURCE,
            dtype.into(),
        );
    }
    let partial: Tensor<CubeBackend<R, F, I, BT>, 2> =
        Tensor::from_primitive(TensorPrimitive::Float(partial));
    let dw = partial.sum_dim(0).reshape([d]).cast(weight.dtype);
    (dx, dw.into_primitive().tensor())
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> NormBackend
    for CubeBackend<R, F, I, BT>
{
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        if supported(&x, &weight) {
            forward(x, weight, eps)
        } else {
            super::reference_primitive::<Self>(x, weight, eps)
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if supported(&x, &weight) {
            backward::<R, F, I, BT>(x, weight, grad, eps)
        } else {
            super::reference_backward_primitive::<Self>(x, weight, grad, eps)
        }
    }
}
