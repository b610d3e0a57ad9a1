//! # hymba
//!
//! NVIDIA's Hymba (arXiv 2411.13676) on burn: every layer runs attention heads and SSM
//! (Mamba) heads **in parallel** on one input projection, 128 learned **meta tokens** are
//! prepended to every sequence, neighbouring layers share one **KV cache**, and every layer
//! but the first, middle and last uses **sliding-window attention**.
//!
//! Where each idea lives:
//!
//! | paper | module |
//! |---|---|
//! | config, presets, layer plan (global/SWA, KV groups) | [`config`] |
//! | meta tokens | [`meta_tokens`] |
//! | attention heads: GQA, SWA + meta mask (a rule the masked softmax evaluates) | [`attention`], [`softmax`], [`rope`] |
//! | SSM heads (Mamba-1) and the selective scan | [`ssm`], [`scan`] |
//! | hybrid head: split → both branches → β-norm → average → out_proj | [`mixer`] |
//! | decoder layer, FFN | [`layer`], [`ffn`] |
//! | model, tied LM head, loss | [`model`] |
//! | KV sharing + SWA cache, decode | [`cache`], [`generate`] |
//! | backend flag | [`backend`] |
//! | the environment variables read (the kernel cache's place) | [`env`] |
//! | HF checkpoints: `config.json` + safetensors in and out | [`weights`] |
//! | HF side files: `tokenizer_config.json`, `generation_config.json` | [`hf`] |
//!
//! The model is generic over `B: HymbaBackend` — a burn `Backend` with five extensions, the
//! selective scan ([`scan::ScanBackend`]: CubeCL kernels on GPU backends), the matmul of
//! every projection ([`matmul::MatmulBackend`]: cuBLAS on CUDA), the attention heads'
//! masked softmax ([`softmax::AttentionBackend`]: one CubeCL kernel each way on GPU
//! backends), the RMS norm ([`norm::NormBackend`]) and the SSM heads' causal conv + SiLU
//! ([`conv::ConvBackend`]; both CubeCL kernels on GPU backends) — and is written once for
//! CPU, wgpu and CUDA.

pub mod attention;
pub mod backend;
pub mod cache;
pub mod config;
pub mod conv;
#[cfg(feature = "cube")]
pub(crate) mod cube_common;
pub mod env;
pub mod error;
pub mod ffn;
pub mod generate;
pub mod hf;
pub mod layer;
pub mod linear;
pub mod matmul;
pub mod meta_tokens;
pub mod mixer;
pub mod model;
pub mod norm;
pub mod params;
pub mod precision;
pub mod roadmap;
pub mod rope;
pub mod scan;
pub mod score;
pub mod softmax;
pub mod ssm;
pub mod weights;

pub use backend::{BackendKind, BackendRunner, FixedShapeMemory, run_on};
pub use cache::HymbaCache;
pub use config::{HymbaConfig, MixerKind};
pub use conv::ConvBackend;
pub use error::{HymbaError, Result};
pub use generate::{GenerationConfig, generate};
pub use matmul::MatmulBackend;
pub use model::Hymba;
pub use norm::NormBackend;
pub use scan::ScanBackend;
pub use softmax::AttentionBackend;

/// What the model needs from a burn backend: the scan, matmul, masked-softmax, RMS-norm and
/// conv extensions. Implemented for every backend that has all five (ndarray f32/f64, wgpu,
/// CUDA, their `Fusion` and `Autodiff` wrappers).
pub trait HymbaBackend:
    ScanBackend + MatmulBackend + AttentionBackend + NormBackend + ConvBackend
{
}

impl<B: ScanBackend + MatmulBackend + AttentionBackend + NormBackend + ConvBackend> HymbaBackend
    for B
{
}
pub use weights::{SaveDtype, SaveOptions, hf_tensor_specs, load_pretrained, save_pretrained};
