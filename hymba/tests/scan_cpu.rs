//! ndarray's host-loop selective scan (`scan::cpu`, what `NdArray<f32>` runs) against the
//! tensor-op reference, forward and backward. f32 only (see `common::scan_inputs`).

mod common;

use burn::backend::NdArray;
use burn::prelude::*;
use hymba::scan::{reference, reference_vjp, selective_scan};

type B32 = NdArray<f32>;

/// Odd sizes: T spans several chunks of the reference and ends in a partial one.
const BATCH: usize = 2;
const CH: usize = 5;
const S: usize = 3;
const T: usize = 37;

/// ndarray's host-loop scan (`scan::cpu`) equals the tensor-op reference, forward and
/// backward, in f32.
#[test]
fn cpu_loops_equal_tensor_reference() {
    let device = Default::default();
    for with_state in [false, true] {
        B32::seed(&device, 29 + with_state as u64);
        let input = common::scan_inputs::<B32>((BATCH, CH, S, T), with_state, &device);
        let (y_ref, h_ref) = reference::selective_scan_reference(input.clone(), 16);
        let (y, h) = selective_scan(input.clone());
        common::assert_close_f64(&common::host_f64(&y), &common::host_f64(&y_ref), 1e-5, "y");
        common::assert_close_f64(&common::host_f64(&h), &common::host_f64(&h_ref), 1e-5, "h");
        let dy = common::random::<B32, 3>([BATCH, CH, T], &device);
        let dh = common::random::<B32, 3>([BATCH, CH, S], &device);
        let want = reference_vjp::selective_scan_reference_backward(
            input.clone().into_primitives(),
            dy.clone().into_primitive().tensor(),
            Some(dh.clone().into_primitive().tensor()),
        )
        .into_tensors();
        // NdArray<f32>'s ScanBackend is the host loops of `scan::cpu`.
        let got = hymba::scan::selective_scan_backward(input.clone(), dy, Some(dh));
        for (name, a, b) in [
            ("u", common::host_f64(&got.u), common::host_f64(&want.u)),
            (
                "delta",
                common::host_f64(&got.delta),
                common::host_f64(&want.delta),
            ),
            ("b", common::host_f64(&got.b), common::host_f64(&want.b)),
            ("c", common::host_f64(&got.c), common::host_f64(&want.c)),
            ("z", common::host_f64(&got.z), common::host_f64(&want.z)),
            ("a", common::host_f64(&got.a), common::host_f64(&want.a)),
            ("d", common::host_f64(&got.d), common::host_f64(&want.d)),
            (
                "delta_bias",
                common::host_f64(&got.delta_bias),
                common::host_f64(&want.delta_bias),
            ),
        ] {
            common::assert_close_f64(&a, &b, 1e-4, name);
        }
        if with_state {
            let (a, b) = (got.initial_state.unwrap(), want.initial_state.unwrap());
            common::assert_close_f64(
                &common::host_f64(&a),
                &common::host_f64(&b),
                1e-4,
                "initial_state",
            );
        }
    }
}
