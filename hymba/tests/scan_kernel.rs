//! The CubeCL selective-scan kernels (forward, backward, decode step), the attention heads'
//! masked-softmax kernels, the RMS-norm kernels and the SSM conv + SiLU kernels (forward,
//! backward) against their tensor-op references, on
//! wgpu — both the default fusion backend `Wgpu` and the bare `CubeBackend<WgpuRuntime, ..>`
//! — and under `Autodiff<Wgpu>`, down to a whole model's loss and gradients.
//!
//! On a machine without a GPU this runs on Mesa's lavapipe (software Vulkan, no plane ops).
//! Built with the `cuda` feature, the same tests run on CUDA instead (`Cuda` and the bare
//! `CubeBackend<CudaRuntime, ..>`): that is how the kernels are checked on the GPU machine.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use hymba::HymbaBackend;
use hymba::conv::{
    ConvBackend, causal_conv_silu, causal_conv_silu_backward, causal_conv_silu_backward_reference,
    causal_conv_silu_reference,
};
use hymba::norm::{
    NormBackend, rms_norm, rms_norm_backward, rms_norm_backward_reference, rms_norm_reference,
};
use hymba::scan::cube::{ScanKernel, backward_with, forward_with};
use hymba::scan::reference::{DEFAULT_CHUNK, selective_scan_reference};
use hymba::scan::reference_vjp::selective_scan_reference_backward;
use hymba::scan::warp::WarpConfig;
use hymba::scan::{ScanBackend, ScanInput, selective_scan, selective_scan_backward};
use hymba::softmax::{
    AttentionBackend, MaskRule, masked_softmax, masked_softmax_backward,
    masked_softmax_backward_reference, masked_softmax_reference,
};
use hymba::{Hymba, HymbaConfig};

type Cpu = NdArray<f32>;
#[cfg(feature = "cuda")]
mod gpu {
    pub use burn::backend::Cuda as Fusion;
    pub use burn::backend::cuda::CudaDevice as Dev;
    pub type Rt = cubecl::cuda::CudaRuntime;
    pub type Bare = burn_cubecl::CubeBackend<Rt, f32, i32, u8>;
    pub const NAME: &str = "Cuda";
}
#[cfg(not(feature = "cuda"))]
mod gpu {
    pub use burn::backend::Wgpu as Fusion;
    pub use burn::backend::wgpu::WgpuDevice as Dev;
    pub type Rt = burn::backend::wgpu::WgpuRuntime;
    pub type Bare = burn_cubecl::CubeBackend<Rt, f32, i32, u32>;
    pub const NAME: &str = "Wgpu";
}
use gpu::Dev;

/// The default (fusion) GPU backend under test: `Cuda` with the `cuda` feature, else `Wgpu`.
type Fused = gpu::Fusion<f32, i32>;
/// The same runtime without fusion.
type Bare = gpu::Bare;

const TOL: f32 = 1e-4;

/// The whole-model gradient check's tolerance. On CUDA, burn's f32 matmul (which the small
/// products of the tiny model use, below the cuBLAS threshold) runs in TF32 (10-bit
/// mantissa): on an H100 the worst gradient differed from ndarray's by 1.1e-4 at scale
/// 0.098. The scan kernels themselves are held to `TOL` by the tests above.
#[cfg(feature = "cuda")]
const MODEL_GRAD_TOL: f32 = 5e-3;
#[cfg(not(feature = "cuda"))]
const MODEL_GRAD_TOL: f32 = TOL;

/// The scan designs checked on the bare backend, by name: the tiled kernels everywhere; on
/// CUDA the warp kernels with plane shuffles, at their default 8 steps per unit and at 4
/// (so that even the short shapes span several chunks). The warp kernels with emulated
/// planes, which is how lavapipe runs their code, have a test of their own
/// ([`warp_kernels_emulated_equal_reference`]): every emulated plane operation is two
/// barriers, too slow for every shape.
fn designs() -> Vec<(&'static str, ScanKernel)> {
    let mut v = vec![("tiled", ScanKernel::Tiled)];
    if cfg!(feature = "cuda") {
        v.push(("warp", ScanKernel::Warp(WarpConfig::default())));
        let items4 = WarpConfig {
            items: 4,
            emulate: false,
        };
        v.push(("warp, 4 steps per unit", ScanKernel::Warp(items4)));
    }
    v
}

