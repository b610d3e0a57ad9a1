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
        BackendKind::Cuda => Ok(runner
            .run::<burn::backend::Cuda<f32, i32>>(burn::backend::cuda::CudaDevice::new(device))),
        #[cfg(feature = "cuda")]
        BackendKind::CudaRaw => Ok(runner.run::<burn_cubecl::CubeBackend<
            cubecl::cuda::CudaRuntime,
            f32,
            i32,
            u8,
        >>(burn::backend::cuda::CudaDevice::new(device))),
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

// `HymbaBackend` for the backends above: `NdArray` in `scan/mod.rs` (the tensor-op reference);
// `burn::backend::{Wgpu, Cuda}` (= `Fusion<CubeBackend<R, ..>>`, any element types) through
// the generic impls in `scan/kernel.rs` (CubeCL kernels) and `scan/fusion.rs` (custom fusion
// op); `Autodiff<B, C>` over any of them in `scan/autodiff.rs`.
