//! The backend-swap flag: `--backend ndarray|wgpu|cuda|cuda-raw` picks, at run time, which
//! monomorphised copy of the generic code runs. Each backend is a cargo feature, because
//! every backend compiled in re-monomorphises the model and trainer.

use std::fmt;
use std::str::FromStr;

use crate::HymbaBackend;
use crate::error::{HymbaError, Result};

/// The backends a binary may be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn's ndarray CPU backend (feature `ndarray`, the default).
    NdArray,
    /// burn's wgpu backend (feature `wgpu`): Vulkan/Metal/DX12 GPUs, or Mesa's lavapipe on a
    /// CPU.
    Wgpu,
    /// burn's CUDA backend (feature `cuda`).
    Cuda,
    /// CUDA without burn's fusion layer (`CubeBackend<CudaRuntime>`, feature `cuda`): every
    /// op is its own kernel. A fallback for burn-fusion 0.21 failures, and a baseline to
    /// measure what fusion buys.
    CudaRaw,
}

impl FromStr for BackendKind {
    type Err = HymbaError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ndarray" | "cpu" => Ok(Self::NdArray),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            "cuda-raw" => Ok(Self::CudaRaw),
            other => Err(HymbaError::UnknownBackend(other.to_string())),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NdArray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
            Self::CudaRaw => "cuda-raw",
        })
    }
}

