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
//! cubecl 0.10 keeps the CUDA streams it enqueues on private, so each product must be
//! ordered against cubecl's work. Three schemes (`HYMBA_MATMUL_ORDER`):
//!
//! - `flags` (the default): the GEMM runs on a stream of ours, ordered on the device through
//!   two 32-bit flags in a cubecl buffer, with no host wait:
//!   1. a one-thread cubecl kernel on cubecl's stream stores the call's sequence number in
//!      `ready` — it runs only once everything queued before the product is done;
//!   2. a one-thread kernel of ours on our stream spins until `ready ≥ seq`, then the GEMM
//!      runs, then another one-thread kernel stores `seq` in `done` (release order at GPU
//!      scope, so the GEMM's writes are visible before the flag is);
//!   3. a second one-thread cubecl kernel on cubecl's stream spins until `done ≥ seq`, so
//!      whatever cubecl queues after the product (including reuse of the inputs' memory,
//!      which its stream-ordered pool allows once they are dropped) waits for the GEMM.
//!
//!   Our two kernels are a few lines of PTX (`FLAG_PTX`), loaded once per device by the
//!   driver's JIT. Through session 12, step 2 used the driver's stream memory operations
//!   (`cuStreamWaitValue32` / `cuStreamWriteValue32`), but the driver of session 12's H200
//!   machines (580.159.04) refused the wait on the flag's address with
//!   `CUDA_ERROR_INVALID_VALUE`, so every product synchronised the host. cubecl's buffers
//!   come from a stream-ordered pool (`cuMemAllocAsync`), which may be why (not verified);
//!   a kernel takes any device address. The comparisons are cyclic (`seen − seq` as a signed
//!   number), so the counter may wrap. Each cubecl stream has flags of its own. The three
//!   steps run inside `ComputeClient::exclusive` on cubecl's device thread, where cubecl's
//!   own calls are direct: one round trip per product. If the PTX cannot be loaded the
//!   product waits on the host instead and `sync` is used from then on, with one warning.
//!   The four one-thread kernels are a quarter of a hymba-125m training step's ≈ 11,000
//!   launches (651 products; `bench/results/trace_train_125m_b8_bf16_fixed_s15_h200.json`),
//!   and their launches a large share of the host work that bounds such a step.
//! - `stream` (opt-in; **not yet run on a GPU**: no device was lent in session 16): the GEMM
//!   is enqueued on cubecl's own stream, which orders it like any cubecl kernel. The stream
//!   is found once per cubecl stream by watching one one-thread cubecl launch through CUPTI
//!   (`launch_watch`). Each product is then a task queued for cubecl's device thread
//!   (`DeviceHandle::submit`): it looks the buffers' addresses up on cubecl's server, which
//!   also makes the stream wait for any other cubecl stream that made them, and enqueues the
//!   GEMM between cubecl's own launches. No extra kernel, and the caller does not wait.
//!   Where CUPTI is missing or taken (a profiler), `flags` runs instead, with one note.
//!   `bash bench/gpu_session.sh s16` checks it against host syncs and times the trainer both
//!   ways.
//! - `sync`: the host waits for the device before the GEMM (`client.sync()`) and for the
//!   GEMM after it, on the calling thread. Each product costs a device bubble and three
//!   blocking buffer lookups on cubecl's runner thread (0.38 ms of host time per product
//!   on the H100 box, `bench matmul --backend cuda-raw`).
//!
//! A failure of a product queued on cubecl's device thread (`stream`: a cuBLAS error) has
//! no caller to return to: it is recorded, and the next product on any thread panics with it.
//!
//! `HYMBA_MATMUL=burn` turns the whole path off (burn's kernel everywhere), for comparisons.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, OnceLock};

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::ComputeClient;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::device::Device;
use cubecl::device_handle::DeviceHandle;
use cubecl::server::{ComputeServer, Handle};
use cubecl::stream_id::StreamId;
use cubecl::{CubeCount, CubeDim};
use cudarc::cublas::{result as blas, sys};
use cudarc::driver::{result as driver, sys as driver_sys};