/// How a check runs the scan on backend `Bk`: [`Dispatch`] through the public functions
/// (the default kernels behind burn's fusion or autodiff), or one [`Design`] called
/// directly on the bare backend.
trait Scanner<Bk: Backend> {
    /// `(y, last state)`.
    fn forward(&self, x: ScanInput<Bk>) -> (Tensor<Bk, 3>, Tensor<Bk, 3>);
    /// The gradients of every input.
    fn backward(
        &self,
        x: ScanInput<Bk>,
        dy: Tensor<Bk, 3>,
        dh: Option<Tensor<Bk, 3>>,
    ) -> ScanInput<Bk>;
}

/// The public functions, with the kernels the backend picks.
struct Dispatch;

impl<Bk: ScanBackend> Scanner<Bk> for Dispatch {
    fn forward(&self, x: ScanInput<Bk>) -> (Tensor<Bk, 3>, Tensor<Bk, 3>) {
        selective_scan(x)
    }
    fn backward(
        &self,
        x: ScanInput<Bk>,
        dy: Tensor<Bk, 3>,
        dh: Option<Tensor<Bk, 3>>,
    ) -> ScanInput<Bk> {
        selective_scan_backward(x, dy, dh)
    }
}

/// One design on the bare backend ([`hymba::scan::cube::forward_with`]).
struct Design(ScanKernel);

impl Scanner<Bare> for Design {
    fn forward(&self, x: ScanInput<Bare>) -> (Tensor<Bare, 3>, Tensor<Bare, 3>) {
        let (y, h) = forward_with(x.into_primitives(), self.0);
        (
            Tensor::from_primitive(TensorPrimitive::Float(y)),
            Tensor::from_primitive(TensorPrimitive::Float(h)),
        )
    }
    fn backward(
        &self,
        x: ScanInput<Bare>,
        dy: Tensor<Bare, 3>,
        dh: Option<Tensor<Bare, 3>>,
    ) -> ScanInput<Bare> {
        backward_with(
            x.into_primitives(),
            dy.into_primitive().tensor(),
            dh.map(|t| t.into_primitive().tensor()),
            self.0,
        )
        .into_tensors()
    }
}

/// Runs `check` with each of [`designs`] on the bare backend.
fn with_each_design(check: impl Fn(&str, &Design)) {
    for (name, kernel) in designs() {
        check(&format!("CubeBackend [{name}]"), &Design(kernel));
    }
}

/// Shapes: (batch, d_inner, state, T). d_inner is not a multiple of the cube sizes (32
/// channels per tiled cube, 4 per warp cube); T is not a multiple of the backward chunk (16
/// for S = 16, 32 for S = 3) nor of a warp chunk (128 or 256 steps).
const SHAPES: [(usize, usize, usize, usize); 4] = [
    (2, 70, 16, 53),
    (1, 5, 3, 37),
    (3, 33, 8, 1),
    (2, 33, 16, 301),
];

/// Shapes for the warp kernels with plane shuffles (CUDA only): several chunks of 256
/// steps. With time innermost they read these in vectors of 4 steps (1100: rows of 4n
/// steps) and of 8 (1536); transposed, one step at a time.
#[cfg(feature = "cuda")]
const PLANE_SHAPES: &[(usize, usize, usize, usize)] = &[(1, 6, 16, 1100), (2, 3, 16, 1536)];
#[cfg(not(feature = "cuda"))]
const PLANE_SHAPES: &[(usize, usize, usize, usize)] = &[];

fn random<Bk: Backend, const D: usize>(shape: [usize; D], device: &Bk::Device) -> Tensor<Bk, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Burn's CPU RNG is one per process, and the tests of this file run in parallel: draws
/// made through [`seeded`] are the same whichever tests run beside them (without it, a
/// neighbour's draws between the seed and ours changed the inputs from run to run).
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `draw` on the CPU device right after seeding its RNG with `seed`, under [`RNG`].
fn seeded<T>(seed: u64, draw: impl FnOnce(&burn::backend::ndarray::NdArrayDevice) -> T) -> T {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    Cpu::seed(&device, seed);
    draw(&device)
}

/// Random inputs on the CPU (A = −exp(N(0, 1)) < 0), seeded.
fn inputs(shape: (usize, usize, usize, usize), with_state: bool, seed: u64) -> ScanInput<Cpu> {
    seeded(seed, |device| draw_inputs(shape, with_state, device))
}

