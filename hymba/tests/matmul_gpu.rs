//! The CUDA matmul (cuBLAS, `hymba::matmul::cublas`) against the CPU, forward and gradients,
//! on odd shapes (no multiple of 8/16/128), transposed views, batched and broadcast
//! operands, in f32 (exact) and bf16 (f32 accumulation), on `Cuda` (fusion: the custom op),
//! the bare `CubeBackend<CudaRuntime>` and under `Autodiff<Cuda>`. Needs the `cuda` feature
//! and a GPU: it is run on the GPU machine, with `--test-threads=1` (the ordering tests
//! count the process's flagged products).
#![cfg(feature = "cuda")]

mod common;

use burn::backend::cuda::CudaDevice;
use burn::backend::{Autodiff, Cuda, NdArray};
use burn::prelude::*;
use burn::tensor::DType;
use hymba::MatmulBackend;
use hymba::matmul::cublas;
use hymba::matmul::matmul;

type Cpu = NdArray<f32>;
type Bare = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// (lhs shape, rhs shape, lhs given transposed, rhs given transposed). The first five are
/// 16-byte aligned but no multiple of 16 or 128 (m 136, k 264, n 120): cuBLAS takes them.
/// The last two have odd dims (131, 257, 129), which `cublas::supports` routes back to
/// burn's kernel (cuBLAS's unaligned kernels are slower than burn's): the model's matmul
/// must still be right there.
const CASES: [([usize; 4], [usize; 4], bool, bool); 7] = [
    ([1, 3, 136, 264], [1, 1, 264, 120], false, true),
    ([2, 3, 136, 264], [1, 1, 264, 120], false, false),
    ([2, 3, 136, 264], [2, 3, 264, 120], false, false),
    ([2, 3, 136, 264], [2, 3, 264, 120], true, true),
    ([1, 1, 136, 264], [2, 3, 264, 120], true, false),
    ([1, 3, 131, 257], [1, 1, 257, 129], false, true),
    ([2, 3, 131, 257], [2, 3, 257, 129], true, true),
];

/// The tolerance on a product `[.., m, k] · [.., k, n]`: cuBLAS in f32 is exact f32
/// (`CUBLAS_COMPUTE_32F`); burn's kernel, which runs the unaligned products, multiplies
/// f32 as TF32 (10-bit mantissa); bf16 inputs are rounded to 8 bits either way.
fn tolerance(dtype: DType, ls: [usize; 4], rs: [usize; 4]) -> f32 {
    let aligned = [ls[2], ls[3], rs[3]].iter().all(|d| d % 4 == 0);
    match dtype {
        DType::F32 if aligned => 1e-5,
        DType::F32 => 2e-3,
        _ => 1e-2,
    }
}

fn operand<Bk: Backend>(
    x: &Tensor<Cpu, 4>,
    transposed: bool,
    device: &Bk::Device,
    dtype: DType,
) -> Tensor<Bk, 4> {
    // `x` is the [.., r, c] value; a transposed operand is stored as [.., c, r].
    let stored = if transposed {
        x.clone().swap_dims(2, 3)
    } else {
        x.clone()
    };
    let t = Tensor::<Bk, 4>::from_data(stored.to_data(), device).cast(dtype);
    if transposed { t.swap_dims(2, 3) } else { t }
}

/// max |got − want| / max |want|.
fn rel_max_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
    common::max_abs_diff(got, want) / scale
}

fn values<Bk: Backend>(t: Tensor<Bk, 4>) -> Vec<f32> {
    common::to_vec(t.cast(DType::F32))
}