/// The multiple that every dimension of a product must be for [`supports`] to take it in
/// any dtype: cuBLAS's tensor-core kernels want 16-byte rows, 8 values of bf16/f16 (4 of
/// f32, for which 8 is also a multiple). What `MatmulBackend::matmul_dim_multiple` reports
/// on CUDA, so that the LM head can pad its vocabulary to it.
pub const DIM_MULTIPLE: usize = 8;

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
    // TFLOP/s at 17,408 × 32,001 × 1,600), so such products stay on burn's kernel. Padding
    // only the leading dimensions does not help: with operands copied to a 32,008 pitch
    // and the output written pitched, hymba-125m's LM-head products ran at 91, 127 and 148
    // TFLOP/s on an H200 (forward, dX, dW; burn's kernel: 205, 219, 190;
    // `bench/results/matmul_125m_pitched_s13_h200.json`): the dimension itself decides.
    let align = 16 / lhs.dtype.size();
    if [m, n, k].iter().any(|&d| d % align != 0) {
        return false;
    }
    let fits = [m, n, k, batch].iter().all(|&x| x < i32::MAX as usize / 2);
    batch_ok && fits && m.saturating_mul(n).saturating_mul(k).saturating_mul(batch) >= MIN_MACS
}

/// How a product is ordered against cubecl's stream (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ordering {
    /// On cubecl's own CUDA stream, found once per stream through CUPTI; the flag ordering
    /// where it cannot be found (`HYMBA_MATMUL_ORDER=stream`).
    Stream,
    /// Device-side flags on a stream of ours: no host wait (the default;
    /// `HYMBA_MATMUL_ORDER=flags`).
    Flags,
    /// Host syncs before and after each product (`HYMBA_MATMUL_ORDER=sync`).
    Sync,
    /// No ordering at all: wrong results. Exists only so that the ordering test can be
    /// shown to fail (`HYMBA_MATMUL_ORDER=unordered`, honoured in debug builds only).
    #[doc(hidden)]
    Unordered,
}

