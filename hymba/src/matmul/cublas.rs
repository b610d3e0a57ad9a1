//! The matmul on CUDA through cuBLAS (`cublasGemmEx` / `cublasGemmStridedBatchedEx`), on
//! cubecl's own device buffers: no copy in or out.
//!
//! # Layouts
//! cuBLAS is column-major; a row-major `[m, k]` matrix is a column-major `[k, m]` one with
//! the same leading dimension. So `O = L · R` (row-major) is computed as `Oᵀ = Rᵀ · Lᵀ`.
//! An operand that is a transposed view (`float_transpose` only swaps strides, as for a
//! weight `Wᵀ` or for `Xᵀ` in `dW = Xᵀ·dY`) is passed with `CUBLAS_OP_T` and no copy. A
//! weight broadcast over the batch (`[1, k, n]` against `[b, m, k]`) folds the batch into
//! the rows: one GEMM. Other batched products are one strided-batched GEMM (stride 0 for a
//! broadcast operand). Anything else (partial broadcasts, int dtypes, tiny products) runs
//! burn's own kernel.
//!
//! # Precision
//! bf16 and f16 are multiplied on tensor cores with f32 accumulation; f32 is exact f32
//! (`CUBLAS_COMPUTE_32F`) unless [`super::set_tf32`] allows TF32 (what burn's own CUDA
//! matmul does).
//!
//! # Ordering
//! cubecl keeps its CUDA streams private, so the GEMM runs on a stream of ours, ordered
//! against cubecl's work by device-side flags (`cublas/order.rs`).
//!
//! [`super::set_cublas`] turns the whole path off (burn's kernel everywhere), for
//! benchmark comparisons.

mod order;

use std::ffi::c_void;
use std::sync::OnceLock;
use std::sync::atomic::Ordering as AtomicOrdering;

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::{result as blas, sys};

pub use order::{flagged_products, flags_refused};

/// The multiple that every dimension of a product must be for [`supports`] to take it in
/// any dtype: cuBLAS's tensor-core kernels want 16-byte rows, 8 values of bf16/f16 (4 of
/// f32, for which 8 is also a multiple). What `MatmulBackend::matmul_dim_multiple` reports
/// on CUDA, so that the LM head can pad its vocabulary to it.
pub const DIM_MULTIPLE: usize = 8;

/// Products with fewer multiply-adds than this stay on burn's kernel (the ordering's
/// launches would dominate).
pub const MIN_MACS: usize = 1 << 22;

/// Whether cuBLAS is used: [`super::set_cublas`] has not turned it off and the library
/// loads.
pub fn available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to open the shared library.
    super::cublas_enabled() && *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// One operand as cuBLAS sees it.
struct Operand {
    tensor: CubeTensor<CudaRuntime>,
    /// Stored transposed (column-major matrices): pass `CUBLAS_OP_T`.
    transposed: bool,
    /// Leading dimension, elements.
    ld: usize,
}

/// `Some((transposed, ld))` when the last two dims are a plain row- or column-major matrix.
fn matrix_layout(t: &CubeTensor<CudaRuntime>) -> Option<(bool, usize)> {
    let shape = t.shape();
    let dims = shape.as_slice();
    let strides = t.meta.strides();
    let r = dims.len();
    let (rows, cols) = (dims[r - 2], dims[r - 1]);
    let (sr, sc) = (strides[r - 2], strides[r - 1]);
    if sc == 1 && (rows == 1 || sr >= cols) {
        Some((false, sr.max(cols).max(1)))
    } else if sr == 1 && (cols == 1 || sc >= rows) {
        Some((true, sc.max(rows).max(1)))
    } else {
        None
    }
}

/// The stride between consecutive matrices when all batch dims collapse into one (each
/// batch dim's stride is the next one's times its size), else `None`.
fn batch_stride(t: &CubeTensor<CudaRuntime>) -> Option<usize> {
    let shape = t.shape();
    let dims = shape.as_slice();
    let strides = t.meta.strides();
    let r = dims.len();
    if r == 2 {
        return Some(0);
    }
    for i in 0..r - 3 {
        if dims[i] > 1 && strides[i] != strides[i + 1] * dims[i + 1] {
            return None;
        }
    }
    Some(strides[r - 3])
}

fn operand(t: CubeTensor<CudaRuntime>) -> Operand {
    let t = match matrix_layout(&t) {
        Some(_) if batch_stride(&t).is_some() => t,
        _ => into_contiguous(t),
    };
    let (transposed, ld) =
        matrix_layout(&t).unwrap_or((false, t.shape()[t.shape().num_dims() - 1]));
    Operand {
        tensor: t,
        transposed,
        ld,
    }
}

