//! The model's matmul (`hymba::matmul::matmul`) against burn's `Tensor::matmul`, forward and
//! gradients, in f64 on the CPU: `NdArray<f64>` routes through the crate's own autodiff node
//! (broadcast weights folded into one product, transposed views, batched and broadcast
//! operands). The CUDA (cuBLAS) path is checked by `matmul_gpu.rs`.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use hymba::matmul::matmul;

type B64 = NdArray<f64>;
type AB = Autodiff<B64>;

/// (lhs shape, rhs shape, lhs given transposed, rhs given transposed)
const CASES: [([usize; 4], [usize; 4], bool, bool); 9] = [
    // A projection: activations [b, t, in] · Wᵀ broadcast over the batch.
    ([1, 3, 5, 7], [1, 1, 7, 4], false, true),
    ([2, 3, 5, 7], [1, 1, 7, 4], false, false),
    // Batched, equal batch dims (attention-like).
    ([2, 3, 5, 7], [2, 3, 7, 4], false, false),
    ([2, 3, 5, 7], [2, 3, 7, 4], true, true),
    // The activations broadcast instead.
    ([1, 1, 5, 7], [2, 3, 7, 4], true, false),
    // Odd sizes, single matrix.
    ([1, 1, 13, 1], [1, 1, 1, 11], false, false),
    // Decode: one or two rows against a transposed weight (the CPU path runs these as
    // matrix-vector products), also with batch dims and a transposed row.
    ([1, 1, 1, 7], [1, 1, 7, 4], false, true),
    ([2, 3, 2, 7], [1, 1, 7, 4], false, true),
    ([2, 1, 1, 7], [2, 1, 7, 4], true, false),
];

/// A `[.., r, c]` tensor, optionally built as the transpose of a `[.., c, r]` one (a view
/// with swapped strides, as `Linear` passes `Wᵀ`).
fn operand(
    shape: [usize; 4],
    transposed: bool,
    device: &burn::backend::ndarray::NdArrayDevice,
) -> Tensor<B64, 4> {
    if transposed {
        let [a, b, r, c] = shape;
        common::random::<B64, 4>([a, b, c, r], device).swap_dims(2, 3)
    } else {
        common::random(shape, device)
    }
}

#[test]
fn matmul_and_its_gradients_equal_burns() {
    let device = Default::default();
    B64::seed(&device, 41);
    for (ls, rs, lt, rt) in CASES {
        let what = format!(
            "{ls:?}{} · {rs:?}{}",
            if lt { "ᵀ" } else { "" },
            if rt { "ᵀ" } else { "" }
        );
        let (lhs, rhs) = (operand(ls, lt, &device), operand(rs, rt, &device));
        let out_dims = [ls[0].max(rs[0]), ls[1].max(rs[1]), ls[2], rs[3]];
        let weight = common::random::<B64, 4>(out_dims, &device);

        let grads_of = |ours: bool| {
            let l = Tensor::<AB, 4>::from_inner(lhs.clone()).require_grad();
            let r = Tensor::<AB, 4>::from_inner(rhs.clone()).require_grad();
            let out = if ours {
                matmul(l.clone(), r.clone())
            } else {
                l.clone().matmul(r.clone())
            };
            assert_eq!(out.dims(), out_dims, "{what}: output shape");
            let value = common::host_f64(&out.clone().inner());
            let g = (out * Tensor::from_inner(weight.clone())).sum().backward();
            let dl = l.grad(&g).expect("lhs gradient");
            let dr = r.grad(&g).expect("rhs gradient");
            assert_eq!(dl.dims(), ls, "{what}: lhs gradient shape");
            assert_eq!(dr.dims(), rs, "{what}: rhs gradient shape");
            (value, common::host_f64(&dl), common::host_f64(&dr))
        };
        let (out, dl, dr) = grads_of(true);
        let (want_out, want_dl, want_dr) = grads_of(false);
        common::assert_close_f64(&out, &want_out, 1e-12, &format!("{what}: out"));
        common::assert_close_f64(&dl, &want_dl, 1e-12, &format!("{what}: d lhs"));
        common::assert_close_f64(&dr, &want_dr, 1e-12, &format!("{what}: d rhs"));
    }
}

#[test]
fn untracked_weight_gets_no_gradient_and_tracked_input_does() {
    // A frozen weight (e.g. the DPO reference model) must not be needed for dX, and vice versa.
    let device = Default::default();
    B64::seed(&device, 43);
    let x = Tensor::<AB, 3>::from_inner(common::random([2, 5, 7], &device)).require_grad();
    let w = Tensor::<AB, 3>::from_inner(common::random([1, 7, 3], &device));
    let g = matmul(x.clone(), w.clone()).sum().backward();
    assert!(w.grad(&g).is_none());
    let dx = common::host_f64(&x.grad(&g).expect("x gradient"));
    // d/dx sum(x·w) = 1·wᵀ: every row of dx is the row sums of w.
    let w_rows: Vec<f64> = common::host_f64(&w.inner().sum_dim(2));
    for (i, v) in dx.iter().enumerate() {
        assert!(
            (v - w_rows[i % 7]).abs() < 1e-12,
            "dx[{i}] = {v}, want {}",
            w_rows[i % 7]
        );
    }
}

/// The LM head's padding (`matmul_wt_padded`: W's rows padded with zeros to a multiple, the
/// padding's columns cut off again) gives `x · Wᵀ` and the same gradients for x and W, with
/// an odd number of rows as the 32,001-word vocabulary has, padded to 8 and to 16; a
/// multiple W's rows already are is the plain product.
#[test]
fn padded_output_rows_give_the_plain_product_and_gradients() {
    use hymba::matmul::{matmul_wt, matmul_wt_padded};
    let device = Default::default();
    B64::seed(&device, 17);
    let x = Tensor::<B64, 3>::random([2, 3, 6], burn::tensor::Distribution::Default, &device);
    let w = Tensor::<B64, 2>::random([13, 6], burn::tensor::Distribution::Default, &device);
    // A weighting of the outputs, so that every logit's gradient differs.
    let mix = Tensor::<B64, 3>::random([2, 3, 13], burn::tensor::Distribution::Default, &device);
    let run = |multiple: Option<usize>| {
        let (x, w) = (
            Tensor::<AB, 3>::from_inner(x.clone()).require_grad(),
            Tensor::<AB, 2>::from_inner(w.clone()).require_grad(),
        );
        let y = match multiple {
            Some(m) => matmul_wt_padded(x.clone(), w.clone(), m),
            None => matmul_wt(x.clone(), w.clone()),
        };
        assert_eq!(y.dims(), [2, 3, 13]);
        let grads = (y.clone() * Tensor::from_inner(mix.clone()))
            .sum()
            .backward();
        let values = |t: Tensor<B64, 3>| t.into_data().to_vec::<f64>().expect("f64");
        (
            values(y.inner()),
            values(x.grad(&grads).expect("x grad")),
            w.grad(&grads)
                .expect("w grad")
                .into_data()
                .to_vec::<f64>()
                .expect("f64"),
        )
    };
    let plain = run(None);
    for multiple in [8, 16, 13, 1] {
        let padded = run(Some(multiple));
        for (what, got, want) in [
            ("output", &padded.0, &plain.0),
            ("d x", &padded.1, &plain.1),
            ("d w", &padded.2, &plain.2),
        ] {
            assert_eq!(got.len(), want.len(), "{what}, multiple {multiple}");
            let diff = got
                .iter()
                .zip(want)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-12,
                "{what}, multiple {multiple}: max |diff| {diff}"
            );
        }
    }
}