/// [`set_ordering`]'s choice: 0 none (the environment decides), 1 flags, 2 sync, 3 stream.
static ORDER_OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Overrides `HYMBA_MATMUL_ORDER` for the rest of the process (the ordering test runs the
/// same work several ways and compares).
pub fn set_ordering(order: Ordering) {
    let code = match order {
        Ordering::Flags => 1,
        Ordering::Sync => 2,
        Ordering::Stream => 3,
        Ordering::Unordered => 0,
    };
    ORDER_OVERRIDE.store(code, AtomicOrdering::Relaxed);
}

/// The ordering in force: [`set_ordering`]'s, else `HYMBA_MATMUL_ORDER` (`flags`, `stream`
/// or `sync`), else flags.
pub fn ordering() -> Ordering {
    static ORDER: OnceLock<Ordering> = OnceLock::new();
    let env = *ORDER.get_or_init(|| match std::env::var("HYMBA_MATMUL_ORDER").as_deref() {
        Ok("stream") => Ordering::Stream,
        Ok("sync") => Ordering::Sync,
        Ok("unordered") if cfg!(debug_assertions) => Ordering::Unordered,
        _ => Ordering::Flags,
    });
    match ORDER_OVERRIDE.load(AtomicOrdering::Relaxed) {
        _ if env == Ordering::Unordered => env,
        1 => Ordering::Flags,
        2 => Ordering::Sync,
        3 => Ordering::Stream,
        _ => env,
    }
}

/// Set once the flag kernels have failed to load or launch: every later product syncs
/// instead.
static FLAGS_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether the flag ordering has fallen back to host syncs in this process (its kernels
/// could not be loaded or launched; a warning said so). The ordering test checks it, so
/// that it cannot pass by comparing host syncs with host syncs.
pub fn flags_refused() -> bool {
    FLAGS_REFUSED.load(AtomicOrdering::Relaxed)
}

/// Index of the flag cubecl's stream raises before the GEMM.
const READY: usize = 0;
/// Index of the flag our stream raises after the GEMM (another 32-byte sector than READY).
const DONE: usize = 8;
/// `u32`s in the flag buffer.
const FLAG_WORDS: usize = 16;

mod cube {
    use cubecl::prelude::*;

    /// Raises `flags[slot]` to `seq`: runs once the work queued before it on cubecl's stream
    /// is done.
    #[cube(launch_unchecked)]
    pub fn raise_flag(flags: &mut Tensor<Atomic<u32>>, seq: u32, #[comptime] slot: usize) {
        flags[slot].store(seq);
    }

    /// Spins until `flags[slot] ≥ seq` (cyclically, as `CU_STREAM_WAIT_VALUE_GEQ`), holding
    /// back everything queued after it on cubecl's stream.
    #[cube(launch_unchecked)]
    pub fn wait_flag(flags: &Tensor<Atomic<u32>>, seq: u32, #[comptime] slot: usize) {
        // An atomic load is an L2 access (`atomicAdd(p, 0)`) on every round: never cached.
        let mut seen = flags[slot].load();
        while seen - seq >= 0x8000_0000u32 {
            seen = flags[slot].load();
        }
    }
}

/// The two flag kernels of our stream (see the module docs, "Ordering"), as PTX for the
/// driver to JIT (sm_70 and up: `ld.acquire`/`st.release` need it). Both take the flag's
/// device address and the sequence number and run as one thread.
///
/// - `hymba_flag_wait` spins until `*flag − seq ≥ 0` (signed, so the counter may wrap),
///   reading at GPU scope with acquire order: the GEMM after it sees what was written
///   before the flag was raised.
/// - `hymba_flag_store` stores `seq` with release order at GPU scope: everything the
///   kernels before it on the stream wrote is visible before the flag is.
const FLAG_PTX: &std::ffi::CStr = c".version 7.0
.target sm_70
.address_size 64

.visible .entry hymba_flag_wait(.param .u64 flag, .param .u32 seq)
{
    .reg .pred %p;
    .reg .b32 %r<4>;
    .reg .b64 %rd<3>;
    ld.param.u64 %rd1, [flag];
    ld.param.u32 %r1, [seq];
    cvta.to.global.u64 %rd2, %rd1;
SPIN:
    ld.acquire.gpu.global.u32 %r2, [%rd2];
    sub.s32 %r3, %r2, %r1;
    setp.lt.s32 %p, %r3, 0;
    @%p bra SPIN;
    ret;
}

.visible .entry hymba_flag_store(.param .u64 flag, .param .u32 seq)
{
    .reg .b32 %r<2>;
    .reg .b64 %rd<3>;
    ld.param.u64 %rd1, [flag];
    ld.param.u32 %r1, [seq];
    cvta.to.global.u64 %rd2, %rd1;
    st.release.gpu.global.u32 [%rd2], %r1;
    ret;
}
";

/// [`FLAG_PTX`]'s kernels, loaded on the device's primary context.
#[derive(Clone, Copy)]
struct FlagKernels {
    wait: driver_sys::CUfunction,
    store: driver_sys::CUfunction,
}

impl FlagKernels {
    /// Loads [`FLAG_PTX`] on the current context.
    fn load() -> Result<Self, driver::DriverError> {
        // SAFETY: a NUL-terminated PTX image; the module is never unloaded (the functions
        // live as long as the process's lanes).
        unsafe {
            let module = driver::module::load_data(FLAG_PTX.as_ptr().cast())?;
            let wait = driver::module::get_function(module, c"hymba_flag_wait".into())?;
            let store = driver::module::get_function(module, c"hymba_flag_store".into())?;
            Ok(Self { wait, store })
        }
    }

    /// Enqueues `f(flag, seq)` as one thread on `stream`.
    fn launch(
        f: driver_sys::CUfunction,
        stream: driver_sys::CUstream,
        flag: u64,
        seq: u32,
    ) -> Result<(), driver::DriverError> {
        let (mut flag, mut seq) = (flag, seq);
        let mut params = [
            (&raw mut flag).cast::<c_void>(),
            (&raw mut seq).cast::<c_void>(),
        ];
        // SAFETY: `f` is one of FLAG_PTX's kernels, whose parameters are a u64 and a u32;
        // the driver copies them before returning.
        unsafe { driver::launch_kernel(f, (1, 1, 1), (1, 1, 1), 0, stream, &mut params) }
    }
}

/// cubecl's CUDA server: the state its device thread owns. A product on cubecl's stream runs
/// there as a queued task ([`DeviceHandle::submit`]) with direct access to it.
type Server = <CudaRuntime as cubecl::Runtime>::Server;

/// Byte offset of the flag cubecl's stream raises before the GEMM.
const READY_OFFSET: u64 = (READY * 4) as u64;
/// Byte offset of the flag our stream raises after the GEMM.
const DONE_OFFSET: u64 = (DONE * 4) as u64;

/// Set once a product queued on cubecl's device thread has failed there: the next
/// product on any thread panics with [`DEVICE_ERROR`].
static DEVICE_FAILED: AtomicBool = AtomicBool::new(false);
/// The first such failure's message.
static DEVICE_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Panics with a device-side failure recorded by an earlier product, on the thread that asks
/// for the next product: the device thread that hit it has no caller to report to.
fn report_device_error() {
    if DEVICE_FAILED.load(AtomicOrdering::Relaxed) {
        let error = DEVICE_ERROR.lock().ok().and_then(|e| e.clone());
        panic!(
            "cuBLAS matmul: an earlier product failed on cubecl's device thread: {}",
            error.unwrap_or_default()
        );
    }
}

/// Records a device-side failure for [`report_device_error`].
fn record_device_error(error: String) {
    if let Ok(mut slot) = DEVICE_ERROR.lock() {
        slot.get_or_insert(error);
    }
    DEVICE_FAILED.store(true, AtomicOrdering::Relaxed);
}

/// Marks the flag ordering unusable for the rest of the process, with one warning: every
/// later product waits on the host, which can cost much of a step's time, and the user
/// should know why.
fn refuse_flags(error: &driver::DriverError) {
    if !FLAGS_REFUSED.swap(true, AtomicOrdering::Relaxed) {
        eprintln!(
            "warning: cuBLAS matmul: the flag kernels could not be loaded or launched \
             ({error:?}); each product now synchronises the device"
        );
    }
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
        let compute = if dtype == DType::F32 && tf32_allowed() {
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

/// One host thread's cuBLAS state for one device: a stream of ours, a cuBLAS handle on it
/// and the flag kernels, and a handle on each cubecl stream used. Products on cubecl's
/// stream and flagged ones use the lane of cubecl's device thread, products ordered by host
/// syncs that of the calling thread.
struct Lane {
    handle: sys::cublasHandle_t,
    stream: driver_sys::CUstream,
    /// Our stream's flag kernels, or the driver's error if the PTX did not load.
    kernels: Result<FlagKernels, driver::DriverError>,
    /// A cuBLAS handle per cubecl stream (address → handle): one handle per stream keeps
    /// cuBLAS's per-stream workspace from being reset by `cublasSetStream` on every product.
    on_cubecl: HashMap<usize, sys::cublasHandle_t>,
}

thread_local! {
    /// One [`Lane`] per (host thread, device index).
    static LANES: RefCell<HashMap<usize, Lane>> = RefCell::new(HashMap::new());
}

/// Runs `f` on this thread's [`Lane`] for CUDA device `index`, creating the lane on first
/// use; the error says which driver or cuBLAS call failed.
fn with_lane<T>(index: usize, f: impl FnOnce(&mut Lane) -> T) -> Result<T, String> {
    LANES.with(|lanes| {
        let mut lanes = lanes.borrow_mut();
        let lane = match lanes.entry(index) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Lane::create(index)?),
        };
        Ok(f(lane))
    })
}

impl Lane {
    fn create(index: usize) -> Result<Self, String> {
        let failed = |what: &'static str| {
            move |e: &dyn std::fmt::Debug| format!("{what} failed on CUDA device {index}: {e:?}")
        };
        // SAFETY: plain driver calls. cubecl has initialised the driver and retains the
        // device's primary context: retaining it once more and making it current changes
        // nothing for cubecl and makes the stream and handle below belong to the context
        // cubecl allocates in.
        unsafe {
            driver::init().map_err(|e| failed("cuInit")(&e))?;
            let dev = driver::device::get(index as i32).map_err(|e| failed("cuDeviceGet")(&e))?;
            let ctx = driver::primary_ctx::retain(dev)
                .map_err(|e| failed("cuDevicePrimaryCtxRetain")(&e))?;
            driver::ctx::set_current(ctx).map_err(|e| failed("cuCtxSetCurrent")(&e))?;
        }
        let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
            .map_err(|e| failed("cuStreamCreate")(&e))?;
        let handle = blas::create_handle().map_err(|e| failed("cublasCreate")(&e))?;
        // SAFETY: both were just created on the current context.
        unsafe { blas::set_stream(handle, stream as sys::cudaStream_t) }
            .map_err(|e| failed("cublasSetStream")(&e))?;
        Ok(Self {
            handle,
            stream,
            kernels: FlagKernels::load(),
            on_cubecl: HashMap::new(),
        })
    }

    /// The cuBLAS handle that enqueues on cubecl's `stream`, made on first use.
    fn handle_on(&mut self, stream: driver_sys::CUstream) -> Result<sys::cublasHandle_t, String> {
        if let Some(&handle) = self.on_cubecl.get(&(stream as usize)) {
            return Ok(handle);
        }
        let handle = blas::create_handle().map_err(|e| format!("cublasCreate failed: {e:?}"))?;
        // SAFETY: a live handle and cubecl's live stream of the current context.
        unsafe { blas::set_stream(handle, stream as sys::cudaStream_t) }
            .map_err(|e| format!("cublasSetStream failed: {e:?}"))?;
        self.on_cubecl.insert(stream as usize, handle);
        Ok(handle)
    }

    /// Step 2 of the flag ordering, on cubecl's device thread right after cubecl's stream
    /// got the kernel that raises `ready` to `seq`: our stream waits for `ready ≥ seq`, runs
    /// the GEMM and raises `done` to `seq`. `Ok(false)` if our flag kernels did not load: the
    /// product was then ordered by waiting on the host (and the flag ordering is refused from
    /// then on), and `done` was not raised.
    fn ordered_gemm(
        &self,
        flags: u64,
        seq: u32,
        gemm: &Gemm,
        ptrs: [u64; 3],
    ) -> Result<bool, String> {
        let launch_failed = |e: driver::DriverError| format!("flag kernel launch failed: {e:?}");
        let kernels = match self.kernels {
            Ok(k) => k,
            Err(e) => {
                refuse_flags(&e);
                return self.host_ordered_gemm(gemm, ptrs).map(|()| false);
            }
        };
        FlagKernels::launch(kernels.wait, self.stream, flags + READY_OFFSET, seq)
            .map_err(launch_failed)?;
        // SAFETY: the buffers are pinned by the caller; our stream now waits for `ready`,
        // and cubecl's stream will wait for `done`.
        unsafe { gemm.enqueue(self.handle, ptrs) }?;
        FlagKernels::launch(kernels.store, self.stream, flags + DONE_OFFSET, seq)
            .map_err(launch_failed)?;
        Ok(true)
    }

    /// The GEMM ordered by host waits, on cubecl's device thread: everything cubecl has
    /// queued is already submitted there, so a context-wide sync orders it.
    fn host_ordered_gemm(&self, gemm: &Gemm, ptrs: [u64; 3]) -> Result<(), String> {
        let sync_failed = |e: driver::DriverError| format!("device sync failed: {e:?}");
        driver::ctx::synchronize().map_err(sync_failed)?;
        // SAFETY: the buffers are pinned by the caller and the device is idle.
        unsafe { gemm.enqueue(self.handle, ptrs) }?;
        // SAFETY: our own stream.
        unsafe { driver::stream::synchronize(self.stream) }.map_err(sync_failed)
    }
}

/// One (device, cubecl stream) pair's `ready` and `done` flags, made by the calling thread
/// on that stream: each cubecl stream raises and waits on flags of its own, in its own
/// order, so products queued on several streams of one device never read each other's
/// sequence numbers.
struct StreamFlags {
    /// `FLAG_WORDS` zeroed `u32`s; never dropped, as thread-local destructors may run after
    /// cubecl's own.
    tensor: ManuallyDrop<CubeTensor<CudaRuntime>>,
    /// The last sequence number used.
    seq: u32,
}

thread_local! {
    /// This thread's [`StreamFlags`] per (device index, cubecl stream).
    static FLAGS: RefCell<HashMap<(usize, StreamId), StreamFlags>> = RefCell::new(HashMap::new());
    /// This thread's handle on each device's cubecl thread whose lane is made.
    static DEVICE_THREADS: RefCell<HashMap<usize, DeviceHandle<Server>>> =
        RefCell::new(HashMap::new());
}

/// A handle on `device`'s cubecl thread, with the thread's lane made: on a calling thread's
/// first product for the device, one blocking call makes it (idempotently), so that a driver
/// or cuBLAS failure panics on the caller instead of on the device thread; after that, a
/// thread-local lookup.
fn device_thread(device: &CudaDevice) -> DeviceHandle<Server> {
    let index = device.index;
    if let Some(handle) = DEVICE_THREADS.with(|threads| threads.borrow().get(&index).cloned()) {
        return handle;
    }
    let handle = DeviceHandle::<Server>::new(device.to_id());
    let made = handle
        .submit_blocking(move |_: &mut Server| with_lane(index, |_| ()))
        .map_err(|e| format!("cubecl's device thread is gone: {e:?}"))
        .and_then(|made| made);
    if let Err(e) = made {
        panic!("cuBLAS matmul: {e}");
    }
    DEVICE_THREADS.with(|threads| threads.borrow_mut().insert(index, handle.clone()));
    handle
}

/// This thread's flags for (`device`, the current cubecl stream) and the product's sequence
/// number.
fn next_flags(
    client: &ComputeClient<CudaRuntime>,
    device: &CudaDevice,
) -> (CubeTensor<CudaRuntime>, u32) {
    FLAGS.with(|flags| {
        let mut flags = flags.borrow_mut();
        let entry = flags
            .entry((device.index, StreamId::current()))
            .or_insert_with(|| {
                let buffer = client.create_from_slice(&[0u8; FLAG_WORDS * 4]);
                let tensor = CubeTensor::new_contiguous(
                    client.clone(),
                    device.clone(),
                    Shape::new([FLAG_WORDS]),
                    buffer,
                    DType::U32,
                );
                StreamFlags {
                    tensor: ManuallyDrop::new(tensor),
                    seq: 0,
                }
            });
        entry.seq = entry.seq.wrapping_add(1);
        ((*entry.tensor).clone(), entry.seq)
    })
}

/// Step 1 (`slot` READY): cubecl's stream raises `flags[slot]` to `seq` once everything
/// queued before is done. Also the launch that [`cubecl_stream`] watches (`slot` MARKER).
fn raise_flag(
    client: &ComputeClient<CudaRuntime>,
    flags: &CubeTensor<CudaRuntime>,
    seq: u32,
    slot: usize,
) {
    debug_assert!(slot < FLAG_WORDS);
    // SAFETY: a 1×1 launch that stores to index `slot` < FLAG_WORDS of a FLAG_WORDS-long
    // buffer.
    unsafe {
        cube::raise_flag::launch_unchecked::<CudaRuntime>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(1),
            flags.clone().into_tensor_arg(),
            seq,
            slot,
        );
    }
}

