//! The SSM heads of the hybrid head: Mamba-1 (spec §2.3 "SSM branch"). The input x and the
//! gate z come from the mixer's single `in_proj`; this module owns everything after it up to
//! the gated scan output.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::HymbaBackend;
use crate::config::HymbaConfig;
use crate::conv::causal_conv_silu;
use crate::linear::Linear;
use crate::norm::RmsNorm;
use crate::scan::{ScanInput, selective_scan};

/// Recurrent state of one layer's SSM heads between calls (the cache's SSM part).
#[derive(Debug, Clone)]
pub struct SsmState<B: Backend> {
    /// The last `d_conv − 1` pre-conv inputs, `[batch, d_inner, d_conv − 1]`.
    pub conv: Tensor<B, 3>,
    /// The scan state h, `[batch, d_inner, S]`.
    pub ssm: Tensor<B, 3>,
}

/// Mamba-1 SSM heads: causal depthwise conv + SiLU, x_proj → (Δ, B, C) with their RMSNorms,
/// dt_proj, selective scan with D skip and SiLU(z) gate.
#[derive(Module, Debug)]
pub struct SsmHeads<B: Backend> {
    /// Depthwise conv taps, `[d_inner, 1, d_conv]` (HF `conv1d.weight`).
    pub conv_weight: Param<Tensor<B, 3>>,
    /// Conv bias, `[d_inner]`.
    pub conv_bias: Option<Param<Tensor<B, 1>>>,
    /// `d_inner → R + 2S`, rows ordered Δ (R), B (S), C (S).
    pub x_proj: Linear<B>,
    /// `R → d_inner`.
    pub dt_proj: Linear<B>,
    /// `dt_proj.bias`, `[d_inner]`: passed to the scan as `delta_bias` (softplus inside).
    pub dt_bias: Param<Tensor<B, 1>>,
    /// `[d_inner, S]`; A = −exp(A_log).
    pub a_log: Param<Tensor<B, 2>>,
    /// Skip connection, `[d_inner]`.
    pub d: Param<Tensor<B, 1>>,
    /// RMSNorm on Δ (width R).
    pub dt_norm: RmsNorm<B>,
    /// RMSNorm on B (width S).
    pub b_norm: RmsNorm<B>,
    /// RMSNorm on C (width S).
    pub c_norm: RmsNorm<B>,
    /// Conv width.
    pub d_conv: usize,
    /// Δ rank R.
    pub dt_rank: usize,
    /// State size S.
    pub d_state: usize,
}

impl<B: HymbaBackend> SsmHeads<B> {
    /// Fresh heads with the reference initialisation (spec §1.3): N(0, σ²) weights, zero
    /// biases (including dt_proj's), A_log = log(1..=S) per channel, D = 1.
    pub fn new(config: &HymbaConfig, device: &B::Device) -> Self {
        let (di, s, r, k) = (
            config.d_inner(),
            config.mamba_d_state,
            config.dt_rank(),
            config.mamba_d_conv,
        );
        let std = config.initializer_range;
        let eps = config.rms_norm_eps;
        let a_log: Vec<f32> = (0..di)
            .flat_map(|_| (1..=s).map(|v| (v as f32).ln()))
            .collect();
        Self {
            conv_weight: Param::from_tensor(Tensor::random(
                [di, 1, k],
                Distribution::Normal(0.0, std),
                device,
            )),
            conv_bias: config
                .mamba_conv_bias
                .then(|| Param::from_tensor(Tensor::zeros([di], device))),
            x_proj: Linear::new(di, r + 2 * s, std, device),
            dt_proj: Linear::new(r, di, std, device),
            dt_bias: Param::from_tensor(Tensor::zeros([di], device)),
            a_log: Param::from_tensor(Tensor::from_data(TensorData::new(a_log, [di, s]), device)),
            d: Param::from_tensor(Tensor::ones([di], device)),
            dt_norm: RmsNorm::new(r, eps, device),
            b_norm: RmsNorm::new(s, eps, device),
            c_norm: RmsNorm::new(s, eps, device),
            d_conv: k,
            dt_rank: r,
            d_state: s,
        }
    }