fn data_type(dtype: DType) -> Option<sys::cudaDataType> {
    match dtype {
        DType::F32 => Some(sys::cudaDataType::CUDA_R_32F),
        DType::F16 => Some(sys::cudaDataType::CUDA_R_16F),
        DType::BF16 => Some(sys::cudaDataType::CUDA_R_16BF),
        _ => None,
    }
}

/// Whether [`matmul`] takes these operands (else burn's kernel runs).
pub fn supports(lhs: &CubeTensor<CudaRuntime>, rhs: &CubeTensor<CudaRuntime>) -> bool {
    let (l, r) = (lhs.shape(), rhs.shape());
    let (l, r) = (l.as_slice(), r.as_slice());
    let rank = l.len();
    if rank < 2 || r.len() != rank || lhs.dtype != rhs.dtype || data_type(lhs.dtype).is_none() {
        return false;
    }
    if lhs.qparams.is_some() || rhs.qparams.is_some() {
        return false;
    }
    let (m, k, n) = (l[rank - 2], l[rank - 1], r[rank - 1]);
    if r[rank - 2] != k || m == 0 || n == 0 || k == 0 {
        return false;
    }
    // Batch dims: equal, or one side all ones (broadcast); no partial broadcasts.
    let (lb, rb) = (&l[..rank - 2], &r[..rank - 2]);
    let batch_ok = lb == rb || lb.iter().all(|&d| d == 1) || rb.iter().all(|&d| d == 1);
    let batch: usize = lb.iter().zip(rb).map(|(&a, &b)| a.max(b)).product();
    // cuBLAS's tensor-core kernels want 16-byte aligned rows; with an odd dim (the LM
    // head's 32,001) it falls back to kernels slower than burn's (H100, bf16: 96 vs 270
    // TFLOP/s at 17,408 × 32,001 × 1,600), so such products stay on burn's kernel. Padding
    // only the leading dimensions does not help: with operands copied to a 32,008 pitch
    // and the output written pitched, hymba-125m's LM-head products ran at 91, 127 and 148
    // TFLOP/s on an H200 (forward, dX, dW; burn's kernel: 205, 219, 190;
    // `bench/results/matmul_hymba-125m_bf16_pitched_h200_2026-12-04.json`): the dimension itself decides.
    let align = 16 / lhs.dtype.size();
    if [m, n, k].iter().any(|&d| d % align != 0) {
        return false;
    }
    let fits = [m, n, k, batch].iter().all(|&x| x < i32::MAX as usize / 2);
    batch_ok && fits && m.saturating_mul(n).saturating_mul(k).saturating_mul(batch) >= MIN_MACS
}

/// The GEMM of one product as cuBLAS takes it (column-major: `Oᵀ = Rᵀ · Lᵀ`, see the module
/// docs), decided on the calling thread, so that the device thread only adds the buffers'
/// addresses.
#[derive(Clone, Copy)]
struct Gemm {
    op_r: sys::cublasOperation_t,
    op_l: sys::cublasOperation_t,
    /// cuBLAS's m, n, k: the output's columns, its rows (the batch folded in where it can
    /// be), the inner dimension.
    dims: [i32; 3],
    /// Leading dimensions of rhs, lhs and out.
    ld: [i32; 3],
    /// Batch count and the strides between matrices of rhs, lhs and out (0: broadcast), for
    /// one strided-batched GEMM; `None` for a plain one.
    batched: Option<(i32, [i64; 3])>,
    ty: sys::cudaDataType,
    compute: sys::cublasComputeType_t,
    /// `[m, k, n, batch]` and the dtype, as the model sees the product (for errors).
    product: [usize; 4],
    dtype: DType,
}