/// Step 3: cubecl's stream holds back what is queued after the product until `done ≥ seq`.
fn wait_done(client: &ComputeClient<CudaRuntime>, flags: &CubeTensor<CudaRuntime>, seq: u32) {
    // SAFETY: a 1×1 launch that loads index DONE of a FLAG_WORDS-long buffer.
    unsafe {
        cube::wait_flag::launch_unchecked::<CudaRuntime>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(1),
            flags.clone().into_tensor_arg(),
            seq,
            DONE,
        );
    }
}

/// How the products of this process so far were ordered (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderedProducts {
    /// Enqueued on cubecl's own stream (`stream`).
    pub on_cubecl_stream: usize,
    /// Ordered by the device-side flags (`flags`).
    pub flagged: usize,
}

static ON_CUBECL_STREAM: AtomicUsize = AtomicUsize::new(0);
static FLAGGED: AtomicUsize = AtomicUsize::new(0);

/// The ordered products of this process so far (the ordering tests check which route ran).
pub fn ordered_products() -> OrderedProducts {
    OrderedProducts {
        on_cubecl_stream: ON_CUBECL_STREAM.load(AtomicOrdering::Relaxed),
        flagged: FLAGGED.load(AtomicOrdering::Relaxed),
    }
}

/// Index of the flag word that the stream-finding launch writes (unused otherwise).
const MARKER: usize = 4;

