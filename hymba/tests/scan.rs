//! The tensor-op selective scan against a plain sequential loop, and its gradient against
//! finite differences, in f64.
//!
//! f64 only: see `common::scan_inputs` for why this binary must not create `NdArray<f32>`
//! tensors (the f32 host-loop scan is checked in `scan_cpu.rs`).

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use hymba::scan::reference::selective_scan_reference;
use hymba::scan::{ScanInput, selective_scan};

type B64 = NdArray<f64>;

/// Odd sizes: T spans several chunks and ends in a partial one.
const BATCH: usize = 2;
const CH: usize = 5;
const S: usize = 3;
const T: usize = 37;

fn inputs(device: &burn::backend::ndarray::NdArrayDevice, with_state: bool) -> ScanInput<B64> {
    common::scan_inputs((BATCH, CH, S, T), with_state, device)
}

fn host<Bk: Backend, const D: usize>(t: &Tensor<Bk, D>) -> Vec<f64> {
    common::host_f64(t)
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

use common::assert_close_f64 as assert_close;

#[test]
fn reference_scan_equals_sequential_loop() {
    let device = Default::default();
    for with_state in [false, true] {
        B64::seed(&device, 17 + with_state as u64);
        let input = inputs(&device, with_state);
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
    let input = inputs(&device, true);
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
    let base = inputs(&device, true);
    // A fixed random projection of both outputs makes a scalar loss.
    let wy = common::random::<B64, 3>([BATCH, CH, T], &device);
    let wh = common::random::<B64, 3>([BATCH, CH, S], &device);
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
