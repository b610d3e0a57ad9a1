//! The selective scan on CubeCL backends (CUDA, wgpu): which kernels run, and the work
//! around them — dtype casts, layouts, output buffers, and the sums over cubes and batch
//! that a backward kernel leaves to tensor ops.
//!
//! Two designs, chosen per call by [`ScanKernel::Auto`]:
//! - [`super::warp`] where the device has planes (warps) of 32 and adds f32 atomically
//!   (CUDA), for up to 32 states: one plane per (batch, channel), time split among its lanes.
//!   It wants time innermost, so the model's transposed views are copied once per call.
//! - [`super::tiled`] elsewhere (lavapipe, GPUs with other plane widths), up to
//!   [`super::tiled::MAX_STATE`] states: one unit per (batch, channel), any layout.
//!
//! Inputs they do not take (more states, another dtype, an empty dimension) run the
//! tensor-op reference. Everything is computed in f32; the large tensors (u, delta, z, B, C,
//! y, dy and the gradients of the first ones) are read and written in their storage dtype
//! (f32, f16, bf16); the small ones (A, D, bias, states) are converted to f32 on the host.
//! Every kernel is compiled with `fast_math = ReducedPrecision | NotNaN | NotInf`: on CUDA
//! that turns `exp` into `__expf` (relative error ~1e-7, well inside the tests' 1e-4); every
//! step of every state evaluates one exponential, so it is the kernels' hottest instruction.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive, s};
use burn_cubecl::kernel::cast;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::ops::permute;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::launch::{BackwardOut, Launch};
use super::reference::selective_scan_reference_primitives;
use super::reference_vjp::selective_scan_reference_backward;
use super::warp::WarpConfig;
use super::{ScanBackend, ScanGrads, ScanPrimitives, tiled, warp};

/// Which kernels run a scan on a CubeCL backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKernel {
    /// The warp kernels where [`warp::usable`] says so, else the tiled ones: the default.
    Auto,
    /// The warp kernels with this configuration (the tiled ones where they are not usable).
    Warp(WarpConfig),
    /// The tiled kernels.
    Tiled,
}

impl ScanKernel {
    /// The kernels named `auto`, `warp` (default configuration) or `tiled`.
    pub fn from_name(name: &str) -> Option<ScanKernel> {
        match name {
            "auto" => Some(ScanKernel::Auto),
            "warp" => Some(ScanKernel::Warp(WarpConfig::default())),
            "tiled" => Some(ScanKernel::Tiled),
            _ => None,
        }
    }

    /// The concrete kernels for `states` states on `client`'s device: `Warp` or `Tiled`.
    pub fn resolve<R: CubeRuntime>(
        self,
        client: &cubecl::client::ComputeClient<R>,
        states: usize,
    ) -> ScanKernel {
        let warp = match self {
            ScanKernel::Tiled => return ScanKernel::Tiled,
            ScanKernel::Auto => WarpConfig::default(),
            ScanKernel::Warp(config) => config,
        };
        if warp::usable(client, states, warp) {
            ScanKernel::Warp(warp)
        } else {
            ScanKernel::Tiled
        }
    }
}

static SELECTED: AtomicU8 = AtomicU8::new(0);

/// Chooses the kernels of every later [`ScanBackend`] call in this process: `hymba-eval bench
/// scan --kernel` compares the designs with it. The model and the trainer never call it.
pub fn select_kernel(kernel: ScanKernel) {
    let code = match kernel {
        ScanKernel::Auto => 0,
        ScanKernel::Warp(_) => 1,
        ScanKernel::Tiled => 2,
    };
    SELECTED.store(code, Ordering::Relaxed);
}

/// The kernels [`select_kernel`] chose ([`ScanKernel::Auto`] unless it was called).
fn selected() -> ScanKernel {
    match SELECTED.load(Ordering::Relaxed) {
        1 => ScanKernel::Warp(WarpConfig::default()),
        2 => ScanKernel::Tiled,
        _ => ScanKernel::Auto,
    }
}

/// A `[b, d, T]` output buffer laid out like `like` (channels innermost when `like` is).
fn alloc_like<R: CubeRuntime>(like: &CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    let [b, d, t] = like.shape().dims::<3>();
    let strides = like.meta.strides();
    let channels_inner = strides[1] < strides[2] && d > 1;
    let shape = if channels_inner { [b, t, d] } else { [b, d, t] };
    let out = empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new(shape),
        dtype,
    );
    if channels_inner {
        permute(out, &[0, 2, 1])
    } else {
        out
    }
}