impl Gemm {
    fn new(
        l: &Operand,
        r: &Operand,
        [m, k, n]: [usize; 3],
        batch: usize,
        (l_batched, r_batched): (bool, bool),
        dtype: DType,
    ) -> Self {
        let op_of = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let compute = if dtype == DType::F32 && super::tf32_allowed() {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        // A broadcast weight against a batch of row-major rows: fold the batch into the rows.
        let fold =
            !r_batched && l_batched && !l.transposed && batch_stride(&l.tensor) == Some(m * l.ld);
        let stride = |o: &Operand, batched: bool| {
            if batched {
                batch_stride(&o.tensor).expect("operand() makes batches collapsible") as i64
            } else {
                0
            }
        };
        let (rows, batched) = if batch == 1 || fold {
            (if fold { batch * m } else { m }, None)
        } else {
            let strides = [stride(r, r_batched), stride(l, l_batched), (m * n) as i64];
            (m, Some((batch as i32, strides)))
        };
        Self {
            op_r: op_of(r.transposed),
            op_l: op_of(l.transposed),
            dims: [n as i32, rows as i32, k as i32],
            ld: [r.ld as i32, l.ld as i32, n as i32],
            batched,
            ty: data_type(dtype).expect("checked by supports()"),
            compute,
            product: [m, k, n, batch],
            dtype,
        }
    }

    /// Enqueues the GEMM on `handle`'s stream. `ptrs` are lhs, rhs and out.
    ///
    /// # Safety
    /// The pointers must be live device buffers of the shapes, strides and dtype this was
    /// made from, and `handle`'s stream must be ordered after the work that writes them and
    /// before the work that reads or reuses them.
    unsafe fn enqueue(
        &self,
        handle: sys::cublasHandle_t,
        [lp, rp, op]: [u64; 3],
    ) -> Result<(), String> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let alpha = (&raw const alpha).cast::<c_void>();
        let beta = (&raw const beta).cast::<c_void>();
        let [n, rows, k] = self.dims;
        let [ldr, ldl, ldo] = self.ld;
        let ty = self.ty;
        let algo = sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        // SAFETY: the caller's contract.
        let status = unsafe {
            match self.batched {
                None => blas::gemm_ex(
                    handle,
                    self.op_r,
                    self.op_l,
                    n,
                    rows,
                    k,
                    alpha,
                    rp as *const c_void,
                    ty,
                    ldr,
                    lp as *const c_void,
                    ty,
                    ldl,
                    beta,
                    op as *mut c_void,
                    ty,
                    ldo,
                    self.compute,
                    algo,
                ),
                Some((batch, [sr, sl, so])) => blas::gemm_strided_batched_ex(
                    handle,
                    self.op_r,
                    self.op_l,
                    n,
                    rows,
                    k,
                    alpha,
                    rp as *const c_void,
                    ty,
                    ldr,
                    sr,
                    lp as *const c_void,
                    ty,
                    ldl,
                    sl,
                    beta,
                    op as *mut c_void,
                    ty,
                    ldo,
                    so,
                    batch,
                    self.compute,
                    algo,
                ),
            }
        };
        status.map_err(|e| {
            let [m, k, n, batch] = self.product;
            format!(
                "cuBLAS GemmEx failed for [{m}×{k}]·[{k}×{n}] ×{batch} ({:?}): {e:?}",
                self.dtype
            )
        })
    }
}

/// `lhs · rhs` on cuBLAS, ordered by the device-side flags, or by host waits once those
/// were refused (see the module docs). Call only when [`supports`] is true.
pub fn matmul(
    lhs: CubeTensor<CudaRuntime>,
    rhs: CubeTensor<CudaRuntime>,
) -> CubeTensor<CudaRuntime> {
    let dtype = lhs.dtype;
    let (ls, rs) = (lhs.shape(), rhs.shape());
    let rank = ls.num_dims();
    let (m, k, n) = (ls[rank - 2], ls[rank - 1], rs[rank - 1]);
    let mut out_dims: Vec<usize> = ls.as_slice()[..rank - 2]
        .iter()
        .zip(&rs.as_slice()[..rank - 2])
        .map(|(&a, &b)| a.max(b))
        .collect();
    let batch: usize = out_dims.iter().product();
    out_dims.extend([m, n]);
    let batched = (
        ls.as_slice()[..rank - 2].iter().any(|&d| d > 1),
        rs.as_slice()[..rank - 2].iter().any(|&d| d > 1),
    );

    let (l, r) = (operand(lhs), operand(rhs));
    let client = l.tensor.client.clone();
    let device = l.tensor.device.clone();
    let out =
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::from(out_dims), dtype);
    let gemm = Gemm::new(&l, &r, [m, k, n], batch, batched, dtype);
    let buffers = [
        l.tensor.handle.clone(),
        r.tensor.handle.clone(),
        out.handle.clone(),
    ];
    if order::FLAGS_REFUSED.load(AtomicOrdering::Relaxed) {
        order::host_synced(&client, device.index, gemm, buffers);
    } else {
        order::flagged(&client, &device, gemm, buffers);
    }
    out
}