fn check_forward<Bk: MatmulBackend<Device = CudaDevice>>(name: &str) {
    assert!(Bk::has_fast_matmul(), "{name}: cuBLAS did not load");
    let cpu = Default::default();
    let device = CudaDevice::default();
    Cpu::seed(&cpu, 7);
    for (ls, rs, lt, rt) in CASES {
        let (l, r) = (
            common::random::<Cpu, 4>(ls, &cpu),
            common::random::<Cpu, 4>(rs, &cpu),
        );
        for dtype in [DType::F32, DType::BF16] {
            let tol = tolerance(dtype, ls, rs);
            // The CPU reference sees the same (rounded) inputs.
            let round = |x: &Tensor<Cpu, 4>| {
                let data = x.to_data();
                let data = if dtype == DType::BF16 {
                    data.convert::<half::bf16>().convert::<f32>()
                } else {
                    data
                };
                Tensor::<Cpu, 4>::from_data(data, &cpu)
            };
            let want = values(round(&l).matmul(round(&r)));
            let got = values(matmul(
                operand::<Bk>(&l, lt, &device, dtype),
                operand::<Bk>(&r, rt, &device, dtype),
            ));
            let err = rel_max_err(&got, &want);
            println!(
                "{name} {dtype:?} {ls:?}{} · {rs:?}{}: rel. max error {err:.2e}",
                if lt { "ᵀ" } else { "" },
                if rt { "ᵀ" } else { "" }
            );
            assert!(
                err <= tol,
                "{name} {dtype:?} {ls:?} · {rs:?}: rel. max error {err}"
            );
        }
    }
}

#[test]
fn cublas_matmul_equals_cpu_on_cuda_fusion() {
    check_forward::<Cuda<f32, i32>>("Cuda");
}

#[test]
fn cublas_matmul_equals_cpu_on_bare_cube_backend() {
    check_forward::<Bare>("CubeBackend<Cuda>");
}

#[test]
fn cublas_matmul_gradients_equal_cpu() {
    type Gpu = Autodiff<Cuda<f32, i32>>;
    assert!(Gpu::has_fast_matmul());
    let cpu = Default::default();
    let device = CudaDevice::default();
    Cpu::seed(&cpu, 9);
    for (ls, rs, lt, rt) in CASES {
        let (l, r) = (
            common::random::<Cpu, 4>(ls, &cpu),
            common::random::<Cpu, 4>(rs, &cpu),
        );
        let out_dims = [ls[0].max(rs[0]), ls[1].max(rs[1]), ls[2], rs[3]];
        let w = common::random::<Cpu, 4>(out_dims, &cpu);
        let cpu_grads = {
            let (a, b) = (
                Tensor::<Autodiff<Cpu>, 4>::from_inner(l.clone()).require_grad(),
                Tensor::<Autodiff<Cpu>, 4>::from_inner(r.clone()).require_grad(),
            );
            let g = (a.clone().matmul(b.clone()) * Tensor::from_inner(w.clone()))
                .sum()
                .backward();
            (
                common::to_vec(a.grad(&g).expect("lhs grad")),
                common::to_vec(b.grad(&g).expect("rhs grad")),
            )
        };
        let gpu_grads = {
            let a = operand::<Cuda<f32, i32>>(&l, lt, &device, DType::F32);
            let b = operand::<Cuda<f32, i32>>(&r, rt, &device, DType::F32);
            let (a, b) = (
                Tensor::<Gpu, 4>::from_inner(a).require_grad(),
                Tensor::<Gpu, 4>::from_inner(b).require_grad(),
            );
            let wg = Tensor::<Gpu, 4>::from_data(w.to_data(), &device);
            let g = (matmul(a.clone(), b.clone()) * wg).sum().backward();
            (
                common::to_vec(a.grad(&g).expect("lhs grad")),
                common::to_vec(b.grad(&g).expect("rhs grad")),
            )
        };
        for (what, got, want) in [
            ("d lhs", &gpu_grads.0, &cpu_grads.0),
            ("d rhs", &gpu_grads.1, &cpu_grads.1),
        ] {
            let err = rel_max_err(got, want);
            println!("Autodiff<Cuda> {ls:?} · {rs:?} {what}: rel. max error {err:.2e}");
            let tol = tolerance(DType::F32, ls, rs);
            assert!(err <= tol, "{ls:?} · {rs:?} {what}: rel. max error {err}");
        }
    }
}

/// The model's matmul (`ours`) or burn's own `Tensor::matmul` for the products under test.
fn product<Bk: MatmulBackend, const D: usize>(
    ours: bool,
    lhs: Tensor<Bk, D>,
    rhs: Tensor<Bk, D>,
) -> Tensor<Bk, D> {
    if ours {
        matmul(lhs, rhs)
    } else {
        lhs.matmul(rhs)
    }
}

