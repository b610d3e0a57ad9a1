//! What the two CubeCL scan designs ([`super::warp`] for CUDA, [`super::tiled`] for every
//! other device) share: their launch inputs and outputs, the device checks that choose
//! between them, the source fingerprint that keys the kernel cache, and the `#[cube]`
//! per-step helpers (softplus, the gate, chunk loads and stores).
//!
//! This module imports nothing from its siblings; the kernels and the dispatcher
//! ([`super::cube`]) import it.

use burn::tensor::TensorMetadata;
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;

use crate::cube_common::fnv1a;

/// A fingerprint of the scan kernels' source, passed to every scan kernel as a comptime
/// value. CubeCL's persistent kernel cache ([`crate::backend`]) keys a kernel by its type
/// name and comptime values only, so without it a changed kernel of the same name would be
/// served from a cache filled by an older build (this happened: an H100 run of a rewritten
/// kernel timed the cached previous version).
pub const SOURCE: u64 = fnv1a(
    concat!(
        include_str!("launch.rs"),
        include_str!("lanes.rs"),
        include_str!("tiled.rs"),
        include_str!("warp.rs")
    )
    .as_bytes(),
);

/// The plane (warp) width the warp kernels are written for: CUDA's warp.
pub const PLANE: usize = 32;

/// Whether `client`'s device has plane operations with planes of exactly [`PLANE`] units
/// (CUDA; not lavapipe, which has none, nor devices whose planes are 64 or 16 wide).
pub fn has_planes_of_32<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    let props = client.properties();
    let hw = &props.hardware;
    props.features.plane.contains(cubecl::features::Plane::Ops)
        && hw.plane_size_min as usize == PLANE
        && hw.plane_size_max as usize == PLANE
}

/// Whether `client`'s device adds f32 atomically (the warp backward adds dB and dC so).
pub fn adds_f32_atomically<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    use cubecl::features::AtomicUsage;
    use cubecl::ir::{ElemType, FloatKind, StorageType, Type};
    client
        .properties()
        .atomic_type_usage(Type::new(StorageType::Atomic(ElemType::Float(
            FloatKind::F32,
        ))))
        .contains(AtomicUsage::Add)
}

/// Steps per vector access of the warp kernels: the largest of `items` (at most 8), 4, 2
/// that divides `items` and that every tensor allows, else 1. A tensor allows `w` when it
/// lives on CUDA (cubecl's vectors of 8 are CUDA structs; WGSL has none wider than 4), its
/// time stride is 1, its length, batch and channel strides are multiples of `w`, and its
/// buffer offset is aligned to `w` elements — so that every access is one aligned vector
/// either wholly inside the sequence or wholly past it.
pub fn vector_width<R: CubeRuntime>(tensors: &[&CubeTensor<R>], items: usize) -> usize {
    let Some(first) = tensors.first() else {
        return 1;
    };
    if R::name(&first.client) != "cuda" {
        return 1;
    }
    let fits = |w: usize, t: &CubeTensor<R>| {
        let strides = t.meta.strides();
        let len = t.shape().dims::<3>()[2];
        let bytes = w * t.dtype.size();
        strides.len() == 3
            && strides[2] == 1
            && len.is_multiple_of(w)
            && strides[0].is_multiple_of(w)
            && strides[1].is_multiple_of(w)
            && (t.handle.offset_start.unwrap_or(0) as usize).is_multiple_of(bytes)
    };
    [items.min(8), 4, 2]
        .into_iter()
        .find(|&w| items.is_multiple_of(w) && tensors.iter().all(|t| fits(w, t)))
        .unwrap_or(1)
}

/// Inputs of a launch, already in the kernels' dtypes (large tensors in the storage dtype,
/// A, D, bias and states in f32).
pub struct Launch<R: CubeRuntime> {
    /// `[b, d, T]`
    pub u: CubeTensor<R>,
    /// `[b, d, T]`, before bias and softplus.
    pub delta: CubeTensor<R>,
    /// `[b, d, T]`, the gate.
    pub z: CubeTensor<R>,
    /// `[b, S, T]`
    pub bm: CubeTensor<R>,
    /// `[b, S, T]`
    pub cm: CubeTensor<R>,
    /// `[d, S]`, f32.
    pub a: CubeTensor<R>,
    /// `[d]`, f32: the D skip.
    pub dskip: CubeTensor<R>,
    /// `[d]`, f32: Δ's bias.
    pub bias: CubeTensor<R>,
    /// The initial state `[b, d, S]` (f32), or any f32 tensor (unused) when `has_h0` is false.
    pub h0: CubeTensor<R>,
    /// Whether `h0` is a real initial state.
    pub has_h0: bool,
}

/// Outputs of a backward launch, before the sums over cubes and batch
/// ([`super::cube`] finishes them with tensor ops).
pub struct BackwardOut<R: CubeRuntime> {
    /// ∂L/∂u, `[b, d, T]`.
    pub du: CubeTensor<R>,
    /// ∂L/∂delta, `[b, d, T]`.
    pub ddelta: CubeTensor<R>,
    /// ∂L/∂z, `[b, d, T]`.
    pub dz: CubeTensor<R>,
    /// `[batch · groups, 2S, T]`: dB | dC summed over each cube's channels.
    pub d_bc: CubeTensor<R>,
    /// Cubes per batch row of `d_bc` (1 when the kernel summed over channels itself).
    pub groups: usize,
    /// `[batch, d, 2S + 2]`: dA | d initial_state | dD | d delta_bias per channel.
    pub d_params: CubeTensor<R>,
}

/// The per-step helpers of both kernel families.
// `div_ceil` is not a cube function.
#[allow(clippy::manual_div_ceil)]
pub(crate) mod cube {
    use cubecl::prelude::*;

