//! The tensor-op selective scan against a plain sequential loop, and its gradient against
//! finite differences.

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::Distribution;
use hymba::scan::reference::selective_scan_reference;
use hymba::scan::{ScanInput, selective_scan};

type B64 = NdArray<f64>;

/// Odd sizes: T spans several chunks and ends in a partial one.
const BATCH: usize = 2;
const CH: usize = 5;
const S: usize = 3;
const T: usize = 37;

fn random<Bk: Backend, const D: usize>(shape: [usize; D], device: &Bk::Device) -> Tensor<Bk, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn inputs<Bk: Backend>(device: &Bk::Device, with_state: bool) -> ScanInput<Bk> {
    ScanInput {
        u: random([BATCH, CH, T], device),
        delta: random([BATCH, CH, T], device),
        // A = −exp(A_log) < 0.
        a: random::<Bk, 2>([CH, S], device).exp().neg(),
        b: random([BATCH, S, T], device),
        c: random([BATCH, S, T], device),
        d: random([CH], device),
        z: random([BATCH, CH, T], device),
        delta_bias: random([CH], device),
        initial_state: with_state.then(|| random([BATCH, CH, S], device)),
    }
}

fn host<Bk: Backend, const D: usize>(t: &Tensor<Bk, D>) -> Vec<f64> {
    t.to_data().convert::<f64>().to_vec().expect("floats")
}

/// The recurrence written out step by step, in f64.
fn sequential(input: &ScanInput<B64>) -> (Vec<f64>, Vec<f64>) {
    let (u, dl, a, b, c) = (
        host(&input.u),
        host(&input.delta),
        host(&input.a),
        host(&input.b),
        host(&input.c),
    );
    let (d, z, bias) = (host(&input.d), host(&input.z), host(&input.delta_bias));
    let mut h = input
        .initial_state
        .as_ref()
        .map_or(vec![0.0; BATCH * CH * S], host);
    let mut y = vec![0.0; BATCH * CH * T];
    for bi in 0..BATCH {
        for ch in 0..CH {
            for t in 0..T {
                let i = (bi * CH + ch) * T + t;
                let x = dl[i] + bias[ch];
                let dt = if x > 20.0 { x } else { x.exp().ln_1p() };
                let mut acc = 0.0;
                for s in 0..S {
                    let hs = &mut h[(bi * CH + ch) * S + s];
                    let bt = b[(bi * S + s) * T + t];
                    let ct = c[(bi * S + s) * T + t];
                    *hs = (dt * a[ch * S + s]).exp() * *hs + dt * bt * u[i];
                    acc += ct * *hs;
                }
                let zi = z[i];
                y[i] = (acc + d[ch] * u[i]) * zi / (1.0 + (-zi).exp());
            }
        }
    }
    (y, h)
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let err = (x - y).abs() / (1.0 + y.abs());
        assert!(err <= tol, "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn reference_scan_equals_sequential_loop() {
    let device = Default::default();
    for with_state in [false, true] {
        B64::seed(&device, 17 + with_state as u64);
        let input = inputs::<B64>(&device, with_state);
        let (want_y, want_h) = sequential(&input);
        for chunk in [1, 7, 16, 64] {
            let (y, h) = selective_scan_reference(input.clone(), chunk);
            assert_close(&host(&y), &want_y, 1e-10, &format!("y (chunk {chunk})"));
            assert_close(&host(&h), &want_h, 1e-10, &format!("h (chunk {chunk})"));
        }
    }
}

#[test]
fn scan_in_pieces_equals_one_scan() {
    // Carrying the last state into the next call is what prefill + decode rely on.
    let device = Default::default();
    B64::seed(&device, 5);
    let input = inputs::<B64>(&device, true);
    let (y_all, h_all) = selective_scan(input.clone());
    let piece = |start: usize, len: usize, h0| ScanInput {
        u: input.u.clone().narrow(2, start, len),
        delta: input.delta.clone().narrow(2, start, len),
        b: input.b.clone().narrow(2, start, len),
        c: input.c.clone().narrow(2, start, len),
        z: input.z.clone().narrow(2, start, len),
        initial_state: h0,
        ..input.clone()
    };
    let (y1, h1) = selective_scan(piece(0, 20, input.initial_state.clone()));
    let (y2, h2) = selective_scan(piece(20, 1, Some(h1)));
    let (y3, h3) = selective_scan(piece(21, T - 21, Some(h2)));
    let y = Tensor::cat(vec![y1, y2, y3], 2);
    assert_close(&host(&y), &host(&y_all), 1e-10, "y");
    assert_close(&host(&h3), &host(&h_all), 1e-10, "h");
}

#[test]
fn reference_scan_gradient_matches_finite_differences() {
    type AB = Autodiff<B64>;
    let device = Default::default();
    AB::seed(&device, 3);
    let base = inputs::<B64>(&device, true);
    // A fixed random projection of both outputs makes a scalar loss.
    let wy = random::<B64, 3>([BATCH, CH, T], &device);
    let wh = random::<B64, 3>([BATCH, CH, S], &device);
    let loss_of = |inp: ScanInput<B64>| -> f64 {
        let (y, h) = selective_scan(inp);
        let l = (y * wy.clone()).sum() + (h * wh.clone()).sum();
        host(&l)[0]
    };

    let lift = |t: &Tensor<B64, 3>| Tensor::<AB, 3>::from_inner(t.clone()).require_grad();
    let lift2 = |t: &Tensor<B64, 2>| Tensor::<AB, 2>::from_inner(t.clone()).require_grad();
    let lift1 = |t: &Tensor<B64, 1>| Tensor::<AB, 1>::from_inner(t.clone()).require_grad();
    let ad = ScanInput::<AB> {
        u: lift(&base.u),
        delta: lift(&base.delta),
        a: lift2(&base.a),
        b: lift(&base.b),
        c: lift(&base.c),
        d: lift1(&base.d),
        z: lift(&base.z),
        delta_bias: lift1(&base.delta_bias),
        initial_state: base.initial_state.as_ref().map(lift),
    };
    let (y, h) = selective_scan(ad.clone());
    let loss =
        (y * Tensor::from_inner(wy.clone())).sum() + (h * Tensor::from_inner(wh.clone())).sum();
    let grads = loss.backward();

    let eps = 1e-6;
    // (name, analytic gradient, a function that perturbs entry i of that input)
    type Perturb<'a> = Box<dyn Fn(usize, f64) -> ScanInput<B64> + 'a>;
    let bump3 = |t: &Tensor<B64, 3>, i: usize, e: f64| {
        let mut v = host(t);
        v[i] += e;
        Tensor::<B64, 3>::from_data(TensorData::new(v, t.dims()), &device)
    };
    let bump2 = |t: &Tensor<B64, 2>, i: usize, e: f64| {
        let mut v = host(t);
        v[i] += e;
        Tensor::<B64, 2>::from_data(TensorData::new(v, t.dims()), &device)
    };
    let bump1 = |t: &Tensor<B64, 1>, i: usize, e: f64| {
        let mut v = host(t);
        v[i] += e;
        Tensor::<B64, 1>::from_data(TensorData::new(v, t.dims()), &device)
    };
    let cases: Vec<(&str, Vec<f64>, Perturb)> = vec![
        (
            "u",
            host(&ad.u.grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                u: bump3(&base.u, i, e),
                ..base.clone()
            }),
        ),
        (
            "delta",
            host(&ad.delta.grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                delta: bump3(&base.delta, i, e),
                ..base.clone()
            }),
        ),
        (
            "a",
            host(&ad.a.grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                a: bump2(&base.a, i, e),
                ..base.clone()
            }),
        ),
        (
            "b",
            host(&ad.b.grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                b: bump3(&base.b, i, e),
                ..base.clone()
            }),
        ),
        (
            "c",
            host(&ad.c.grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                c: bump3(&base.c, i, e),
                ..base.clone()
            }),
        ),
        (
            "d",
            host(&ad.d.grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                d: bump1(&base.d, i, e),
                ..base.clone()
            }),
        ),
        (
            "z",
            host(&ad.z.grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                z: bump3(&base.z, i, e),
                ..base.clone()
            }),
        ),
        (
            "delta_bias",
            host(&ad.delta_bias.grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                delta_bias: bump1(&base.delta_bias, i, e),
                ..base.clone()
            }),
        ),
        (
            "initial_state",
            host(&ad.initial_state.as_ref().unwrap().grad(&grads).unwrap()),
            Box::new(|i, e| ScanInput {
                initial_state: base.initial_state.as_ref().map(|h| bump3(h, i, e)),
                ..base.clone()
            }),
        ),
    ];
    for (name, analytic, perturb) in cases {
        let n = analytic.len();
        for i in [0, n / 3, n / 2, n - 1] {
            let numeric = (loss_of(perturb(i, eps)) - loss_of(perturb(i, -eps))) / (2.0 * eps);
            let err = (analytic[i] - numeric).abs() / (1e-3 + numeric.abs());
            assert!(
                err < 1e-5,
                "d loss / d {name}[{i}]: autodiff {} vs numeric {numeric}",
                analytic[i]
            );
        }
    }
}

