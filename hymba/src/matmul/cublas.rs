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
//! (`CUBLAS_COMPUTE_32F`) unless `HYMBA_TF32=1` allows TF32 (what burn's own CUDA matmul
//! does).
//!
//! # Ordering
//! cubecl 0.10 does not expose the CUDA stream it enqueues on, so each product waits for
//! the device to finish the work queued before it (`client.sync()`), runs on a stream of
//! ours, and waits for the GEMM before returning. That costs a few tens of µs per call and
//! is why tiny products stay on burn's kernel.
//!
//! `HYMBA_MATMUL=burn` turns the whole path off (burn's kernel everywhere), for comparisons.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::OnceLock;

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::{result as blas, sys};
use cudarc::driver::{result as driver, sys as driver_sys};

/// Products with fewer multiply-adds than this stay on burn's kernel (the host syncs of
/// this path would dominate).
pub const MIN_MACS: usize = 1 << 22;

/// Whether cuBLAS can be used: `HYMBA_MATMUL` is not `burn` and the library loads.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let wanted = std::env::var("HYMBA_MATMUL").map_or(true, |v| v != "burn");
        // SAFETY: only tries to open the shared library.
        wanted && unsafe { sys::is_culib_present() }
    })
}

fn tf32_allowed() -> bool {
    static TF32: OnceLock<bool> = OnceLock::new();
    *TF32.get_or_init(|| std::env::var("HYMBA_TF32").is_ok_and(|v| v == "1"))
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
    // TFLOP/s at 17,408 × 32,001 × 1,600), so such products stay on burn's kernel.
    let align = 16 / lhs.dtype.size();
    if [m, n, k].iter().any(|&d| d % align != 0) {
        return false;
    }
    let fits = [m, n, k, batch].iter().all(|&x| x < i32::MAX as usize / 2);
    batch_ok && fits && m.saturating_mul(n).saturating_mul(k).saturating_mul(batch) >= MIN_MACS
}

thread_local! {
    /// One cuBLAS handle and one stream per (host thread, device).
    static HANDLES: RefCell<HashMap<usize, (sys::cublasHandle_t, driver_sys::CUstream)>> =
        RefCell::new(HashMap::new());
}

/// Makes device `index`'s primary context (the one cubecl uses) current and returns this
/// thread's cuBLAS handle and stream for it.
fn handle(index: usize) -> (sys::cublasHandle_t, driver_sys::CUstream) {
    let fail = |what: &str, e: &dyn std::fmt::Debug| -> ! {
        panic!("cuBLAS matmul on CUDA device {index}: {what} failed: {e:?}")
    };
    // SAFETY: plain driver calls; cubecl has initialised the driver and retains the same
    // primary context, so retaining it again only bumps its reference count.
    unsafe {
        driver::init().unwrap_or_else(|e| fail("cuInit", &e));
        let dev = driver::device::get(index as i32).unwrap_or_else(|e| fail("cuDeviceGet", &e));
        let ctx = driver::primary_ctx::retain(dev)
            .unwrap_or_else(|e| fail("cuDevicePrimaryCtxRetain", &e));
        driver::ctx::set_current(ctx).unwrap_or_else(|e| fail("cuCtxSetCurrent", &e));
    }
    HANDLES.with(|h| {
        *h.borrow_mut().entry(index).or_insert_with(|| {
            let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
                .unwrap_or_else(|e| fail("cuStreamCreate", &e));
            let handle = blas::create_handle().unwrap_or_else(|e| fail("cublasCreate", &e));
            // SAFETY: both were just created on the current context.
            unsafe { blas::set_stream(handle, stream as sys::cudaStream_t) }
                .unwrap_or_else(|e| fail("cublasSetStream", &e));
            (handle, stream)
        })
    })
}

/// `lhs · rhs` on cuBLAS. Call only when [`supports`] is true.
pub fn matmul(
    lhs: CubeTensor<CudaRuntime>,
    rhs: CubeTensor<CudaRuntime>,
) -> CubeTensor<CudaRuntime> {
    let dtype = lhs.dtype;
    let ty = data_type(dtype).expect("checked by supports()");
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
    let l_batched = ls.as_slice()[..rank - 2].iter().any(|&d| d > 1);
    let r_batched = rs.as_slice()[..rank - 2].iter().any(|&d| d > 1);

    let (l, r) = (operand(lhs), operand(rhs));
    let client = l.tensor.client.clone();
    let device = l.tensor.device.clone();
    let out =
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::from(out_dims), dtype);

    // Everything queued before this product must be done: cuBLAS runs on its own stream.
    if let Err(e) = cubecl::future::block_on(client.sync()) {
        panic!("cuBLAS matmul: device sync failed: {e:?}");
    }
    let resource = |t: &CubeTensor<CudaRuntime>| {
        client
            .get_resource(t.handle.clone())
            .unwrap_or_else(|e| panic!("cuBLAS matmul: buffer lookup failed: {e:?}"))
    };
    let (lr, rr, or) = (resource(&l.tensor), resource(&r.tensor), resource(&out));
    let (lp, rp, op) = (lr.resource().ptr, rr.resource().ptr, or.resource().ptr);

    let (handle, stream) = handle(device.index);
    let op_of = |t: bool| {
        if t {
            sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let compute = if dtype == DType::F32 && !tf32_allowed() {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    } else if dtype == DType::F32 {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    let alpha = &alpha as *const f32 as *const c_void;
    let beta = &beta as *const f32 as *const c_void;
    // A broadcast weight against a batch of row-major rows: fold the batch into the rows.
    let fold =
        !r_batched && l_batched && !l.transposed && batch_stride(&l.tensor) == Some(m * l.ld);
    let status = unsafe {
        // SAFETY: the pointers are live cubecl allocations (pinned by the resources held
        // above) of the shapes, strides and dtype described; all work on them is finished
        // (sync above) and the GEMM is waited for below, before anything else can use them.
        if batch == 1 || fold {
            let rows = if fold { batch * m } else { m };
            blas::gemm_ex(
                handle,
                op_of(r.transposed),
                op_of(l.transposed),
                n as i32,
                rows as i32,
                k as i32,
                alpha,
                rp as *const c_void,
                ty,
                r.ld as i32,
                lp as *const c_void,
                ty,
                l.ld as i32,
                beta,
                op as *mut c_void,
                ty,
                n as i32,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        } else {
            let stride = |o: &Operand, batched: bool| {
                if batched {
                    batch_stride(&o.tensor).expect("operand() makes batches collapsible") as i64
                } else {
                    0
                }
            };
            blas::gemm_strided_batched_ex(
                handle,
                op_of(r.transposed),
                op_of(l.transposed),
                n as i32,
                m as i32,
                k as i32,
                alpha,
                rp as *const c_void,
                ty,
                r.ld as i32,
                stride(&r, r_batched),
                lp as *const c_void,
                ty,
                l.ld as i32,
                stride(&l, l_batched),
                beta,
                op as *mut c_void,
                ty,
                n as i32,
                (m * n) as i64,
                batch as i32,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
    };
    if let Err(e) = status {
        panic!("cuBLAS GemmEx failed for [{m}×{k}]·[{k}×{n}] ×{batch} ({dtype:?}): {e:?}");
    }
    // SAFETY: our own stream, created above.
    if let Err(e) = unsafe { driver::stream::synchronize(stream) } {
        panic!("cuBLAS matmul: stream sync failed: {e:?}");
    }
    drop((lr, rr, or));
    out
}