/// [`inputs`] from the RNG's current state (for [`seeded`] blocks that draw more).
fn draw_inputs(
    shape: (usize, usize, usize, usize),
    with_state: bool,
    device: &burn::backend::ndarray::NdArrayDevice,
) -> ScanInput<Cpu> {
    let (b, d, s, t) = shape;
    ScanInput {
        u: random([b, d, t], device),
        delta: random([b, d, t], device),
        a: random::<Cpu, 2>([d, s], device).exp().neg(),
        b: random([b, s, t], device),
        c: random([b, s, t], device),
        d: random([d], device),
        z: random([b, d, t], device),
        delta_bias: random([d], device),
        initial_state: with_state.then(|| random([b, d, s], device)),
    }
}

fn to<Bk: Backend, const D: usize>(x: &Tensor<Cpu, D>, device: &Bk::Device) -> Tensor<Bk, D> {
    Tensor::from_data(x.to_data(), device)
}

/// Moves inputs to `Bk`; with `transposed`, delta, B, C and z are `[b, T, x]` buffers seen
/// as `[b, x, T]` through `swap_dims` (the layout the model passes).
fn move_to<Bk: Backend>(
    x: &ScanInput<Cpu>,
    device: &Bk::Device,
    transposed: bool,
) -> ScanInput<Bk> {
    let tr = |t: &Tensor<Cpu, 3>| -> Tensor<Bk, 3> {
        if transposed {
            to::<Bk, 3>(&t.clone().swap_dims(1, 2), device).swap_dims(1, 2)
        } else {
            to(t, device)
        }
    };
    ScanInput {
        u: to(&x.u, device),
        delta: tr(&x.delta),
        a: to(&x.a, device),
        b: tr(&x.b),
        c: tr(&x.c),
        d: to(&x.d, device),
        z: tr(&x.z),
        delta_bias: to(&x.delta_bias, device),
        initial_state: x.initial_state.as_ref().map(|h| to(h, device)),
    }
}

fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("floats")
}

/// Every element within `TOL · (1 + |want|)`.
fn assert_close(got: Vec<f32>, want: Vec<f32>, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let err = (g - w).abs() / (1.0 + w.abs());
        assert!(err.is_finite() || g == w, "{what}[{i}]: {g} vs {w}");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= TOL,
        "{what}[{i}]: {} vs {} (rel. error {})",
        got[i],
        want[i],
        worst.0
    );
}

fn gpu_device() -> Dev {
    Dev::default()
}

fn check_forward<Bk: Backend<Device = Dev>>(name: &str, scan: &impl Scanner<Bk>) {
    let shapes: Vec<_> = SHAPES.iter().chain(PLANE_SHAPES).copied().collect();
    let cases = [(false, false), (false, true), (true, false), (true, true)];
    check_forward_on::<Bk>(name, scan, &shapes, &cases);
}

/// The forward on `shapes` for each of `cases`: `(initial state, transposed)` (see
/// [`move_to`]).
fn check_forward_on<Bk: Backend<Device = Dev>>(
    name: &str,
    scan: &impl Scanner<Bk>,
    shapes: &[(usize, usize, usize, usize)],
    cases: &[(bool, bool)],
) {
    let device = gpu_device();
    for (k, &shape) in shapes.iter().enumerate() {
        for &(with_state, transposed) in cases {
            let x = inputs(shape, with_state, 10 + k as u64);
            let (want_y, want_h) = selective_scan_reference(x.clone(), DEFAULT_CHUNK);
            let (y, h) = scan.forward(move_to::<Bk>(&x, &device, transposed));
            let what = format!("{name} {shape:?} state={with_state} transposed={transposed}");
            assert_close(host(y), host(want_y), &format!("{what}: y"));
            assert_close(host(h), host(want_h), &format!("{what}: last state"));
        }
    }
}

#[test]
fn kernel_forward_equals_reference_fusion() {
    check_forward::<Fused>(gpu::NAME, &Dispatch);
}

#[test]
fn kernel_forward_equals_reference_cube() {
    with_each_design(check_forward::<Bare>);
}

fn check_backward<Bk: Backend<Device = Dev>>(name: &str, scan: &impl Scanner<Bk>) {
    // Over 2 × 301 steps the time-summed dA of kernel and (f32) reference drift apart by up
    // to 4e-4 relative (lavapipe), which is summation order, not a different result, so the
    // longest of SHAPES is left out. On CUDA the warp backward gets one chunk (130 steps),
    // then several chunks with steps read 4 (1100) and 8 (1536) at a time.
    let plane_shape: &[(usize, usize, usize, usize)] = if cfg!(feature = "cuda") {
        &[(1, 6, 16, 130), (1, 6, 16, 1100), (2, 3, 16, 1536)]
    } else {
        &[]
    };
    let shapes: Vec<_> = SHAPES.iter().take(3).chain(plane_shape).copied().collect();
    check_backward_on::<Bk>(name, scan, &shapes, &BACKWARD_CASES);
}