/// Work that is generic over the backend; [`run_on`] calls it with the chosen one.
pub trait BackendRunner {
    /// What the work returns.
    type Output;
    /// Runs on backend `B`, device `device`.
    fn run<B: HymbaBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `runner` on backend `kind` (device index `device` for CUDA; wgpu takes its default
/// adapter, which is lavapipe on a machine without a GPU). A backend not compiled into this
/// binary is an error naming the cargo feature to enable.
#[allow(unused_variables)]
pub fn run_on<R: BackendRunner>(kind: BackendKind, device: usize, runner: R) -> Result<R::Output> {
    match kind {
        #[cfg(feature = "ndarray")]
        BackendKind::NdArray => Ok(runner.run::<burn::backend::NdArray<f32>>(Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(runner
            .run::<burn::backend::Wgpu<f32, i32>>(burn::backend::wgpu::WgpuDevice::DefaultDevice)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            kernel_cache::enable(device);
            Ok(runner
                .run::<burn::backend::Cuda<f32, i32>>(burn::backend::cuda::CudaDevice::new(device)))
        }
        #[cfg(feature = "cuda")]
        BackendKind::CudaRaw => {
            kernel_cache::enable(device);
            Ok(
                runner.run::<burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>>(
                    burn::backend::cuda::CudaDevice::new(device),
                ),
            )
        }
        #[allow(unreachable_patterns)]
        other => Err(HymbaError::BackendNotCompiled {
            backend: match other {
                BackendKind::NdArray => "ndarray",
                BackendKind::Wgpu => "wgpu",
                BackendKind::Cuda => "cuda",
                BackendKind::CudaRaw => "cuda-raw",
            },
            feature: match other {
                BackendKind::NdArray => "ndarray",
                BackendKind::Wgpu => "wgpu",
                BackendKind::Cuda | BackendKind::CudaRaw => "cuda",
            },
        }),
    }
}

// `HymbaBackend` for the backends above: `NdArray` in `scan/mod.rs` and `softmax/mod.rs`
// (the tensor ops); `burn::backend::{Wgpu, Cuda}` (= `Fusion<CubeBackend<R, ..>>`, any
// element types) through the generic impls in `scan/kernel.rs` and `softmax/kernel.rs`
// (CubeCL kernels) and `scan/fusion.rs` and `softmax/fusion.rs` (custom fusion ops);
// `Autodiff<B, C>` over any of them in `scan/autodiff.rs` and `softmax/autodiff.rs`.

/// A persistent cache of compiled CUDA kernels, on by default.
///
/// burn's fusion turns a Hymba training step into ~2,200 distinct kernels, each compiled by
/// NVRTC the first time it runs: on an H100 host the first step of every run spends about
/// four minutes compiling with the GPU idle. CubeCL can keep the PTX on disk, keyed by a stable
/// hash of the kernel, but leaves that off unless a `cubecl.toml` asks for it. We turn it on
/// so that only the first run on a machine pays, and every later run (a resumed job, the next
/// post-training stage, a benchmark) starts in seconds.
///
/// `HYMBA_KERNEL_CACHE=DIR` moves the cache, `HYMBA_KERNEL_CACHE=off` disables it (read by
/// [`crate::env::kernel_cache`], the one setting the project takes from the environment); a
/// `cubecl.toml` (or `CUBECL_*` variables) that sets `compilation.cache` wins over both. The
/// default place is the user's cache directory (`~/.cache/hymba-rs/cuda-kernels`), one folder
/// per compute capability, since PTX is compiled for one architecture.
#[cfg(feature = "cuda")]
pub mod kernel_cache {
    use std::path::PathBuf;
    use std::sync::{Arc, Once};

    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};

    use crate::env::{self, KernelCache};

    /// Where the cache for CUDA device `device` lives, or `None` when it is disabled.
    pub fn dir(device: usize) -> Option<PathBuf> {
        let root = match env::kernel_cache() {
            KernelCache::Off => return None,
            KernelCache::Dir(dir) => dir,
            KernelCache::Default => env::user_cache_dir()?.join("hymba-rs").join("cuda-kernels"),
        };
        Some(root.join(compute_capability(device).unwrap_or_else(|| "sm_unknown".into())))
    }

    /// `sm_XY` of CUDA device `device`, read through the driver API (`None` without a driver).
    fn compute_capability(device: usize) -> Option<String> {
        use cudarc::driver::{result, sys::CUdevice_attribute as A};
        result::init().ok()?;
        let dev = result::device::get(i32::try_from(device).ok()?).ok()?;
        // SAFETY: `dev` is a valid device handle returned by the driver just above.
        let (major, minor) = unsafe {
            (
                result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                    .ok()?,
                result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                    .ok()?,
            )
        };
        Some(format!("sm_{major}{minor}"))
    }

    /// Installs CubeCL's runtime configuration with the kernel cache on, once per process and
    /// only if nothing has read CubeCL's configuration yet (it cannot change afterwards).
    pub fn enable(device: usize) {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let mut slot = CubeClRuntimeConfig::storage().lock();
            if slot.is_some() {
                return;
            }
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            if config.compilation.cache.is_none()
                && let Some(dir) = dir(device)
            {
                config.compilation.cache = Some(CacheConfig::File(dir));
            }
            *slot = Some(Arc::new(config));
        });
    }
}

/// Tensor memory for runs whose every step has the same shapes (pretraining, packed SFT).
///
/// cubecl's default allocator carves tensors out of large pages ("sliced" pools) and, on
/// every reservation, re-merges the free neighbours of every slice of the pages it visits
/// (`MemoryPage::coalesce`). A hymba-125m training step makes about ten thousand small
/// reservations — each kernel's output, and each launch's shape-and-stride metadata — and a
/// host profile on an H200 put about 60 % of cubecl's device-server thread in those two
/// functions: the thread that enqueues every kernel was the bottleneck, and the GPU sat idle
/// for most of each step. cubecl's persistent pool instead keeps each freed buffer for the
/// next request of exactly its size, a lookup, which steady-shape steps hit every time (the
/// first step allocates). Measured with this guard on an H200 (hymba-125m, bf16, 8 × 2048,
/// two rounds alternating in one call, `bench/results/train_hymba-125m_bf16_b8_{fixed,default}-memory_h200_2026-12-04.json`):
/// 33,578 and 35,536 text tokens/s against 19,514 and 20,769 without, at 57–68 GB of peak
/// device memory instead of 53 GB (exact sizes are never split or merged, so a freed buffer
/// serves only its own size).
///
/// Variable shapes (generation's growing caches, DPO's length buckets) would keep every size
/// they ever used, so the mode is scoped: [`FixedShapeMemory::enter`] switches the calling
/// thread's stream of a CUDA device to it and dropping the guard switches back and frees the
/// unused buffers. Other backends ignore it. Whether to enter it is the caller's choice:
/// hymba-train does for runs of steady shapes unless its run config says
/// `cuda_memory = "pooled"` (cubecl's default allocator everywhere).
pub struct FixedShapeMemory {
    #[cfg(feature = "cuda")]
    client: Option<cubecl::client::ComputeClient<cubecl::cuda::CudaRuntime>>,
}

impl FixedShapeMemory {
    /// Puts `device`'s allocations from this thread into the exact-size pool until the guard
    /// is dropped (a no-op but on CUDA).
    #[allow(unused_variables)]
    pub fn enter<B: burn::tensor::backend::Backend>(device: &B::Device) -> Self {
        #[cfg(feature = "cuda")]
        {
            use cubecl::MemoryAllocationMode;
            use cubecl::client::ComputeClient;
            use cubecl::cuda::{CudaDevice, CudaRuntime};

            let cuda = (device as &dyn std::any::Any).downcast_ref::<CudaDevice>();
            let client = cuda.map(|device| {
                let client = ComputeClient::<CudaRuntime>::load(device);
                // SAFETY: the mode only changes which pool serves later reservations of this
                // thread's stream; buffers already handed out stay valid. What cubecl warns
                // about (memory kept for sizes never requested again) is why the guard
                // switches back and cleans up.
                unsafe { client.allocation_mode(MemoryAllocationMode::Persistent) };
                client
            });
            Self { client }
        }
        #[cfg(not(feature = "cuda"))]
        Self {}
    }
}

impl Drop for FixedShapeMemory {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if let Some(client) = &self.client {
            // SAFETY: as in `enter`.
            unsafe { client.allocation_mode(cubecl::MemoryAllocationMode::Auto) };
            client.memory_cleanup();
        }
    }
}