thread_local! {
    /// cubecl's CUDA stream per (device index, cubecl stream id), as found by
    /// [`cubecl_stream`]; `None` where it could not be.
    static CUBECL_STREAMS: RefCell<HashMap<(usize, StreamId), Option<usize>>> =
        RefCell::new(HashMap::new());
}

/// The CUDA stream cubecl enqueues the current cubecl stream's work for `device` on: a
/// one-thread cubecl launch made inside `ComputeClient::exclusive` (on cubecl's device
/// thread, with the caller's stream id) is watched through CUPTI
/// ([`super::launch_watch`]). Once per (thread, device, stream); `None`, with one warning per
/// process, where CUPTI cannot tell.
fn cubecl_stream(
    client: &ComputeClient<CudaRuntime>,
    device: &CudaDevice,
) -> Option<driver_sys::CUstream> {
    let key = (device.index, StreamId::current());
    if let Some(found) = CUBECL_STREAMS.with(|s| s.borrow().get(&key).copied()) {
        return found.map(|s| s as driver_sys::CUstream);
    }
    let (flags, _) = next_flags(client, device);
    let marker_client = client.clone();
    let found = client
        .exclusive(move || {
            super::launch_watch::watch_launch(|| raise_flag(&marker_client, &flags, 0, MARKER))
                .map(|s| s as usize)
        })
        .map_err(|e| format!("cubecl's device thread failed: {e:?}"))
        .and_then(|found| found);
    let found = match found {
        Ok(stream) => Some(stream),
        Err(e) => {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, AtomicOrdering::Relaxed) {
                eprintln!(
                    "note: cuBLAS matmul: cubecl's CUDA stream was not found ({e}); products \
                     are ordered by flag kernels instead"
                );
            }
            None
        }
    };
    CUBECL_STREAMS.with(|s| s.borrow_mut().insert(key, found));
    found.map(|s| s as driver_sys::CUstream)
}