/// `t` (`[b, ·, T]`) with time innermost: `t` itself when its time stride is 1, else a
/// contiguous copy.
///
/// # Why
/// The warp kernels give each unit consecutive steps of one channel, so with time
/// innermost a plane's loads are one run of memory (and vectors of steps, see
/// [`super::launch::vector_width`]). The model passes transposed views (`[b, T, d]` storage seen
/// as `[b, d, T]`, channels innermost: the layout the tiled kernels want), where the same
/// loads touch one sector per step. A copy reads and writes each element once; the kernels
/// read u, Δ, z, B, C and dy once per state or per sweep.
fn time_inner<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.meta.strides()[2] == 1 {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

fn alloc<R: CubeRuntime>(like: &CubeTensor<R>, shape: &[usize], dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape.to_vec()),
        dtype,
    )
}

fn f32_<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    cast(t, DType::F32)
}

/// Whether the kernels take these inputs (else the reference runs).
fn supported<B: burn::tensor::backend::Backend>(input: &ScanPrimitives<B>) -> bool {
    let states = input.a.shape().dims::<2>()[1];
    let [batch, channels, len] = input.u.shape().dims::<3>();
    (1..=tiled::MAX_STATE).contains(&states)
        && batch > 0
        && channels > 0
        && len > 0
        && matches!(input.u.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// The launch inputs in the kernels' dtypes, with time innermost for the warp kernels (the
/// tiled ones read any layout), and the `[b, d, T]` tensor whose layout outputs take.
fn launch_inputs<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    input: ScanPrimitives<Cube<R, F, I, BT>>,
    warp: bool,
) -> (Launch<R>, CubeTensor<R>) {
    let dtype = input.u.dtype();
    let layout = |t| if warp { time_inner(t) } else { t };
    let big = |t: CubeTensor<R>| layout(cast(t, dtype));
    let a = f32_(input.a);
    let has_h0 = input.initial_state.is_some();
    let h0 = input.initial_state.map(f32_).unwrap_or_else(|| a.clone());
    let z = big(input.z);
    let launch = Launch {
        u: layout(input.u),
        delta: big(input.delta),
        z: z.clone(),
        bm: big(input.b),
        cm: big(input.c),
        a,
        dskip: f32_(input.d),
        bias: f32_(input.delta_bias),
        h0,
        has_h0,
    };
    (launch, z)
}

/// The forward with `kernel` on CubeCL tensors: `(y, last_state)` in u's dtype. The
/// [`ScanBackend`] implementation calls it with the selected kernels; tests call it with
/// each design.
pub fn forward_with<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    input: ScanPrimitives<CubeBackend<R, F, I, BT>>,
    kernel: ScanKernel,
) -> (CubeTensor<R>, CubeTensor<R>) {
    if !supported(&input) {
        return selective_scan_reference_primitives(input);
    }
    let dtype = input.u.dtype();
    let [batch, channels, _] = input.u.shape().dims::<3>();
    let states = input.a.shape().dims::<2>()[1];
    let kernel = kernel.resolve(&input.u.client, states);
    let (launch, z) = launch_inputs(input, matches!(kernel, ScanKernel::Warp(_)));
    let y = alloc_like(&z, dtype);
    let h_last = alloc(&z, &[batch, channels, states], DType::F32);
    match kernel {
        ScanKernel::Warp(config) => warp::forward(launch, &y, &h_last, config),
        _ => tiled::forward(launch, &y, &h_last),
    }
    (y, cast(h_last, dtype))
}

/// The backward with `kernel` on CubeCL tensors, then the sums over cubes and batch; see
/// [`forward_with`].
pub fn backward_with<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    input: ScanPrimitives<CubeBackend<R, F, I, BT>>,
    dy: CubeTensor<R>,
    d_last_state: Option<CubeTensor<R>>,
    kernel: ScanKernel,
) -> ScanGrads<CubeBackend<R, F, I, BT>> {
    if !supported(&input) {
        return selective_scan_reference_backward(input, dy, d_last_state);
    }
    let states = input.a.shape().dims::<2>()[1];
    // The warp kernels' configuration, or the tiled kernels' chunk length.
    let design = match kernel.resolve(&input.u.client, states) {
        ScanKernel::Warp(config) => Ok(config),
        _ => match tiled::backward_chunk(&input.u.client, states) {
            Some(chunk) => Err(chunk),
            None => return selective_scan_reference_backward(input, dy, d_last_state),
        },
    };
    let warp_config = design.ok();
    let dtype = input.u.dtype();
    let (dtypes, h0_dtype) = input_dtypes(&input);
    let (launch, like) = launch_inputs(input, warp_config.is_some());
    let dy = cast(dy, dtype);
    let dy = if warp_config.is_some() {
        time_inner(dy)
    } else {
        dy
    };
    let d_last = d_last_state.map(f32_);
    let alloc_grad = |dt| alloc_like(&like, dt);
    let alloc_buf = |shape: &[usize], dt| alloc(&like, shape, dt);
    let out = match design {
        Ok(config) => warp::backward(launch, dy, d_last, config, alloc_grad, alloc_buf),
        Err(chunk) => tiled::backward(launch, dy, d_last, chunk, alloc_grad, alloc_buf),
    };
    finish_backward(out, dtypes, h0_dtype)
}

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

