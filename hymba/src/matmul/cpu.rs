//! The CPU (ndarray) matmul: `general_mat_mul` on strided views, without copies.
//!
//! burn-ndarray 0.21's `float_matmul` reshapes both operands to `[batch, m, k]` first, and its
//! reshape copies whenever the array is not already that exact owned shape, so every product
//! copied its weight at least once (a transposed weight, or one given a unit batch dim, is
//! always copied). At decode, with one row in x, that copy was most of the time: `hymba-125m`
//! copied its ~0.5 GB of weights per generated token. ndarray's `general_mat_mul` takes any
//! strides (matrixmultiply packs its panels from them), so a transposed view costs nothing;
//! and a product with one or two rows (decode) runs as matrix–vector products, since packing
//! the weight into panels would cost more than the product.

use burn::backend::ndarray::NdArrayTensor;
use ndarray::linalg::{general_mat_mul, general_mat_vec_mul};
use ndarray::{ArrayD, ArrayView2, ArrayViewD, Axis, IxDyn, LinalgScalar};

/// Products with at most this many rows run as matrix–vector products, one per row.
const FEW_ROWS: usize = 2;

/// `lhs · rhs` over the last two dims, leading dims broadcast (size 1 against size n), as
/// burn's `float_matmul`. Both operands must hold the same float type (f32 or f64).
pub(crate) fn matmul(lhs: NdArrayTensor, rhs: NdArrayTensor) -> NdArrayTensor {
    match (lhs, rhs) {
        (NdArrayTensor::F32(l), NdArrayTensor::F32(r)) => {
            product(l.view(), r.view()).into_shared().into()
        }
        (NdArrayTensor::F64(l), NdArrayTensor::F64(r)) => {
            product(l.view(), r.view()).into_shared().into()
        }
        _ => panic!("matmul operands must both be f32 or both f64"),
    }
}

fn product<E: LinalgScalar>(lhs: ArrayViewD<'_, E>, rhs: ArrayViewD<'_, E>) -> ArrayD<E> {
    let nd = lhs.ndim();
    assert!(
        nd >= 2 && rhs.ndim() == nd,
        "matmul: operands of rank {nd} and {}",
        rhs.ndim()
    );
    let (m, k, n) = (
        lhs.shape()[nd - 2],
        lhs.shape()[nd - 1],
        rhs.shape()[nd - 1],
    );
    assert_eq!(rhs.shape()[nd - 2], k, "matmul: inner dims differ");
    let batch: Vec<usize> = (0..nd - 2)
        .map(|d| lhs.shape()[d].max(rhs.shape()[d]))
        .collect();
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    let mut out = ArrayD::<E>::zeros(IxDyn(&out_shape));
    let batches: usize = batch.iter().product();
    for flat in 0..batches {
        // The batch index, last dim fastest, and each operand's (broadcast) index.
        let mut rest = flat;
        let mut l = lhs.view();
        let mut r = rhs.view();
        let mut o = out.view_mut();
        for d in (0..nd - 2).rev() {
            let i = rest % batch[d];
            rest /= batch[d];
            let pick = |size: usize| if size == 1 { 0 } else { i };
            l = l.index_axis_move(Axis(d), pick(lhs.shape()[d]));
            r = r.index_axis_move(Axis(d), pick(rhs.shape()[d]));
            o = o.index_axis_move(Axis(d), i);
        }
        let mut o = o
            .into_dimensionality::<ndarray::Ix2>()
            .expect("a 2-D view after indexing the batch dims");
        let (l, r) = (as_2d(l), as_2d(r));
        if m <= FEW_ROWS {
            // Decode: a row or two against a weight. matrixmultiply would pack the whole
            // weight into panels first (more work than the product); a dot product per
            // output runs along W's contiguous rows (`r` is the transposed view Wᵀ).
            for (row, mut out_row) in l.outer_iter().zip(o.outer_iter_mut()) {
                general_mat_vec_mul(E::one(), &r.t(), &row, E::zero(), &mut out_row);
            }
        } else {
            general_mat_mul(E::one(), &l, &r, E::zero(), &mut o);
        }
    }
    out
}

fn as_2d<E>(v: ArrayViewD<'_, E>) -> ArrayView2<'_, E> {
    v.into_dimensionality()
        .expect("a 2-D view after indexing the batch dims")
}