/// `(initial state, gradient of the last state, transposed)` for [`check_backward`]: each
/// flag on and off, each layout.
const BACKWARD_CASES: [(bool, bool, bool); 4] = [
    (false, false, false),
    (true, true, false),
    (false, true, true),
    (true, false, true),
];

/// The backward on `shapes` for each of `cases` (see [`BACKWARD_CASES`]).
fn check_backward_on<Bk: Backend<Device = Dev>>(
    name: &str,
    scan: &impl Scanner<Bk>,
    shapes: &[(usize, usize, usize, usize)],
    cases: &[(bool, bool, bool)],
) {
    let device = gpu_device();
    for (k, &shape) in shapes.iter().enumerate() {
        for &(with_state, with_d_last, transposed) in cases {
            let (b, d, s, t) = shape;
            let (x, dy, dh) = seeded(20 + k as u64, |cpu| {
                let x = draw_inputs(shape, with_state, cpu);
                let dy = random::<Cpu, 3>([b, d, t], cpu);
                (x, dy, with_d_last.then(|| random::<Cpu, 3>([b, d, s], cpu)))
            });
            let want = selective_scan_reference_backward(
                x.clone().into_primitives(),
                dy.clone().into_primitive().tensor(),
                dh.clone().map(|t| t.into_primitive().tensor()),
            )
            .into_tensors();
            let got = scan.backward(
                move_to::<Bk>(&x, &device, transposed),
                to(&dy, &device),
                dh.as_ref().map(|t| to(t, &device)),
            );
            let what = format!(
                "{name} {shape:?} state={with_state} d_last={with_d_last} transposed={transposed}"
            );
            assert_close(host(got.u), host(want.u), &format!("{what}: du"));
            assert_close(
                host(got.delta),
                host(want.delta),
                &format!("{what}: d delta"),
            );
            assert_close(host(got.a), host(want.a), &format!("{what}: dA"));
            assert_close(host(got.b), host(want.b), &format!("{what}: dB"));
            assert_close(host(got.c), host(want.c), &format!("{what}: dC"));
            assert_close(host(got.d), host(want.d), &format!("{what}: dD"));
            assert_close(host(got.z), host(want.z), &format!("{what}: dz"));
            assert_close(
                host(got.delta_bias),
                host(want.delta_bias),
                &format!("{what}: d delta_bias"),
            );
            assert_eq!(
                got.initial_state.is_some(),
                with_state,
                "{what}: d initial_state presence"
            );
            if let (Some(g), Some(w)) = (got.initial_state, want.initial_state) {
                assert_close(host(g), host(w), &format!("{what}: d initial_state"));
            }
        }
    }
}

/// The shape for the warp kernels at 4 steps per unit (chunks of 128): two batch rows, three
/// chunks, the last ending past the sequence, and the second cube half idle (6 channels, 4
/// planes per cube). One shape and one case each way, with an initial state and a last
/// state's gradient: lavapipe compiles each kernel configuration for ~14 s (every emulated
/// plane operation is two barriers), and a first version of this test with three shapes and
/// every case took 272 s there.
const WARP_SHAPE: (usize, usize, usize, usize) = (2, 6, 16, 300);

/// The warp kernels (`hymba::scan::warp`) with every plane operation emulated through
/// shared memory, forward and backward, against the reference: on lavapipe, which has no
/// plane operations, this is where CI runs their code (indices, chunk carries, the cube's
/// dB/dC exchange). At 4 steps per unit, so that the shape spans three chunks; then decode
/// steps of one token.
#[test]
fn warp_kernels_emulated_equal_reference() {
    use cubecl::Runtime;
    let client = gpu::Rt::client(&gpu_device());
    let config = WarpConfig {
        items: 4,
        emulate: true,
    };
    // Otherwise the tiled kernels would run and this test would check nothing new.
    assert!(
        hymba::scan::warp::usable(&client, 16, config),
        "the emulated warp kernels do not run on this device"
    );
    let design = Design(ScanKernel::Warp(config));
    // Time-innermost inputs only: the warp kernels see copies in that layout either way.
    let name = "warp, emulated planes";
    check_forward_on::<Bare>(name, &design, &[WARP_SHAPE], &[(true, false)]);
    check_backward_on::<Bare>(name, &design, &[WARP_SHAPE], &[(true, true, false)]);
    // Decode: steps of one token, each a chunk that is all but one lane past the sequence.
    check_steps::<Bare>(name, &design);
}

