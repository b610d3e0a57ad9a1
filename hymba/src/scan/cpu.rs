//! The scan on the CPU as plain loops over host memory: ndarray's `ScanBackend`.
//!
//! The tensor-op reference spends its time in per-op overhead (one small tensor op per time
//! step); these loops do the same arithmetic in f32 with no allocation per step, ≈ 20×
//! faster on the main job's shapes. `tests/scan.rs` checks them against the reference.

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorMetadata, TensorPrimitive};

use super::{ScanGrads, ScanPrimitives};

fn host<B: Backend>(p: FloatTensor<B>) -> (Vec<f32>, Vec<usize>) {
    let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(p.clone()));
    let dims = p.shape().as_slice().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default();
    (data, dims)
}

fn device_of<B: Backend>(p: &FloatTensor<B>) -> B::Device {
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(p.clone())).device()
}

/// `data` as a tensor of `dtype` (the loops run in f32; results go back in the dtype of the
/// input they belong to, as the GPU kernels return them).
fn back<B: Backend>(
    data: Vec<f32>,
    dims: &[usize],
    dtype: DType,
    device: &B::Device,
) -> FloatTensor<B> {
    let t = match dims.len() {
        1 => Tensor::<B, 1>::from_data(TensorData::new(data, [dims[0]]), device).into_primitive(),
        2 => Tensor::<B, 2>::from_data(TensorData::new(data, [dims[0], dims[1]]), device)
            .into_primitive(),
        _ => Tensor::<B, 3>::from_data(TensorData::new(data, [dims[0], dims[1], dims[2]]), device)
            .into_primitive(),
    };
    let t = t.tensor();
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, dtype.into())
    }
}

fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Inputs on the host.
struct Host {
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    z: Vec<f32>,
    bias: Vec<f32>,
    h0: Option<Vec<f32>>,
    /// (batch, d_inner, S, T)
    dims: (usize, usize, usize, usize),
}

impl Host {
    fn new<B: Backend>(input: ScanPrimitives<B>) -> Self {
        let (u, ud) = host::<B>(input.u);
        let (a, ad) = host::<B>(input.a);
        Self {
            dims: (ud[0], ud[1], ad[1], ud[2]),
            u,
            a,
            delta: host::<B>(input.delta).0,
            b: host::<B>(input.b).0,
            c: host::<B>(input.c).0,
            d: host::<B>(input.d).0,
            z: host::<B>(input.z).0,
            bias: host::<B>(input.delta_bias).0,
            h0: input.initial_state.map(|h| host::<B>(h).0),
        }
    }

    /// States h_t of channel (bi, di) into `hs` (`T × S`), y' into `yp`; returns nothing,
    /// leaves the last state in `hs[(T−1)·S..]`.
    fn forward_channel(&self, bi: usize, di: usize, hs: &mut [f32], yp: &mut [f32]) {
        let (_, dn, s, t) = self.dims;
        let row = (bi * dn + di) * t;
        let mut h: Vec<f32> = match &self.h0 {
            Some(h0) => h0[(bi * dn + di) * s..][..s].to_vec(),
            None => vec![0.0; s],
        };
        for ti in 0..t {
            let dt = softplus(self.delta[row + ti] + self.bias[di]);
            let du = dt * self.u[row + ti];
            let mut acc = 0.0;
            for (si, hv) in h.iter_mut().enumerate() {
                let bc = (bi * s + si) * t + ti;
                *hv = (dt * self.a[di * s + si]).exp() * *hv + du * self.b[bc];
                acc += *hv * self.c[bc];
            }
            hs[ti * s..][..s].copy_from_slice(&h);
            yp[ti] = acc + self.d[di] * self.u[row + ti];
        }
    }
}

/// Forward scan on the host; same contract as `ScanBackend::selective_scan`.
pub fn selective_scan<B: Backend>(input: ScanPrimitives<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let device = device_of::<B>(&input.u);
    let (y_dtype, f32_) = (input.z.dtype(), DType::F32);
    let x = Host::new(input);
    let (bn, dn, s, t) = x.dims;
    let mut y = vec![0.0; bn * dn * t];
    let mut last = vec![0.0; bn * dn * s];
    let (mut hs, mut yp) = (vec![0.0; t * s], vec![0.0; t]);
    for bi in 0..bn {
        for di in 0..dn {
            x.forward_channel(bi, di, &mut hs, &mut yp);
            let row = (bi * dn + di) * t;
            for ti in 0..t {
                let z = x.z[row + ti];
                y[row + ti] = yp[ti] * z * sigmoid(z);
            }
            last[(bi * dn + di) * s..][..s].copy_from_slice(&hs[(t - 1) * s..]);
        }
    }
    (
        back::<B>(y, &[bn, dn, t], y_dtype, &device),
        back::<B>(last, &[bn, dn, s], f32_, &device),
    )
}