/// Runs `work` with the model's matmul and with burn's own throughout, and compares. burn's
/// kernels all run on cubecl's stream, so its run is ordered by construction; any hole in the
/// flag ordering of the cuBLAS products (`hymba::matmul::cublas`, "Ordering") reads
/// unfinished buffers and shows as a difference far above the tolerance, which only covers
/// burn's kernel multiplying f32 as TF32 where cuBLAS is exact. Checks too that `expected`
/// products took the flag ordering, so that no fallback (host waits) passes for it.
fn check_ordered(name: &str, expected: usize, work: impl Fn(bool) -> Vec<f32>) {
    let want = work(false);
    let before = cublas::flagged_products();
    let got = work(true);
    let flagged = cublas::flagged_products() - before;
    let err = rel_max_err(&got, &want);
    println!("{name}: cuBLAS vs burn's matmul: rel. max difference {err:.2e}, {flagged} flagged");
    assert!(
        err <= 1e-2,
        "{name}: cuBLAS differs from burn's matmul by {err}"
    );
    assert!(
        !cublas::flags_refused(),
        "{name}: the flag ordering fell back to host waits"
    );
    assert_eq!(flagged, expected, "{name}: flagged products");
}

/// `x ← tanh((x · W₁) · W₂) · 0.5 + x`, six times, with the host never waiting in between:
/// `x · W₁` runs burn's own kernel (on cubecl's stream, ≈ 1 ms each) and `· W₂` the product
/// under test (cuBLAS on its own stream, for `ours`), so every product reads what a long
/// cubecl kernel has just written, and the next cubecl kernel reads its output while the
/// host is far ahead.
fn chain<Bk: MatmulBackend<Device = CudaDevice>>(ours: bool) -> Vec<f32> {
    let device = CudaDevice::default();
    let cpu = Default::default();
    Cpu::seed(&cpu, 11);
    let upload = |t: Tensor<Cpu, 2>| Tensor::<Bk, 2>::from_data(t.to_data(), &device);
    let mut x = upload(common::random::<Cpu, 2>([4096, 2048], &cpu));
    let w1 = upload(common::random::<Cpu, 2>([2048, 2048], &cpu) * 0.02);
    let w2 = upload(common::random::<Cpu, 2>([2048, 2048], &cpu) * 0.02);
    for _ in 0..6 {
        x = product(ours, x.clone().matmul(w1.clone()), w2.clone()).tanh() * 0.5 + x;
    }
    common::to_vec(x)
}

/// `y ← tanh(x · W₁)` made on another thread, so on another cubecl stream, and `y · W₂` on
/// the product under test on this one, three times over: the product must wait for the
/// other stream (cubecl's buffer lookup orders that). The host never waits for the device.
fn across_streams(ours: bool) -> Vec<f32> {
    let device = CudaDevice::default();
    let cpu = Default::default();
    Cpu::seed(&cpu, 12);
    let upload = |t: Tensor<Cpu, 2>| Tensor::<Bare, 2>::from_data(t.to_data(), &device);
    let mut x = upload(common::random::<Cpu, 2>([4096, 2048], &cpu));
    let w1 = upload(common::random::<Cpu, 2>([2048, 2048], &cpu) * 0.02);
    let w2 = upload(common::random::<Cpu, 2>([2048, 2048], &cpu) * 0.02);
    for _ in 0..3 {
        let (x_in, w1) = (x.clone(), w1.clone());
        let y = std::thread::spawn(move || (x_in.matmul(w1)).tanh())
            .join()
            .expect("the other thread's kernels were queued");
        x = product(ours, y, w2.clone()).tanh() * 0.5 + x;
    }
    common::to_vec(x)
}

#[test]
fn cublas_matmul_is_ordered_with_other_cubecl_streams() {
    let name = "3 × [4096, 2048]·[2048, 2048] on another thread's stream, then ·[2048, 2048]";
    check_ordered(name, 3, across_streams);
}

#[test]
fn cublas_matmul_is_ordered_with_cubecl_kernels_on_cuda_fusion() {
    check_ordered("Cuda", 6, chain::<Cuda<f32, i32>>);
}

#[test]
fn cublas_matmul_is_ordered_with_cubecl_kernels_on_bare_cube_backend() {
    check_ordered("CubeBackend<Cuda>", 6, chain::<Bare>);
}