#[test]
fn kernel_backward_equals_reference_fusion() {
    check_backward::<Fused>(gpu::NAME, &Dispatch);
}

#[test]
fn kernel_backward_equals_reference_cube() {
    with_each_design(check_backward::<Bare>);
}

/// Decode: T = 1 steps carrying the state equal one scan of the whole sequence.
fn check_steps<Bk: Backend<Device = Dev>>(name: &str, scan: &impl Scanner<Bk>) {
    let device = gpu_device();
    let shape = (2, 70, 16, 9);
    let x = inputs(shape, true, 31);
    let (want_y, want_h) = selective_scan_reference(x.clone(), DEFAULT_CHUNK);
    let g = move_to::<Bk>(&x, &device, false);
    let mut h = g.initial_state.clone();
    let mut ys = Vec::new();
    for t in 0..shape.3 {
        let step = ScanInput {
            u: g.u.clone().narrow(2, t, 1),
            delta: g.delta.clone().narrow(2, t, 1),
            b: g.b.clone().narrow(2, t, 1),
            c: g.c.clone().narrow(2, t, 1),
            z: g.z.clone().narrow(2, t, 1),
            initial_state: h,
            ..g.clone()
        };
        let (y, h_next) = scan.forward(step);
        ys.push(y);
        h = Some(h_next);
    }
    assert_close(
        host(Tensor::cat(ys, 2)),
        host(want_y),
        &format!("{name}: stepped y"),
    );
    assert_close(
        host(h.expect("state")),
        host(want_h),
        &format!("{name}: stepped state"),
    );
}

#[test]
fn kernel_step_equals_reference_fusion() {
    check_steps::<Fused>(gpu::NAME, &Dispatch);
}

#[test]
fn kernel_step_equals_reference_cube() {
    with_each_design(check_steps::<Bare>);
}

/// Gradients of `Σ y·wy (+ Σ h·wh)` under `Autodiff<Bk>` (the custom op) equal the
/// reference's own autodiff gradients on `Autodiff<NdArray<f32>>`.
fn check_autodiff<Bk: ScanBackend<Device = Dev>>(name: &str)
where
    Autodiff<Bk>: ScanBackend,
{
    type Ref = Autodiff<Cpu>;
    let device = gpu_device();
    for (k, &shape) in SHAPES.iter().take(2).enumerate() {
        for (with_state, use_h) in [(false, false), (true, true), (true, false)] {
            let (b, d, s, t) = shape;
            let (x, wy, wh) = seeded(40 + k as u64, |cpu| {
                let x = draw_inputs(shape, with_state, cpu);
                let wy = random::<Cpu, 3>([b, d, t], cpu);
                (x, wy, random::<Cpu, 3>([b, d, s], cpu))
            });

            // Reference: the tensor-op scan differentiated by burn.
            let r = lift::<Cpu, Ref>(&x);
            let (y, h) = selective_scan_reference(r.clone(), DEFAULT_CHUNK);
            let mut loss = (y * Tensor::from_inner(wy.clone())).sum();
            if use_h {
                loss = loss + (h * Tensor::from_inner(wh.clone())).sum();
            }
            let rg = loss.backward();
            let want = grads_of(&r, &rg);

            // Kernel path: the custom autodiff op over the GPU kernels.
            let g = lift::<Bk, Autodiff<Bk>>(&move_to::<Bk>(&x, &device, true));
            let (y, h) = selective_scan(g.clone());
            let mut loss = (y * Tensor::from_inner(to::<Bk, 3>(&wy, &device))).sum();
            if use_h {
                loss = loss + (h * Tensor::from_inner(to::<Bk, 3>(&wh, &device))).sum();
            }
            let gg = loss.backward();
            let got = grads_of(&g, &gg);

            let what = format!("{name} {shape:?} state={with_state} last-state-in-loss={use_h}");
            for ((field, g), (_, w)) in got.into_iter().zip(want) {
                assert_close(g, w, &format!("{what}: d{field}"));
            }
        }
    }
}

fn lift<Bk: Backend, A: AutodiffBackend<InnerBackend = Bk>>(x: &ScanInput<Bk>) -> ScanInput<A> {
    fn l<Bk: Backend, A: AutodiffBackend<InnerBackend = Bk>, const D: usize>(
        t: &Tensor<Bk, D>,
    ) -> Tensor<A, D> {
        Tensor::from_inner(t.clone()).require_grad()
    }
    ScanInput {
        u: l(&x.u),
        delta: l(&x.delta),
        a: l(&x.a),
        b: l(&x.b),
        c: l(&x.c),
        d: l(&x.d),
        z: l(&x.z),
        delta_bias: l(&x.delta_bias),
        initial_state: x.initial_state.as_ref().map(l),
    }
}