/// Backward scan on the host; same contract as `ScanBackend::selective_scan_backward`, by
/// the formulas of [`super::reference_vjp`].
pub fn selective_scan_backward<B: Backend>(
    input: ScanPrimitives<B>,
    dy: FloatTensor<B>,
    d_last_state: Option<FloatTensor<B>>,
) -> ScanGrads<B> {
    let device = device_of::<B>(&input.u);
    let had_state = input.initial_state.is_some();
    // Each gradient goes back in its input's dtype.
    let dtype_of = |p: &FloatTensor<B>| p.dtype();
    let (t_u, t_delta, t_a) = (
        dtype_of(&input.u),
        dtype_of(&input.delta),
        dtype_of(&input.a),
    );
    let (t_b, t_c, t_d) = (dtype_of(&input.b), dtype_of(&input.c), dtype_of(&input.d));
    let (t_z, t_bias) = (dtype_of(&input.z), dtype_of(&input.delta_bias));
    let t_h0 = input.initial_state.as_ref().map_or(DType::F32, dtype_of);
    let x = Host::new(input);
    let dy = host::<B>(dy).0;
    let dh_last = d_last_state.map(|p| host::<B>(p).0);
    let (bn, dn, s, t) = x.dims;
    let mut g_u = vec![0.0; bn * dn * t];
    let mut g_pre = vec![0.0; bn * dn * t];
    let mut g_z = vec![0.0; bn * dn * t];
    let mut g_b = vec![0.0; bn * s * t];
    let mut g_c = vec![0.0; bn * s * t];
    let mut g_a = vec![0.0; dn * s];
    let mut g_d = vec![0.0; dn];
    let mut g_bias = vec![0.0; dn];
    let mut g_h0 = vec![0.0; bn * dn * s];
    let (mut hs, mut yp) = (vec![0.0; t * s], vec![0.0; t]);
    let mut g = vec![0.0; s];
    let mut decay_next = vec![1.0; s];
    for bi in 0..bn {
        for di in 0..dn {
            x.forward_channel(bi, di, &mut hs, &mut yp);
            let row = (bi * dn + di) * t;
            let hrow = (bi * dn + di) * s;
            match &dh_last {
                Some(dh) => g.copy_from_slice(&dh[hrow..][..s]),
                None => g.fill(0.0),
            }
            for ti in (0..t).rev() {
                let i = row + ti;
                let pre = x.delta[i] + x.bias[di];
                let dt = softplus(pre);
                let (u, z) = (x.u[i], x.z[i]);
                let sz = sigmoid(z);
                g_z[i] = dy[i] * yp[ti] * sz * (1.0 + z * (1.0 - sz));
                let dyp = dy[i] * z * sz;
                g_d[di] += dyp * u;
                let (mut du_s, mut d_delta) = (0.0, 0.0);
                for si in 0..s {
                    let bc = (bi * s + si) * t + ti;
                    let an = x.a[di * s + si];
                    if ti + 1 < t {
                        g[si] *= decay_next[si];
                    }
                    g[si] += dyp * x.c[bc];
                    let decay = (dt * an).exp();
                    let h_prev = if ti > 0 {
                        hs[(ti - 1) * s + si]
                    } else {
                        x.h0.as_ref().map_or(0.0, |h0| h0[hrow + si])
                    };
                    let gh = g[si] * decay * h_prev;
                    g_b[bc] += g[si] * dt * u;
                    g_c[bc] += dyp * hs[ti * s + si];
                    du_s += g[si] * x.b[bc];
                    d_delta += gh * an + g[si] * x.b[bc] * u;
                    g_a[di * s + si] += gh * dt;
                    decay_next[si] = decay;
                }
                g_u[i] = dyp * x.d[di] + du_s * dt;
                g_pre[i] = d_delta * sigmoid(pre);
                g_bias[di] += g_pre[i];
            }
            for si in 0..s {
                g_h0[hrow + si] = decay_next[si] * g[si];
            }
        }
    }
    ScanPrimitives {
        u: back::<B>(g_u, &[bn, dn, t], t_u, &device),
        delta: back::<B>(g_pre, &[bn, dn, t], t_delta, &device),
        a: back::<B>(g_a, &[dn, s], t_a, &device),
        b: back::<B>(g_b, &[bn, s, t], t_b, &device),
        c: back::<B>(g_c, &[bn, s, t], t_c, &device),
        d: back::<B>(g_d, &[dn], t_d, &device),
        z: back::<B>(g_z, &[bn, dn, t], t_z, &device),
        delta_bias: back::<B>(g_bias, &[dn], t_bias, &device),
        initial_state: had_state.then(|| back::<B>(g_h0, &[bn, dn, s], t_h0, &device)),
    }
}
