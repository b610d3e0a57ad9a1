//! DPO: the loss and its gradient on a 2-pair toy batch against the formula computed by
//! hand, `log 2` when the policy is the reference, and the response log-probs of a real
//! model against a host-side log-softmax.

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use hymba::{Hymba, HymbaConfig};
use hymba_train::dpo::{dpo_loss, response_logprobs};

type B = NdArray<f64>;
type AB = Autodiff<B>;

fn t1<Bk: Backend>(v: &[f64]) -> Tensor<Bk, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().expect("floats")
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn dpo_loss_and_gradient_equal_the_hand_computed_values() {
    let beta = 0.1;
    let (pc, pr) = ([-10.0, -22.0], [-15.0, -20.0]);
    let (rc, rr) = ([-12.0, -18.0], [-14.0, -21.0]);
    let policy_c = Tensor::<AB, 1>::from_inner(t1(&pc)).require_grad();
    let policy_r = Tensor::<AB, 1>::from_inner(t1(&pr)).require_grad();
    let (loss, stats) = dpo_loss(policy_c.clone(), policy_r.clone(), t1(&rc), t1(&rr), beta);
    let grads = loss.backward();

    // By hand: z_i = β((π_c − ref_c) − (π_r − ref_r)); L = mean(−log σ(z_i));
    // ∂L/∂π_c,i = −β·σ(−z_i)/N, ∂L/∂π_r,i = +β·σ(−z_i)/N.
    let z: Vec<f64> = (0..2)
        .map(|i| beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])))
        .collect();
    let want_loss = z.iter().map(|&z| -sigmoid(z).ln()).sum::<f64>() / 2.0;
    assert!(
        (stats.loss - want_loss).abs() < 1e-12,
        "{} vs {want_loss}",
        stats.loss
    );
    let dc = host(policy_c.grad(&grads).expect("d chosen"));
    let dr = host(policy_r.grad(&grads).expect("d rejected"));
    for i in 0..2 {
        let g = beta * sigmoid(-z[i]) / 2.0;
        assert!(
            (dc[i] + g).abs() < 1e-12,
            "d chosen[{i}] {} vs {}",
            dc[i],
            -g
        );
        assert!(
            (dr[i] - g).abs() < 1e-12,
            "d rejected[{i}] {} vs {g}",
            dr[i]
        );
    }
    // z = [0.4, −0.5]: one pair ranked right.
    assert_eq!(stats.reward_accuracy, 0.5);
    assert!((stats.margin - (z[0] + z[1]) / 2.0).abs() < 1e-12);
    assert!((stats.chosen_reward - beta * (2.0 - 4.0) / 2.0).abs() < 1e-12);
}

#[test]
fn policy_equal_to_reference_gives_log_2() {
    // The first DPO step: the policy is the SFT model, which is also the reference.
    let config = HymbaConfig::tiny();
    let device = Default::default();
    B::seed(&device, 8);
    let model = Hymba::<B>::new(&config, &device).expect("model");
    let ids: Vec<i64> = (0..2 * 20).map(|i| 1 + (i * 13 % 200) as i64).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 20]), &device);
    let mut mask = vec![0.0f64; 2 * 19];
    mask[2 * 19 - 8..].iter_mut().for_each(|m| *m = 1.0);
    mask[10..19].iter_mut().for_each(|m| *m = 1.0);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [2, 19]), &device);
    let lp = response_logprobs(&model, ids, mask);
    // Pair 0: (row 0 chosen, row 1 rejected); pair 1 the other way round.
    let v = host(lp.clone());
    let (c, r) = (t1::<B>(&[v[0], v[1]]), t1::<B>(&[v[1], v[0]]));
    let (_, stats) = dpo_loss(c.clone(), r.clone(), c, r, 0.1);
    assert!(
        (stats.loss - std::f64::consts::LN_2).abs() < 1e-12,
        "{}",
        stats.loss
    );
    assert_eq!(stats.margin, 0.0);
}

#[test]
fn response_logprobs_sum_only_the_masked_targets() {
    let config = HymbaConfig::tiny();
    let device = Default::default();
    B::seed(&device, 9);
    let model = Hymba::<B>::new(&config, &device).expect("model");
    let row: Vec<i64> = (0..12).map(|i| 1 + (i * 29 % 300) as i64).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(row.clone(), [1, 12]), &device);
    let mask_v: Vec<f64> = (0..11)
        .map(|t| f64::from(u8::from((5..9).contains(&t))))
        .collect();
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask_v.clone(), [1, 11]), &device);
    let got = host(response_logprobs(&model, ids.clone(), mask))[0];
    let logits = host(model.forward(ids));
    let v = config.vocab_size;
    let mut want = 0.0;
    for t in 0..11 {
        if mask_v[t] == 0.0 {
            continue;
        }
        let l = &logits[t * v..(t + 1) * v];
        let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        want += l[row[t + 1] as usize] - lse;
    }
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
}