fn tensor<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: CubeTensor<R>,
) -> Tensor<Cube<R, F, I, BT>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: Tensor<Cube<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    t.into_primitive().tensor()
}

/// The dtypes the gradients go back to: delta, A, B, C, D, z, delta_bias, and the initial
/// state's when there is one (what [`finish_backward`] casts to).
fn input_dtypes<B: burn::tensor::backend::Backend>(
    input: &ScanPrimitives<B>,
) -> ([DType; 7], Option<DType>) {
    let dtypes = [
        input.delta.dtype(),
        input.a.dtype(),
        input.b.dtype(),
        input.c.dtype(),
        input.d.dtype(),
        input.z.dtype(),
        input.delta_bias.dtype(),
    ];
    (dtypes, input.initial_state.as_ref().map(|h| h.dtype()))
}

/// The sums over cubes and batch a backward kernel leaves to tensor ops, and the casts back
/// to the inputs' dtypes (`dtypes`: delta, A, B, C, D, z, delta_bias).
fn finish_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    k: BackwardOut<R>,
    dtypes: [DType; 7],
    h0_dtype: Option<DType>,
) -> ScanGrads<Cube<R, F, I, BT>> {
    let BackwardOut {
        du,
        ddelta,
        dz,
        d_bc,
        groups: blocks,
        d_params,
    } = k;
    let [batch, channels, p] = d_params.shape().dims::<3>();
    let states = (p - 2) / 2;
    let len = d_bc.shape().dims::<3>()[2];
    let [d_delta_t, a_t, b_t, c_t, d_t, z_t, bias_t] = dtypes;
    // [batch·blocks, 2S, T] → Σ over cubes → [batch, 2S, T] = dB | dC. One block per batch
    // row (the plane backward adds over channels itself) is already the sum.
    let bc = tensor::<R, F, I, BT, 3>(d_bc);
    let bc = if blocks == 1 {
        bc
    } else {
        bc.reshape([batch, blocks, 2 * states, len])
            .sum_dim(1)
            .reshape([batch, 2 * states, len])
    };
    let db = bc.clone().slice(s![.., 0..states, ..]);
    let dc = bc.slice(s![.., states..2 * states, ..]);
    // [batch, d, 2S + 2] → Σ over batch, except the initial state's gradient.
    let params = tensor::<R, F, I, BT, 3>(d_params);
    let sums = params
        .clone()
        .sum_dim(0)
        .reshape([channels, 2 * states + 2]);
    let da = sums.clone().slice(s![.., 0..states]);
    let dd = sums.clone().slice(s![.., 2 * states]).reshape([channels]);
    let dbias = sums.slice(s![.., 2 * states + 1]).reshape([channels]);
    let dh0 = h0_dtype.map(|t| prim(params.slice(s![.., .., states..2 * states]).cast(t)));
    ScanPrimitives {
        u: du,
        delta: cast(ddelta, d_delta_t),
        a: prim(da.cast(a_t)),
        b: prim(db.cast(b_t)),
        c: prim(dc.cast(c_t)),
        d: prim(dd.cast(d_t)),
        z: cast(dz, z_t),
        delta_bias: prim(dbias.cast(bias_t)),
        initial_state: dh0,
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ScanBackend
    for CubeBackend<R, F, I, BT>
{
    fn selective_scan(input: ScanPrimitives<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        forward_with(input, selected())
    }

    fn selective_scan_backward(
        input: ScanPrimitives<Self>,
        dy: FloatTensor<Self>,
        d_last_state: Option<FloatTensor<Self>>,
    ) -> ScanGrads<Self> {
        backward_with(input, dy, d_last_state, selected())
    }
}