/// ndarray's host-loop scan (`scan::cpu`) equals the tensor-op reference, forward and
/// backward, in f32.
#[test]
fn cpu_loops_equal_tensor_reference() {
    use hymba::scan::reference;
    type B32 = NdArray<f32>;
    let device = Default::default();
    for with_state in [false, true] {
        B32::seed(&device, 29 + with_state as u64);
        let input = inputs::<B32>(&device, with_state);
        let (y_ref, h_ref) = reference::selective_scan_reference(input.clone(), 16);
        let (y, h) = selective_scan(input.clone());
        assert_close(&host(&y), &host(&y_ref), 1e-5, "y");
        assert_close(&host(&h), &host(&h_ref), 1e-5, "h");
        let dy = random::<B32, 3>([BATCH, CH, T], &device);
        let dh = random::<B32, 3>([BATCH, CH, S], &device);
        let want = reference::selective_scan_reference_backward(
            input.clone().into_primitives(),
            dy.clone().into_primitive().tensor(),
            Some(dh.clone().into_primitive().tensor()),
        )
        .into_tensors();
        // NdArray<f32>'s ScanBackend is the host loops of `scan::cpu`.
        let got = hymba::scan::selective_scan_backward(input.clone(), dy, Some(dh));
        for (name, a, b) in [
            ("u", host(&got.u), host(&want.u)),
            ("delta", host(&got.delta), host(&want.delta)),
            ("b", host(&got.b), host(&want.b)),
            ("c", host(&got.c), host(&want.c)),
            ("z", host(&got.z), host(&want.z)),
            ("a", host(&got.a), host(&want.a)),
            ("d", host(&got.d), host(&want.d)),
            ("delta_bias", host(&got.delta_bias), host(&want.delta_bias)),
        ] {
            assert_close(&a, &b, 1e-4, name);
        }
        if with_state {
            let (a, b) = (got.initial_state.unwrap(), want.initial_state.unwrap());
            assert_close(&host(&a), &host(&b), 1e-4, "initial_state");
        }
    }
}
