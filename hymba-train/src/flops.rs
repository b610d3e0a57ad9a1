//! Model FLOPs per text token, for MFU: 6 FLOPs per parameter per token for the matmuls
//! (forward 2, backward 4; the tied LM head counts, the embedding lookup does not), plus
//! attention scores and values over the keys each query sees (global: the causal half,
//! SWA: the window plus the meta tokens). Meta tokens are processed with every sequence
//! but are not text, so their cost is charged to the sequence's text tokens.

use hymba::HymbaConfig;

/// Training FLOPs (forward + backward) per text token at text length `seq_len`.
pub fn train_flops_per_token(config: &HymbaConfig, seq_len: usize) -> f64 {
    let d = config.hidden_size as f64;
    let m = config.num_memory_tokens as f64;
    let n = m + seq_len as f64;
    let embedding = config.vocab_size as f64 * d;
    let dense = config.num_params() as f64 - embedding - m * d;
    let head = embedding; // tied LM head: one V×D matmul per text token
    let per_key = 2.0
        * config.num_attention_heads as f64
        * (config.qk_head_dim() + config.v_head_dim()) as f64;
    let attention: f64 = (0..config.num_hidden_layers)
        .filter(|&i| config.mixer_kind(i).has_attention())
        .map(|i| {
            let keys = if config.is_global(i) {
                (n + 1.0) / 2.0
            } else {
                (config.sliding_window as f64 + 1.0).min((n + 1.0) / 2.0) + m
            };
            per_key * keys
        })
        .sum();
    // Per processed position (meta + text) for the layers, per text token for the head.
    3.0 * ((2.0 * dense + attention) * n / seq_len as f64 + 2.0 * head)
}
