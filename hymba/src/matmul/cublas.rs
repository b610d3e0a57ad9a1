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
//! cubecl 0.10 keeps the CUDA stream it enqueues on private, and cuBLAS runs on a stream of
//! ours, so each product must be ordered against cubecl's work. Two schemes
//! (`HYMBA_MATMUL_ORDER`):
//!
//! - `flags` (the default): ordered on the device through two 32-bit flags in a cubecl
//!   buffer, with no host wait:
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
//!   number), so the counter may wrap. The whole host path runs on cubecl's runner thread
//!   (`ComputeClient::exclusive`), where cubecl's own calls are direct: one round trip per
//!   product. If the PTX cannot be loaded the product falls back to a context-wide sync
//!   and `sync` is used from then on, with one warning.
//! - `sync`: the host waits for the device before the GEMM (`client.sync()`) and for the
//!   GEMM after it, on the calling thread. Each product costs a device bubble and three
//!   blocking buffer lookups on cubecl's runner thread (0.38 ms of host time per product
//!   on the H100 box, `bench matmul --backend cuda-raw`).
//!
//! `HYMBA_MATMUL=burn` turns the whole path off (burn's kernel everywhere), for comparisons.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering as AtomicOrdering};

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::ComputeClient;
use cubecl::cuda::{CudaDevice, CudaRuntime};
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
    /// Device-side flags: no host wait (the default; `HYMBA_MATMUL_ORDER=flags`).
    Flags,
    /// Host syncs before and after each product (`HYMBA_MATMUL_ORDER=sync`).
    Sync,
    /// No ordering at all: wrong results. Exists only so that the ordering test can be
    /// shown to fail (`HYMBA_MATMUL_ORDER=unordered`, honoured in debug builds only).
    #[doc(hidden)]
    Unordered,
}