fn grads_of<A: AutodiffBackend>(
    x: &ScanInput<A>,
    grads: &A::Gradients,
) -> Vec<(&'static str, Vec<f32>)> {
    fn g<A: AutodiffBackend, const D: usize>(t: &Tensor<A, D>, grads: &A::Gradients) -> Vec<f32> {
        host(t.grad(grads).expect("a gradient"))
    }
    let mut v = vec![
        ("u", g(&x.u, grads)),
        ("delta", g(&x.delta, grads)),
        ("a", g(&x.a, grads)),
        ("b", g(&x.b, grads)),
        ("c", g(&x.c, grads)),
        ("d", g(&x.d, grads)),
        ("z", g(&x.z, grads)),
        ("delta_bias", g(&x.delta_bias, grads)),
    ];
    if let Some(h) = &x.initial_state {
        v.push(("initial_state", g(h, grads)));
    }
    v
}

/// Through `Autodiff<Fusion<..>>`: the kernels the device picks (warp on CUDA, tiled on
/// lavapipe).
#[test]
fn autodiff_kernel_gradients_equal_reference_fusion() {
    check_autodiff::<Fused>(&format!("Autodiff<{}>", gpu::NAME));
}

#[test]
fn autodiff_kernel_gradients_equal_reference_cube() {
    check_autodiff::<Bare>("Autodiff<CubeBackend>");
}

/// (shape, gradient values) of every float parameter, in visiting order.
type ParamGrads = Vec<(Vec<usize>, Vec<f32>)>;

/// Collects every float parameter's gradient, in visiting order.
struct Grads<'a, A: AutodiffBackend> {
    grads: &'a A::Gradients,
    out: ParamGrads,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for Grads<'_, A> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let g = param.val().grad(self.grads).map(host).unwrap_or_default();
        self.out.push((param.dims().to_vec(), g));
    }
}

/// Masks of every kind the model builds: causal with queries at the end of the keys (a
/// cached call), SWA with meta tokens and a trimmed cache (keys after the meta tokens start
/// later), SWA from position 0, and no mask.
fn softmax_rules(tq: usize, tk: usize) -> Vec<(&'static str, MaskRule)> {
    vec![
        ("causal", MaskRule::causal(tq, tk)),
        (
            "swa, trimmed cache",
            MaskRule {
                q_start: 400,
                key_meta: 5,
                text_start: 400 + tq - (tk - 5),
                window: Some(40),
                num_meta: 5,
            },
        ),
        (
            "swa from 0",
            MaskRule {
                q_start: tk - tq,
                key_meta: 7,
                text_start: 7,
                window: Some(100),
                num_meta: 7,
            },
        ),
        ("none", MaskRule::none(tk)),
    ]
}

/// The kernels' forward and backward against the tensor ops on the CPU, at a row length
/// that is no multiple of the cube size and spans two sweeps of it (301 keys).
fn check_masked_softmax<Bk: AttentionBackend<Device = Dev>>() {
    let device = gpu_device();
    let (b, h, tq, tk) = (2, 3, 37, 301);
    let (scores, grad) = seeded(17, |cpu| {
        let scores = random::<Cpu, 4>([b, h, tq, tk], cpu).mul_scalar(3.0);
        (scores, random::<Cpu, 4>([b, h, tq, tk], cpu))
    });
    for (name, rule) in softmax_rules(tq, tk) {
        let want = masked_softmax_reference(scores.clone(), rule);
        let got = masked_softmax(to::<Bk, 4>(&scores, &device), rule);
        assert_close(
            host(got.clone()),
            host(want.clone()),
            &format!("softmax, {name}"),
        );
        let want = masked_softmax_backward_reference(want, grad.clone());
        let got = masked_softmax_backward(got, to::<Bk, 4>(&grad, &device));
        assert_close(host(got), host(want), &format!("softmax backward, {name}"));
    }
}

#[test]
fn kernel_masked_softmax_equals_reference_fusion() {
    check_masked_softmax::<Fused>();
}

#[test]
fn kernel_masked_softmax_equals_reference_cube() {
    check_masked_softmax::<Bare>();
}

