//! SFT's loss mask: on a packed sequence of two chat examples, the loss is the mean NLL of
//! the assistant tokens only; tokens outside assistant spans that no assistant token sees
//! (the second example's user turn, the padding) change nothing, while an assistant token
//! does change the loss.

use burn::backend::NdArray;
use burn::prelude::*;
use hymba::{Hymba, HymbaConfig};
use hymba_datasets::{Message, Role, pack, tokenize_chat};

type B = NdArray<f32>;

fn loss(model: &Hymba<B>, ids: &[u32], mask: &[u8]) -> f32 {
    let device = Default::default();
    let t = ids.len();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, t]),
        &device,
    );
    let m: Vec<f32> = mask[1..].iter().map(|&m| f32::from(m)).collect();
    let m = Tensor::<B, 2>::from_data(TensorData::new(m, [1, t - 1]), &device);
    model.forward_loss(ids, Some(m)).into_scalar()
}

#[test]
fn only_assistant_tokens_carry_loss() {
    let tok = hymba_datasets::default_tokenizer().expect("tokenizer");
    let first = tokenize_chat(
        &tok,
        &[
            Message::new(Role::User, "What is two plus two?"),
            Message::new(Role::Assistant, "Four."),
        ],
    )
    .expect("first example");
    // The second example is cut before its assistant turn: only its user turn remains.
    let second = tokenize_chat(
        &tok,
        &[
            Message::new(Role::User, "And three plus three, please?"),
            Message::new(Role::Assistant, "Six."),
        ],
    )
    .expect("second example");
    let user_only = second
        .mask
        .iter()
        .position(|&m| m == 1)
        .expect("assistant span");
    let mut trailing = second.clone();
    trailing.ids.truncate(user_only);
    trailing.mask.truncate(user_only);
    let seq_len = first.len() + trailing.len() + 4;
    let packed = pack([first.clone(), trailing.clone()], seq_len, 0).expect("pack");
    assert_eq!(packed.sequences.len(), 1);
    let seq = &packed.sequences[0];
    let last_target = seq.mask.iter().rposition(|&m| m == 1).expect("loss tokens");
    assert_eq!(
        last_target,
        first.len() - 1,
        "the first example's EOS is the last target"
    );

    let config = HymbaConfig {
        vocab_size: tok.vocab_size(),
        ..HymbaConfig::tiny()
    };
    let device = Default::default();
    B::seed(&device, 4);
    let model = Hymba::<B>::new(&config, &device).expect("model");
    let base = loss(&model, &seq.ids, &seq.mask);

    // The masked mean by hand, from the unmasked per-token losses.
    let n = seq.ids.len();
    let ids_t = Tensor::<B, 2, Int>::from_data(
        TensorData::new(seq.ids.iter().map(|&i| i as i64).collect(), [1, n]),
        &device,
    );
    let logp =
        burn::tensor::activation::log_softmax(model.forward(ids_t.clone()).narrow(1, 0, n - 1), 2)
            .gather(2, ids_t.narrow(1, 1, n - 1).reshape([1, n - 1, 1]));
    let nll: Vec<f32> = logp.into_data().to_vec().expect("floats");
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    for t in 1..n {
        if seq.mask[t] == 1 {
            sum -= f64::from(nll[t - 1]);
            count += 1.0;
        }
    }
    assert!(
        (f64::from(base) - sum / count).abs() < 1e-5,
        "{base} vs {}",
        sum / count
    );

    // Everything after the last target (the second user turn, the padding) changes nothing.
    let mut changed = seq.ids.clone();
    for id in &mut changed[last_target + 1..] {
        *id = 1 + (*id * 7 + 3) % (config.vocab_size as u32 - 1);
    }
    assert_ne!(changed, seq.ids);
    assert_eq!(loss(&model, &changed, &seq.mask), base);

    // An assistant token does.
    let mut changed = seq.ids.clone();
    let answer = seq
        .mask
        .iter()
        .position(|&m| m == 1)
        .expect("assistant token");
    changed[answer] = 1 + (changed[answer] * 7 + 3) % (config.vocab_size as u32 - 1);
    assert_ne!(loss(&model, &changed, &seq.mask), base);
}
