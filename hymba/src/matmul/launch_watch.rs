//! Which CUDA stream a kernel launch went to, seen through CUPTI's callback API.
//!
//! cubecl 0.10 keeps the CUDA streams it enqueues on private, so cuBLAS cannot be told to
//! run on them, and each product has to be ordered against cubecl's stream from the outside
//! (`super::cublas`, "Ordering"). The driver's profiling interface, CUPTI, calls a
//! subscriber at the entry of every driver call, on the calling thread, with the call's
//! arguments: subscribing for the moment of one cubecl launch made on cubecl's device
//! thread hands over that launch's `hStream`. [`watch_launch`] does that and nothing else:
//! it subscribes, enables the two `cuLaunchKernel` callbacks, runs the launch, and
//! unsubscribes before it returns.
//!
//! CUPTI ships with the CUDA toolkit and is opened at run time (`HYMBA_CUPTI`, else
//! `libcupti.so` on the loader's path, else under `CUDA_HOME`, `CUDA_PATH` and
//! `/usr/local/cuda`). CUPTI takes one subscriber per process, so under a profiler (Nsight,
//! or `bench/cupti_trace.c`) subscribing fails; every failure is an `Err` for the caller
//! to fall back on.

use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::sync::{Mutex, OnceLock};

use cudarc::driver::sys::CUstream;

/// `CUPTI_SUCCESS`.
const SUCCESS: i32 = 0;
/// `CUPTI_CB_DOMAIN_DRIVER_API`.
const DOMAIN_DRIVER_API: u32 = 1;
/// `CUPTI_API_ENTER`.
const API_ENTER: u32 = 0;
/// `CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel` and `…_ptsz` (`cupti_driver_cbid.h`); both take
/// [`LaunchKernelParams`].
const LAUNCH_KERNEL_CBIDS: [u32; 2] = [307, 442];

/// `CUpti_CallbackData` (`cupti_callbacks.h`), the part read here.
#[repr(C)]
struct CallbackData {
    callback_site: u32,
    _function_name: *const c_char,
    function_params: *const c_void,
}

/// `cuLaunchKernel_params` (`generated_cuda_meta.h`), the part read here.
#[repr(C)]
struct LaunchKernelParams {
    _f: *mut c_void,
    grid: [u32; 3],
    block: [u32; 3],
    _shared_mem_bytes: u32,
    stream: CUstream,
}

type Subscriber = *mut c_void;
type Callback = unsafe extern "C" fn(*mut c_void, u32, u32, *const c_void);

type SubscribeFn = unsafe extern "C" fn(*mut Subscriber, Callback, *mut c_void) -> i32;
type EnableCallbackFn = unsafe extern "C" fn(u32, Subscriber, u32, u32) -> i32;
type UnsubscribeFn = unsafe extern "C" fn(Subscriber) -> i32;

/// The three CUPTI entry points used, from the opened library.
struct Cupti {
    subscribe: SubscribeFn,
    enable_callback: EnableCallbackFn,
    unsubscribe: UnsubscribeFn,
    /// Keeps the functions above loaded.
    _library: libloading::Library,
}

// SAFETY: plain function pointers into a library that stays loaded; CUPTI's API is
// thread-safe.
unsafe impl Send for Cupti {}
unsafe impl Sync for Cupti {}

/// Where CUPTI is looked for, in order.
fn candidates() -> Vec<String> {
    let mut paths: Vec<String> = std::env::var("HYMBA_CUPTI").into_iter().collect();
    paths.extend(["libcupti.so", "libcupti.so.13", "libcupti.so.12"].map(String::from));
    let roots = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(|v| std::env::var(v).ok())
        .chain(["/usr/local/cuda".to_string()]);
    for root in roots {
        for dir in ["lib64", "extras/CUPTI/lib64", "lib"] {
            paths.push(format!("{root}/{dir}/libcupti.so"));
        }
    }
    paths
}

impl Cupti {
    fn open() -> Result<Self, String> {
        let mut tried = Vec::new();
        for path in candidates() {
            // SAFETY: CUPTI's initialisers only register with the already loaded driver.
            match unsafe { libloading::Library::new(&path) } {
                Ok(library) => return Self::from_library(library),
                Err(_) => tried.push(path),
            }
        }
        Err(format!(
            "CUPTI not found (tried {}; HYMBA_CUPTI=path names it)",
            tried.join(", ")
        ))
    }