    /// Causal depthwise conv over `[history; x]` followed by SiLU: one operation
    /// ([`causal_conv_silu`], a kernel each way on GPU backends), identical to
    /// `conv1d(groups=d_inner, padding=d_conv−1)` truncated to T; the same code serves
    /// prefill and decode. Its tensor-op twin,
    /// [`causal_conv_silu_reference`](crate::conv::causal_conv_silu_reference) (a sum of
    /// `d_conv` shifted, per-channel-scaled copies and a SiLU), is what the kernels are
    /// tested against.
    ///
    /// It works in the `[batch, T, d_inner]` layout that `in_proj` produces, channels
    /// innermost: every pass reads and writes contiguous rows, where the
    /// `[batch, d_inner, T]` view that `conv1d` wants would be strided.
    ///
    /// # Shapes
    /// - `x`: `[batch, T, d_inner]`, `history`: `[batch, d_inner, d_conv − 1]`
    /// - returns (`[batch, T, d_inner]`, new history)
    fn conv(&self, x: Tensor<B, 3>, history: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [_, t, di] = x.dims();
        let k = self.d_conv;
        let full = Tensor::cat(vec![history.swap_dims(1, 2), x], 1); // [b, k − 1 + T, d]
        let w = self.conv_weight.val().reshape([di, k]);
        let bias = match &self.conv_bias {
            Some(bias) => bias.val(),
            None => Tensor::<B, 1>::zeros([di], &w.device()).cast(w.dtype()),
        };
        let y = causal_conv_silu(full.clone(), w, bias);
        let history = full.narrow(1, t, k - 1).swap_dims(1, 2);
        (y, history)
    }

    /// Runs the SSM heads on x with gate z, continuing from `state` when given.
    ///
    /// # Shapes
    /// - `x`, `z`: `[batch, T, d_inner]` → `[batch, T, d_inner]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        z: Tensor<B, 3>,
        state: Option<SsmState<B>>,
    ) -> (Tensor<B, 3>, SsmState<B>) {
        let [batch, _, di] = x.dims();
        let device = x.device();
        let (history, h0) = match state {
            Some(s) => (s.conv, Some(s.ssm)),
            // In x's dtype: under mixed precision the weights (and x) are bf16 while a fresh
            // tensor gets the device's default float type.
            None => (
                Tensor::<B, 3>::zeros([batch, di, self.d_conv - 1], &device).cast(x.dtype()),
                None,
            ),
        };
        let (xc, conv) = self.conv(x, history); // [b, T, d]
        let xdbl = self.x_proj.forward(xc.clone()); // [b, T, R + 2S]
        let (r, s) = (self.dt_rank, self.d_state);
        let dt = self.dt_norm.forward(xdbl.clone().narrow(2, 0, r));
        let bm = self.b_norm.forward(xdbl.clone().narrow(2, r, s));
        let cm = self.c_norm.forward(xdbl.narrow(2, r + s, s));
        let delta = self.dt_proj.forward(dt); // [b, T, d]
        let a = self.a_log.val().exp().neg();
        let (y, h) = selective_scan(ScanInput {
            u: xc.swap_dims(1, 2),
            delta: delta.swap_dims(1, 2),
            a,
            b: bm.swap_dims(1, 2),
            c: cm.swap_dims(1, 2),
            d: self.d.val(),
            z: z.swap_dims(1, 2),
            delta_bias: self.dt_bias.val(),
            initial_state: h0,
        });
        // Back to `[b, T, d]`, made contiguous (a reshape copies a permuted tensor): the
        // scan's output is time-innermost on the warp kernels (CUDA), and the RMSNorm
        // after it reduces over channels, which would otherwise be a strided reduction.
        let [_, d, t] = y.dims();
        let y = y
            .swap_dims(1, 2)
            .reshape([batch * t, d])
            .reshape([batch, t, d]);
        (y, SsmState { conv, ssm: h })
    }
}