/// The RMS-norm kernels' forward and gradients (input and weight) against the tensor ops on
/// the CPU: row lengths below one warp (16: B and C), between (100) and past one sweep of
/// the widest cube (301), and enough rows for several weight-gradient chunks (70 · 2).
fn check_rms_norm<Bk: NormBackend<Device = Dev>>() {
    let device = gpu_device();
    let shapes = [[3, 37, 16], [2, 70, 100], [1, 5, 301]];
    let draws: Vec<_> = seeded(23, |cpu| {
        shapes
            .iter()
            .map(|&[b, t, d]| {
                let x = random::<Cpu, 3>([b, t, d], cpu)
                    .mul_scalar(3.0)
                    .add_scalar(0.5);
                let w = random::<Cpu, 1>([d], cpu).add_scalar(1.0);
                (x, w, random::<Cpu, 3>([b, t, d], cpu))
            })
            .collect()
    });
    for ([b, t, d], (x, w, dy)) in shapes.into_iter().zip(draws) {
        let eps = 1e-6;
        let rows = |v: &Tensor<Cpu, 3>| v.clone().reshape([b * v.dims()[1], d]);
        let want = rms_norm_reference(rows(&x), w.clone(), eps);
        let got = rms_norm(to::<Bk, 3>(&x, &device), to::<Bk, 1>(&w, &device), eps);
        assert_close(host(got), host(want), &format!("RMS norm [{b}, {t}, {d}]"));
        let (want_dx, want_dw) = rms_norm_backward_reference(rows(&x), w.clone(), rows(&dy), eps);
        let (dx, dw) = rms_norm_backward(
            to::<Bk, 3>(&x, &device),
            to::<Bk, 1>(&w, &device),
            to::<Bk, 3>(&dy, &device),
            eps,
        );
        assert_close(
            host(dx),
            host(want_dx),
            &format!("RMS norm dx [{b}, {t}, {d}]"),
        );
        // dweight sums b · t products: relative to the sum's size.
        let scale = (b * t) as f32;
        let dw: Vec<f32> = host(dw).iter().map(|v| v / scale).collect();
        let want_dw: Vec<f32> = host(want_dw).iter().map(|v| v / scale).collect();
        assert_close(dw, want_dw, &format!("RMS norm dweight [{b}, {t}, {d}]"));
    }
}

#[test]
fn kernel_rms_norm_equals_reference_fusion() {
    check_rms_norm::<Fused>();
}

#[test]
fn kernel_rms_norm_equals_reference_cube() {
    check_rms_norm::<Bare>();
}

/// The conv + SiLU kernels' forward and gradients (input, taps, bias) against the tensor ops
/// on the CPU: 4 taps over channel counts that are no multiple of a cube (37, 300), a
/// decode-sized input (T = 1) and enough rows for several parameter-gradient chunks.
fn check_conv<Bk: ConvBackend<Device = Dev>>() {
    let device = gpu_device();
    let k = 4;
    let shapes = [[2, 45, 37], [3, 1, 300], [1, 150, 70]];
    let draws: Vec<_> = seeded(29, |cpu| {
        shapes
            .iter()
            .map(|&[b, t, d]| {
                let full = random::<Cpu, 3>([b, t + k - 1, d], cpu).mul_scalar(2.0);
                let w = random::<Cpu, 2>([d, k], cpu).mul_scalar(0.5);
                let bias = random::<Cpu, 1>([d], cpu).mul_scalar(0.3);
                (full, w, bias, random::<Cpu, 3>([b, t, d], cpu))
            })
            .collect()
    });
    for ([b, t, d], (full, w, bias, dy)) in shapes.into_iter().zip(draws) {
        let what = |part: &str| format!("conv {part} [{b}, {t}, {d}]");
        let want = causal_conv_silu_reference(full.clone(), w.clone(), bias.clone());
        let got = causal_conv_silu(
            to::<Bk, 3>(&full, &device),
            to::<Bk, 2>(&w, &device),
            to::<Bk, 1>(&bias, &device),
        );
        assert_close(host(got), host(want), &what("y"));
        let (want_df, want_dw, want_db) =
            causal_conv_silu_backward_reference(full.clone(), w.clone(), bias.clone(), dy.clone());
        let (df, dw, db) = causal_conv_silu_backward(
            to::<Bk, 3>(&full, &device),
            to::<Bk, 2>(&w, &device),
            to::<Bk, 1>(&bias, &device),
            to::<Bk, 3>(&dy, &device),
        );
        assert_close(host(df), host(want_df), &what("dfull"));
        // The taps' and bias's gradients sum b · t products: relative to the sum's size.
        let per_row = |v: Vec<f32>| -> Vec<f32> { v.iter().map(|x| x / (b * t) as f32).collect() };
        assert_close(per_row(host(dw)), per_row(host(want_dw)), &what("dweight"));
        assert_close(per_row(host(db)), per_row(host(want_db)), &what("dbias"));
    }
}