/// The product on cubecl's own `stream`: a task for cubecl's device thread that looks the
/// buffers up on cubecl's server (which makes the stream wait for any other cubecl stream
/// that made them) and enqueues the GEMM right there, between cubecl's own launches. The
/// stream orders it: nothing else is needed, and nothing waits.
fn on_cubecl_stream(
    device: &CudaDevice,
    stream: driver_sys::CUstream,
    gemm: Gemm,
    buffers: [Handle; 3],
) {
    let index = device.index;
    let stream = stream as usize;
    device_thread(device).submit(move |server: &mut Server| {
        let stream_id = StreamId::current();
        let mut pinned = Vec::with_capacity(3);
        let mut ptrs = [0u64; 3];
        for (ptr, buffer) in ptrs.iter_mut().zip(buffers) {
            match server.get_resource(buffer.binding(), stream_id) {
                Ok(resource) => {
                    *ptr = resource.resource().ptr;
                    pinned.push(resource);
                }
                Err(e) => return record_device_error(format!("buffer lookup failed: {e:?}")),
            }
        }
        let done = with_lane(index, |lane| {
            let handle = lane.handle_on(stream as driver_sys::CUstream)?;
            // SAFETY: the buffers are pinned above, and cubecl's stream, which the handle
            // enqueues on, orders the GEMM after their writers and before their readers.
            unsafe { gemm.enqueue(handle, ptrs) }
        });
        if let Err(e) = done.and_then(|d| d) {
            record_device_error(e);
        }
        drop(pinned);
    });
    ON_CUBECL_STREAM.fetch_add(1, AtomicOrdering::Relaxed);
}

