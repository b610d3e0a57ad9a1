//! How a cuBLAS product is ordered against cubecl's work on the device.
//!
//! cubecl 0.10 keeps the CUDA streams it enqueues on private, so each product must be
//! ordered against cubecl's work. The GEMM runs on a stream of ours, ordered on the device
//! through two 32-bit flags in a cubecl buffer, with no host wait:
//!
//! 1. a one-thread cubecl kernel on cubecl's stream stores the call's sequence number in
//!    `ready` — it runs only once everything queued before the product is done;
//! 2. a one-thread kernel of ours on our stream spins until `ready ≥ seq`, then the GEMM
//!    runs, then another one-thread kernel stores `seq` in `done` (release order at GPU
//!    scope, so the GEMM's writes are visible before the flag is);
//! 3. a second one-thread cubecl kernel on cubecl's stream spins until `done ≥ seq`, so
//!    whatever cubecl queues after the product (including reuse of the inputs' memory,
//!    which its stream-ordered pool allows once they are dropped) waits for the GEMM.
//!
//! Our two kernels are a few lines of PTX (`FLAG_PTX`), loaded once per device by the
//! driver's JIT. Step 2 is a kernel rather than the driver's stream memory operations
//! (`cuStreamWaitValue32` / `cuStreamWriteValue32`) because the driver of an H200 machine
//! (580.159.04) refused the wait on the flag's address with `CUDA_ERROR_INVALID_VALUE`;
//! cubecl's buffers come from a stream-ordered pool (`cuMemAllocAsync`), which may be why
//! (not verified); a kernel takes any device address. The comparisons are cyclic
//! (`seen − seq` as a signed number), so the counter may wrap. Each cubecl stream has flags
//! of its own. The three steps run inside `ComputeClient::exclusive` on cubecl's device
//! thread, where cubecl's own calls are direct: one round trip per product. The four
//! one-thread kernels are a quarter of a hymba-125m training step's ≈ 11,000 launches (651
//! products; `bench/results/trace-train_hymba-125m_bf16_b8_fixed-memory_h200_2026-12-04.json`), and their
//! launches a large share of the host work that bounds such a step.
//!
//! If the PTX cannot be loaded, every product from then on waits on the host instead (one
//! warning): the device finishes everything queued before the GEMM (`client.sync()`) and
//! the GEMM before anything after it, a device bubble and three blocking buffer lookups per
//! product (0.38 ms of host time per product on an H100, `bench matmul --backend cuda-raw`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};

use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::ComputeClient;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::server::Handle;
use cubecl::stream_id::StreamId;
use cubecl::{CubeCount, CubeDim};
use cudarc::cublas::{result as blas, sys};
use cudarc::driver::{result as driver, sys as driver_sys};

use super::Gemm;

/// Set once the flag kernels have failed to load or launch: every later product waits
/// on the host instead.
pub(super) static FLAGS_REFUSED: AtomicBool = AtomicBool::new(false);

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

/// Byte offset of the flag cubecl's stream raises before the GEMM.
const READY_OFFSET: u64 = (READY * 4) as u64;
/// Byte offset of the flag our stream raises after the GEMM.
const DONE_OFFSET: u64 = (DONE * 4) as u64;

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

/// One host thread's cuBLAS state for one device: a stream of ours, a cuBLAS handle on it
/// and the flag kernels. Flagged products use the lane of cubecl's device thread, products
/// ordered by host waits that of the calling thread.
struct Lane {
    handle: sys::cublasHandle_t,
    stream: driver_sys::CUstream,
    /// Our stream's flag kernels, or the driver's error if the PTX did not load.
    kernels: Result<FlagKernels, driver::DriverError>,
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
        })
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
/// queued before is done.
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

/// Products ordered by the device-side flags so far in this process.
static FLAGGED: AtomicUsize = AtomicUsize::new(0);

/// The products of this process so far that the flags ordered (not host waits): the
/// ordering tests check that the route they test ran.
pub fn flagged_products() -> usize {
    FLAGGED.load(AtomicOrdering::Relaxed)
}

/// The flag ordering of one product (see the module docs).
pub(super) fn flagged(
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

/// The product with host waits (once the flag kernels were refused), on the calling
/// thread: the device finishes everything queued before the GEMM, and the GEMM before
/// anything after it.
pub(super) fn host_synced(
    client: &ComputeClient<CudaRuntime>,
    index: usize,
    gemm: Gemm,
    buffers: [Handle; 3],
) {
    // `get_resource` makes this thread's cubecl stream wait for any other stream that
    // wrote the buffers, and it returns once everything before it is enqueued.
    let pinned = buffers.map(|h| {
        client
            .get_resource(h)
            .unwrap_or_else(|e| panic!("cuBLAS matmul: buffer lookup failed: {e:?}"))
    });
    let ptrs = [0, 1, 2].map(|i| pinned[i].resource().ptr);
    if let Err(e) = cubecl::future::block_on(client.sync()) {
        panic!("cuBLAS matmul: device sync failed: {e:?}");
    }
    let done = with_lane(index, |lane| {
        // SAFETY: the buffers are pinned above, the device is idle, and our stream is
        // synchronised below before anything else can use them.
        unsafe { gemm.enqueue(lane.handle, ptrs) }?;
        // SAFETY: our own stream, created with the lane.
        unsafe { driver::stream::synchronize(lane.stream) }
            .map_err(|e| format!("stream sync failed: {e:?}"))
    });
    if let Err(e) = done.and_then(|d| d) {
        panic!("cuBLAS matmul: {e}");
    }
    drop(pinned);
}