#[test]
fn kernel_conv_equals_reference_fusion() {
    check_conv::<Fused>();
}

#[test]
fn kernel_conv_equals_reference_cube() {
    check_conv::<Bare>();
}

fn model_loss_and_grads<A: AutodiffBackend + HymbaBackend>(
    cpu_model: &Hymba<Cpu>,
    rows: &[Vec<u32>],
    device: &A::Device,
) -> (f32, ParamGrads) {
    let model = cpu_model
        .to_backend::<A>(device)
        .expect("same architecture");
    let loss = model.forward_loss(common::to_tensor::<A>(rows, device), None);
    let value = host(loss.clone())[0];
    let grads = loss.backward();
    let mut v = Grads::<A> {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut v);
    (value, v.out)
}

/// Max |got − want| of one parameter's gradient, and the scale it is judged against: the
/// largest |want|, at least 1e-3.
fn grad_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-3);
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    (diff, scale)
}

#[test]
fn model_on_autodiff_gpu_equals_ndarray() {
    // The default kernels: warp on CUDA, tiled on lavapipe.
    let cpu_model = seeded(21, |_| common::tiny_model(21));
    let config = HymbaConfig::tiny();
    let rows = common::ids(2, 2 * config.sliding_window + 7, config.vocab_size, 5);
    let (want_loss, want) =
        model_loss_and_grads::<Autodiff<Cpu>>(&cpu_model, &rows, &Default::default());
    let (loss, got) = model_loss_and_grads::<Autodiff<Fused>>(&cpu_model, &rows, &gpu_device());
    assert!(
        (loss - want_loss).abs() <= TOL * (1.0 + want_loss.abs()),
        "loss {loss} vs {want_loss}"
    );
    assert_eq!(got.len(), want.len());
    assert!(got.len() > 20);
    for (i, ((shape, g), (_, w))) in got.into_iter().zip(want).enumerate() {
        assert!(
            !w.is_empty(),
            "parameter {i} {shape:?} has no gradient on ndarray"
        );
        // Relative to the tensor's largest gradient: sums of many terms in another order.
        let (diff, scale) = grad_diff(&g, &w);
        assert!(
            diff <= MODEL_GRAD_TOL * scale.max(1.0),
            "parameter {i} {shape:?}: max |diff| {diff} (scale {scale})"
        );
    }
}

/// `FixedShapeMemory` (cubecl's exact-size buffers, what the trainer runs pretraining with
/// on CUDA) gives the loss and gradients of the default allocator, over three steps that
/// reuse each other's freed buffers; and once the guard is dropped, a step of another shape
/// still runs. A no-op, so trivially equal, on backends other than CUDA.
#[test]
fn fixed_shape_memory_gives_the_same_gradients() {
    let cpu_model = seeded(22, |_| common::tiny_model(22));
    let config = HymbaConfig::tiny();
    let rows = common::ids(2, 2 * config.sliding_window + 7, config.vocab_size, 6);
    let device = gpu_device();
    let (want_loss, want) = model_loss_and_grads::<Autodiff<Fused>>(&cpu_model, &rows, &device);
    {
        let _memory = hymba::FixedShapeMemory::enter::<Autodiff<Fused>>(&device);
        for step in 0..3 {
            let (loss, got) = model_loss_and_grads::<Autodiff<Fused>>(&cpu_model, &rows, &device);
            assert!(
                (loss - want_loss).abs() <= 1e-6 * (1.0 + want_loss.abs()),
                "step {step}: loss {loss} vs {want_loss}"
            );
            assert_eq!(got.len(), want.len());
            for (i, ((shape, g), (_, w))) in got.into_iter().zip(&want).enumerate() {
                let (diff, scale) = grad_diff(&g, w);
                assert!(
                    diff <= 1e-5 * scale,
                    "step {step}, parameter {i} {shape:?}: max |diff| {diff} (scale {scale})"
                );
            }
        }
    }
    let other = common::ids(3, config.sliding_window + 3, config.vocab_size, 7);
    let (loss, grads) = model_loss_and_grads::<Autodiff<Fused>>(&cpu_model, &other, &device);
    assert!(loss.is_finite(), "loss after the guard: {loss}");
    assert_eq!(grads.len(), want.len());
}