/// [`set_ordering`]'s choice: 0 none (the environment decides), 1 flags, 2 sync.
static ORDER_OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Overrides `HYMBA_MATMUL_ORDER` for the rest of the process (the ordering test runs the
/// same work both ways and compares).
pub fn set_ordering(order: Ordering) {
    let code = match order {
        Ordering::Flags => 1,
        Ordering::Sync => 2,
        Ordering::Unordered => 0,
    };
    ORDER_OVERRIDE.store(code, AtomicOrdering::Relaxed);
}

/// The ordering in force: [`set_ordering`]'s, else `HYMBA_MATMUL_ORDER` (`flags` or
/// `sync`), else flags.
pub fn ordering() -> Ordering {
    static ORDER: OnceLock<Ordering> = OnceLock::new();
    let env = *ORDER.get_or_init(|| match std::env::var("HYMBA_MATMUL_ORDER").as_deref() {
        Ok("sync") => Ordering::Sync,
        Ok("unordered") if cfg!(debug_assertions) => Ordering::Unordered,
        _ => Ordering::Flags,
    });
    match ORDER_OVERRIDE.load(AtomicOrdering::Relaxed) {
        _ if env == Ordering::Unordered => env,
        1 => Ordering::Flags,
        2 => Ordering::Sync,
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

/// One host thread's cuBLAS state for one device.
struct Lane {
    handle: sys::cublasHandle_t,
    stream: driver_sys::CUstream,
    /// `FLAG_WORDS` zeroed `u32`s, allocated by cubecl (so its kernels can take them);
    /// never dropped, as thread-local destructors may run after cubecl's own.
    flags: ManuallyDrop<CubeTensor<CudaRuntime>>,
    /// Device address of `flags`.
    flags_ptr: u64,
    /// Our stream's flag kernels, or the driver's error if the PTX did not load.
    kernels: Result<FlagKernels, driver::DriverError>,
    /// The last sequence number used.
    seq: u32,
}

thread_local! {
    /// One [`Lane`] per (host thread, device).
    static LANES: RefCell<HashMap<usize, Lane>> = RefCell::new(HashMap::new());
}

/// Runs `f` on this thread's [`Lane`] for `device`, creating the lane on first use. Called
/// on cubecl's runner thread for the device (see [`matmul`]), so there is one lane per
/// device in practice.
fn with_lane<T>(
    client: &ComputeClient<CudaRuntime>,
    device: &CudaDevice,
    f: impl FnOnce(&mut Lane) -> T,
) -> T {
    let index = device.index;
    let fail = |what: &str, e: &dyn std::fmt::Debug| -> ! {
        panic!("cuBLAS matmul on CUDA device {index}: {what} failed: {e:?}")
    };
    LANES.with(|lanes| {
        let mut lanes = lanes.borrow_mut();
        let lane = lanes.entry(index).or_insert_with(|| {
            // SAFETY: plain driver calls. cubecl has initialised the driver and retains the
            // device's primary context, and its runner thread already has it current:
            // retaining it once more and making it current changes nothing for cubecl and
            // makes the stream and handle below belong to the context cubecl allocates in.
            unsafe {
                driver::init().unwrap_or_else(|e| fail("cuInit", &e));
                let dev =
                    driver::device::get(index as i32).unwrap_or_else(|e| fail("cuDeviceGet", &e));
                let ctx = driver::primary_ctx::retain(dev)
                    .unwrap_or_else(|e| fail("cuDevicePrimaryCtxRetain", &e));
                driver::ctx::set_current(ctx).unwrap_or_else(|e| fail("cuCtxSetCurrent", &e));
            }
            let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
                .unwrap_or_else(|e| fail("cuStreamCreate", &e));
            let handle = blas::create_handle().unwrap_or_else(|e| fail("cublasCreate", &e));
            // SAFETY: both were just created on the current context.
            unsafe { blas::set_stream(handle, stream as sys::cudaStream_t) }
                .unwrap_or_else(|e| fail("cublasSetStream", &e));
            let buffer = client.create_from_slice(&[0u8; FLAG_WORDS * 4]);
            let flags = CubeTensor::new_contiguous(
                client.clone(),
                device.clone(),
                Shape::new([FLAG_WORDS]),
                buffer,
                DType::U32,
            );
            let flags_ptr = client
                .get_resource(flags.handle.clone())
                .unwrap_or_else(|e| fail("flag buffer lookup", &e))
                .resource()
                .ptr;
            Lane {
                handle,
                stream,
                flags: ManuallyDrop::new(flags),
                flags_ptr,
                kernels: FlagKernels::load(),
                seq: 0,
            }
        });
        f(lane)
    })
}

impl Lane {
    /// Step 1 and 2 of the flag ordering: our stream will wait for the work cubecl has
    /// queued so far. Returns the sequence number, or the driver's error if our flag
    /// kernels are unusable (then the caller syncs instead).
    fn wait_for_cubecl(
        &mut self,
        client: &ComputeClient<CudaRuntime>,
    ) -> Result<u32, driver::DriverError> {
        let kernels = self.kernels?;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        // SAFETY: a 1×1 launch that stores to index READY of a FLAG_WORDS-long buffer.
        unsafe {
            cube::raise_flag::launch_unchecked::<CudaRuntime>(
                client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                (*self.flags).clone().into_tensor_arg(),
                seq,
                READY,
            );
        }
        let ready = self.flags_ptr + (READY * 4) as u64;
        FlagKernels::launch(kernels.wait, self.stream, ready, seq).map(|()| seq)
    }

    /// Step 2's end and step 3: our stream raises `done` after the GEMM, and cubecl's
    /// stream waits for it.
    fn release_cubecl(&mut self, client: &ComputeClient<CudaRuntime>, seq: u32) {
        let done = self.flags_ptr + (DONE * 4) as u64;
        let stored = self
            .kernels
            .and_then(|k| FlagKernels::launch(k.store, self.stream, done, seq));
        if let Err(e) = stored {
            // The wait kernel of the same module launched a moment ago: this is a broken
            // context, and cubecl's stream would spin forever on `done`.
            panic!("cuBLAS matmul: the flag store failed after a successful wait: {e:?}");
        }
        // SAFETY: a 1×1 launch that loads index DONE of a FLAG_WORDS-long buffer.
        unsafe {
            cube::wait_flag::launch_unchecked::<CudaRuntime>(
                client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                (*self.flags).clone().into_tensor_arg(),
                seq,
                DONE,
            );
        }
    }
}

/// `lhs · rhs` on cuBLAS. Call only when [`supports`] is true.
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
    let l_batched = ls.as_slice()[..rank - 2].iter().any(|&d| d > 1);
    let r_batched = rs.as_slice()[..rank - 2].iter().any(|&d| d > 1);

    // The host path below makes three buffer lookups, each a blocking round trip to cubecl's
    // runner thread for the device (≈ 0.13 ms each on the H100 box: 0.38 ms of host time per
    // product, more than a 17,408 × 1,600 × 3,200 bf16 GEMM takes). With the flag ordering
    // it runs on that thread, where they are direct calls; the sync ordering blocks on the
    // device, which must not happen on the runner thread, so it stays on the caller's.
    let client = lhs.client.clone();
    let order = match ordering() {
        Ordering::Flags if FLAGS_REFUSED.load(AtomicOrdering::Relaxed) => Ordering::Sync,
        order => order,
    };
    let run = move || {
        let (l, r) = (operand(lhs), operand(rhs));
        let client = l.tensor.client.clone();
        let device = l.tensor.device.clone();
        let out = empty_device_contiguous_dtype(
            client.clone(),
            device.clone(),
            Shape::from(out_dims),
            dtype,
        );
        enqueue(
            &client,
            &device,
            &l,
            &r,
            &out,
            [m, k, n],
            batch,
            (l_batched, r_batched),
            order,
        );
        out
    };
    if order != Ordering::Flags {
        return run();
    }
    client
        .exclusive(run)
        .unwrap_or_else(|e| panic!("cuBLAS matmul: cubecl's runner thread failed: {e:?}"))
}

/// Orders and enqueues the GEMM `out = l · r` (see the module docs, "Ordering").
#[allow(clippy::too_many_arguments)]
fn enqueue(
    client: &ComputeClient<CudaRuntime>,
    device: &CudaDevice,
    l: &Operand,
    r: &Operand,
    out: &CubeTensor<CudaRuntime>,
    [m, k, n]: [usize; 3],
    batch: usize,
    batched: (bool, bool),
    order: Ordering,
) {
    let dtype = out.dtype;
    let resource = |t: &CubeTensor<CudaRuntime>| {
        client
            .get_resource(t.handle.clone())
            .unwrap_or_else(|e| panic!("cuBLAS matmul: buffer lookup failed: {e:?}"))
    };
    // `get_resource` makes this thread's cubecl stream wait for any other stream that
    // wrote the buffers, and it returns once everything before it is enqueued.
    let (lr, rr, or) = (resource(&l.tensor), resource(&r.tensor), resource(out));
    let (lp, rp, op) = (lr.resource().ptr, rr.resource().ptr, or.resource().ptr);

    with_lane(client, device, |lane| {
        let seq = if order == Ordering::Flags {
            match lane.wait_for_cubecl(client) {
                Ok(seq) => Some(seq),
                Err(e) => {
                    if !FLAGS_REFUSED.swap(true, AtomicOrdering::Relaxed) {
                        // Once per process: every later product waits on the host, which
                        // can cost much of a step's time, and the user should know why.
                        eprintln!(
                            "warning: cuBLAS matmul: the flag kernels could not be \
                             loaded or launched ({e:?}); each product now synchronises \
                             the device"
                        );
                    }
                    // On the runner thread: `client.sync()` would wait on itself. Everything
                    // cubecl has queued is already submitted, so a context-wide sync orders
                    // it.
                    if let Err(e) = driver::ctx::synchronize() {
                        panic!("cuBLAS matmul: context sync failed: {e:?}");
                    }
                    None
                }
            }
        } else {
            None
        };
        let ordered = order != Ordering::Unordered;
        if order == Ordering::Sync {
            // Everything queued before this product must be done: cuBLAS runs on its own
            // stream.
            if let Err(e) = cubecl::future::block_on(client.sync()) {
                panic!("cuBLAS matmul: device sync failed: {e:?}");
            }
        }
        gemm(
            lane.handle,
            l,
            r,
            [m, k, n],
            batch,
            batched,
            [lp, rp, op],
            dtype,
        );
        match seq {
            Some(seq) => lane.release_cubecl(client, seq),
            // SAFETY: our own stream, created with the lane.
            None if ordered => {
                if let Err(e) = unsafe { driver::stream::synchronize(lane.stream) } {
                    panic!("cuBLAS matmul: stream sync failed: {e:?}");
                }
            }
            None => {}
        }
    });
    drop((lr, rr, or));
}

/// Enqueues `O = L · R` on `handle`'s stream. `ptrs` are lhs, rhs and out.
#[allow(clippy::too_many_arguments)]
fn gemm(
    handle: sys::cublasHandle_t,
    l: &Operand,
    r: &Operand,
    [m, k, n]: [usize; 3],
    batch: usize,
    (l_batched, r_batched): (bool, bool),
    [lp, rp, op]: [u64; 3],
    dtype: DType,
) {
    let ty = data_type(dtype).expect("checked by supports()");
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
        // SAFETY: the pointers are live cubecl allocations (pinned by the caller's resources)
        // of the shapes, strides and dtype described; the stream this runs on waits for the
        // work that writes them, and cubecl's stream waits for this (see the module docs).
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
                stride(r, r_batched),
                lp as *const c_void,
                ty,
                l.ld as i32,
                stride(l, l_batched),
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
}