/// `lhs · rhs` on cuBLAS, ordered as [`ordering`] says (see the module docs). Call only when
/// [`supports`] is true.
pub fn matmul(
    lhs: CubeTensor<CudaRuntime>,
    rhs: CubeTensor<CudaRuntime>,
) -> CubeTensor<CudaRuntime> {
    report_device_error();
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
    let order = match ordering() {
        Ordering::Stream => match cubecl_stream(&client, &device) {
            Some(stream) => {
                on_cubecl_stream(&device, stream, gemm, buffers);
                return out;
            }
            None => Ordering::Flags,
        },
        order => order,
    };
    match order {
        Ordering::Flags if !FLAGS_REFUSED.load(AtomicOrdering::Relaxed) => {
            flagged(&client, &device, gemm, buffers);
        }
        Ordering::Stream | Ordering::Flags | Ordering::Sync => {
            host_synced(&client, device.index, gemm, buffers, true)
        }
        Ordering::Unordered => host_synced(&client, device.index, gemm, buffers, false),
    }
    out
}

/// The flag ordering of one product (see the module docs).
fn flagged(
    client: &ComputeClient<CudaRuntime>,
    device: &CudaDevice,
    gemm: Gemm,
    buffers: [Handle; 3],
) {
    let index = device.index;
    let (flags, seq) = next_flags(client, device);
    let client = client.clone();
    let done = client.clone().exclusive(move || {
        let resource = |h: &Handle| {
            client
                .get_resource(h.clone())
                .map_err(|e| format!("buffer lookup failed: {e:?}"))
        };
        // Looking the buffers up makes this cubecl stream wait for any other stream that made
        // them; `ready` is raised after that.
        let pinned = buffers
            .iter()
            .chain([&flags.handle])
            .map(resource)
            .collect::<Result<Vec<_>, _>>()?;
        let [l, r, o, f] = [0, 1, 2, 3].map(|i| pinned[i].resource().ptr);
        raise_flag(&client, &flags, seq, READY);
        let flagged = with_lane(index, |lane| lane.ordered_gemm(f, seq, &gemm, [l, r, o]))??;
        // Step 3 only where step 2 raises `done` (not after a host-ordered fallback).
        if flagged {
            wait_done(&client, &flags, seq);
        }
        Ok::<(), String>(())
    });
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("cuBLAS matmul: {e}"),
        Err(e) => panic!("cuBLAS matmul: cubecl's device thread failed: {e:?}"),
    }
    FLAGGED.fetch_add(1, AtomicOrdering::Relaxed);
}