    /// `softplus(x)` with the reference's `x > 20 ? x : log1p(eˣ)` rule.
    #[cube]
    pub fn softplus(x: f32) -> f32 {
        let mut r = x;
        if x <= 20.0 {
            r = f32::log1p(f32::exp(x));
        }
        r
    }

    /// The logistic function.
    #[cube]
    pub fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + f32::exp(-x))
    }

    /// Loads `items` consecutive steps of a `[b, c, T]` row from `t_first` (`base` = the
    /// element offset of step 0) into `out` as f32, zero past the sequence, `N` steps per
    /// access. With `N > 1` the row's time stride is 1 and `N` divides the offsets and the
    /// length ([`super::vector_width`]), so a vector is wholly inside or wholly past the sequence.
    #[cube]
    pub(crate) fn load_steps<F: Float, N: Size>(
        x: &Tensor<Vector<F, N>>,
        base: usize,
        t_first: usize,
        len: usize,
        out: &mut Array<f32>,
        #[comptime] items: usize,
    ) {
        let vec = x.vector_size();
        let stride = x.stride(2);
        #[unroll]
        for j in 0..comptime!(items / vec) {
            let t = t_first + j * vec;
            if t < len {
                let v = x[(base + t * stride) / vec];
                #[unroll]
                for i in 0..vec {
                    out[j * vec + i] = f32::cast_from(v[i]);
                }
            } else {
                #[unroll]
                for i in 0..vec {
                    out[j * vec + i] = 0.0;
                }
            }
        }
    }

    /// Loads `items` steps of delta from `t_first` as [`load_steps`] and turns them into
    /// `Δ = softplus(delta + bias)` (0 past the sequence: the identity step); returns their
    /// sum (a unit's decay product over its steps is `exp(A·ΣΔ)`).
    #[cube]
    pub(crate) fn load_dt<F: Float, N: Size>(
        delta: &Tensor<Vector<F, N>>,
        base: usize,
        t_first: usize,
        len: usize,
        bias: f32,
        dt: &mut Array<f32>,
        #[comptime] items: usize,
    ) -> f32 {
        load_steps::<F, N>(delta, base, t_first, len, dt, items);
        let mut sum = 0.0f32;
        #[unroll]
        for i in 0..items {
            let mut d = 0.0f32;
            if t_first + i < len {
                d = softplus(dt[i] + bias);
            }
            dt[i] = d;
            sum += d;
        }
        sum
    }

    /// The backward's per-step seeds of a chunk, from its z (`zs`) and dy (`gs`): `g` =
    /// ∂L/∂out = dy · silu(z) (y = out · silu(z); 0 past the sequence, where dy loads 0),
    /// `out` = D·u (the gate's input, completed by the state walk), `dus` = g·D, `ddt` = 0.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seed_chunk(
        zs: &Array<f32>,
        gs: &Array<f32>,
        uu: &Array<f32>,
        dv: f32,
        g: &mut Array<f32>,
        out: &mut Array<f32>,
        dus: &mut Array<f32>,
        ddt: &mut Array<f32>,
        #[comptime] items: usize,
    ) {
        #[unroll]
        for i in 0..items {
            let zz = zs[i];
            g[i] = gs[i] * zz * sigmoid(zz);
            out[i] = dv * uu[i];
            dus[i] = g[i] * dv;
            ddt[i] = 0.0;
        }
    }

    /// The backward's last pass over a chunk, from its delta (`ds`), z (`zs`) and dy (`gs`):
    /// `ddt` (∂L/∂Δ) becomes ∂L/∂delta through the softplus (identity above 20, as the
    /// forward's rule) and `out` (the gate's input) becomes dz; returns the chunk's
    /// contributions `(Σ ∂L/∂delta, Σ g·u)` to d(delta_bias) and dD over steps inside the
    /// sequence.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_chunk(
        ds: &Array<f32>,
        zs: &Array<f32>,
        gs: &Array<f32>,
        g: &Array<f32>,
        uu: &Array<f32>,
        bias: f32,
        ddt: &mut Array<f32>,
        out: &mut Array<f32>,
        t_first: usize,
        len: usize,
        #[comptime] items: usize,
    ) -> (f32, f32) {
        let mut d_bias = 0.0f32;
        let mut d_d = 0.0f32;
        #[unroll]
        for i in 0..items {
            let x = ds[i] + bias;
            let mut dx = ddt[i];
            if x <= 20.0 {
                dx = ddt[i] * sigmoid(x);
            }
            let zz = zs[i];
            let sz = sigmoid(zz);
            let dzv = gs[i] * out[i] * sz * (1.0 + zz * (1.0 - sz));
            if t_first + i < len {
                d_bias += dx;
                d_d += g[i] * uu[i];
            }
            ddt[i] = dx;
            out[i] = dzv;
        }
        (d_bias, d_d)
    }

    /// Stores `items` consecutive f32 steps from `t_first` into a `[b, c, T]` row in its
    /// dtype, `N` steps per access, skipping steps past the sequence; the counterpart of
    /// [`load_steps`], under the same conditions.
    #[cube]
    pub(crate) fn store_steps<F: Float, N: Size>(
        x: &mut Tensor<Vector<F, N>>,
        base: usize,
        t_first: usize,
        len: usize,
        vals: &Array<f32>,
        #[comptime] items: usize,
    ) {
        let vec = x.vector_size();
        let stride = x.stride(2);
        #[unroll]
        for j in 0..comptime!(items / vec) {
            let t = t_first + j * vec;
            if t < len {
                let mut v = Vector::<F, N>::empty();
                #[unroll]
                for i in 0..vec {
                    v[i] = F::cast_from(vals[j * vec + i]);
                }
                x[(base + t * stride) / vec] = v;
            }
        }
    }
}