    fn from_library(library: libloading::Library) -> Result<Self, String> {
        fn symbol<T: Copy>(library: &libloading::Library, name: &str) -> Result<T, String> {
            // SAFETY: the caller names a CUPTI function whose C signature `T` matches
            // (`cupti_callbacks.h`); the library outlives the copy (both live in `Cupti`).
            unsafe { library.get::<T>(name.as_bytes()) }
                .map(|s| *s)
                .map_err(|e| format!("CUPTI lacks {name}: {e}"))
        }
        Ok(Self {
            subscribe: symbol::<SubscribeFn>(&library, "cuptiSubscribe")?,
            enable_callback: symbol::<EnableCallbackFn>(&library, "cuptiEnableCallback")?,
            unsubscribe: symbol::<UnsubscribeFn>(&library, "cuptiUnsubscribe")?,
            _library: library,
        })
    }
}

/// CUPTI, opened once per process (`Err` says why not).
fn cupti() -> Result<&'static Cupti, String> {
    static CUPTI: OnceLock<Result<Cupti, String>> = OnceLock::new();
    CUPTI
        .get_or_init(Cupti::open)
        .as_ref()
        .map_err(Clone::clone)
}

thread_local! {
    /// Whether this thread is inside [`watch_launch`].
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    /// The streams of the one-thread launches seen meanwhile: the first, and whether another
    /// one differed.
    static SEEN: Cell<(Option<usize>, bool)> = const { Cell::new((None, false)) };
}

/// CUPTI's callback: records the stream of a `cuLaunchKernel` of one thread in one block
/// made on a watching thread.
unsafe extern "C" fn on_driver_call(_: *mut c_void, domain: u32, cbid: u32, data: *const c_void) {
    if domain != DOMAIN_DRIVER_API || !LAUNCH_KERNEL_CBIDS.contains(&cbid) || data.is_null() {
        return;
    }
    if !WATCHING.with(Cell::get) {
        return;
    }
    // SAFETY: for the driver domain, `data` is a `CUpti_CallbackData` whose parameters are
    // the call's, here `cuLaunchKernel_params` (checked by the callback id above).
    let (site, params) = unsafe {
        let data = &*data.cast::<CallbackData>();
        (
            data.callback_site,
            data.function_params.cast::<LaunchKernelParams>(),
        )
    };
    if site != API_ENTER || params.is_null() {
        return;
    }
    // SAFETY: see above.
    let params = unsafe { &*params };
    if params.grid != [1, 1, 1] || params.block != [1, 1, 1] {
        return;
    }
    let stream = params.stream as usize;
    SEEN.with(|seen| {
        let (first, differs) = seen.get();
        seen.set(match first {
            None => (Some(stream), differs),
            Some(s) => (Some(s), differs || s != stream),
        });
    });
}

/// Runs `launch`, which must make exactly one one-thread, one-block `cuLaunchKernel` on this
/// thread, and returns the stream it went to. Not reentrant; calls from several threads are
/// serialised (CUPTI takes one subscriber).
pub fn watch_launch(launch: impl FnOnce()) -> Result<CUstream, String> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let cupti = cupti()?;
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut subscriber: Subscriber = std::ptr::null_mut();
    let check = |what: &str, status: i32| {
        if status == SUCCESS {
            Ok(())
        } else {
            Err(format!("{what} returned CUPTI error {status}"))
        }
    };
    // SAFETY: CUPTI's documented calls with valid arguments; `on_driver_call` matches
    // `CUpti_CallbackFunc`.
    unsafe {
        check(
            "cuptiSubscribe (another CUPTI client, such as a profiler, may hold it)",
            (cupti.subscribe)(&mut subscriber, on_driver_call, std::ptr::null_mut()),
        )?;
    }
    let enabled = LAUNCH_KERNEL_CBIDS.iter().try_for_each(|&cbid| {
        // SAFETY: as above, on the live subscriber.
        check("cuptiEnableCallback", unsafe {
            (cupti.enable_callback)(1, subscriber, DOMAIN_DRIVER_API, cbid)
        })
    });
    SEEN.with(|s| s.set((None, false)));
    if enabled.is_ok() {
        WATCHING.with(|w| w.set(true));
        launch();
        WATCHING.with(|w| w.set(false));
    }
    // SAFETY: the live subscriber; no callback runs after this returns.
    let unsubscribed = check("cuptiUnsubscribe", unsafe {
        (cupti.unsubscribe)(subscriber)
    });
    enabled?;
    unsubscribed?;
    match SEEN.with(Cell::get) {
        (Some(stream), false) => Ok(stream as CUstream),
        (Some(_), true) => Err("one-thread launches went to several streams".into()),
        (None, _) => Err("CUPTI reported no one-thread cuLaunchKernel".into()),
    }
}