/// The product with host waits (`HYMBA_MATMUL_ORDER=sync`, or the flag kernels refused), on
/// the calling thread: the device finishes everything queued before the GEMM, and the GEMM
/// before anything after it. With `ordered` false (the ordering test's negative control)
/// neither wait happens.
fn host_synced(
    client: &ComputeClient<CudaRuntime>,
    index: usize,
    gemm: Gemm,
    buffers: [Handle; 3],
    ordered: bool,
) {
    // `get_resource` makes this thread's cubecl stream wait for any other stream that
    // wrote the buffers, and it returns once everything before it is enqueued.
    let pinned = buffers.map(|h| {
        client
            .get_resource(h)
            .unwrap_or_else(|e| panic!("cuBLAS matmul: buffer lookup failed: {e:?}"))
    });
    let ptrs = [0, 1, 2].map(|i| pinned[i].resource().ptr);
    if ordered && let Err(e) = cubecl::future::block_on(client.sync()) {
        panic!("cuBLAS matmul: device sync failed: {e:?}");
    }
    let done = with_lane(index, |lane| {
        // SAFETY: the buffers are pinned above, the device is idle, and our stream is
        // synchronised below before anything else can use them.
        unsafe { gemm.enqueue(lane.handle, ptrs) }?;
        if ordered {
            // SAFETY: our own stream, created with the lane.
            unsafe { driver::stream::synchronize(lane.stream) }
                .map_err(|e| format!("stream sync failed: {e:?}"))?;
        }
        Ok::<(), String>(())
    });
    if let Err(e) = done.and_then(|d| d) {
        panic!("cuBLAS matmul: {e}");
    }
    drop(pinned);
}
