//! `config.json` in and out: HF key names, presets, and errors (never panics) on bad input.

use hymba::{HymbaConfig, HymbaError};

fn tiny_json() -> serde_json::Value {
    serde_json::from_str(&HymbaConfig::tiny().to_json_string()).expect("valid JSON")
}

fn parse(v: &serde_json::Value) -> Result<HymbaConfig, HymbaError> {
    HymbaConfig::from_json_str(&v.to_string())
}

fn error_of(mutate: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = tiny_json();
    mutate(&mut v);
    match parse(&v) {
        Ok(_) => panic!("bad config accepted: {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn presets_round_trip_through_config_json() {
    for name in hymba::config::PRESETS {
        let config = HymbaConfig::preset(name).expect("preset exists");
        let back = HymbaConfig::from_json_str(&config.to_json_string()).expect("round trip");
        assert_eq!(config, back, "{name}");
    }
}

#[test]
fn hf_key_names_are_used() {
    let v: serde_json::Value =
        serde_json::from_str(&HymbaConfig::hymba_1_5b().to_json_string()).expect("json");
    for (key, value) in [
        ("num_memory_tokens", serde_json::json!(128)),
        ("global_attn_idx", serde_json::json!([0, 15, 31])),
        ("sliding_window", serde_json::json!(1024)),
        ("mamba_dt_rank", serde_json::json!(100)),
        ("hidden_size", serde_json::json!(1600)),
        ("rope_type", serde_json::json!("ntk")),
    ] {
        assert_eq!(v[key], value, "{key}");
    }
    assert_eq!(v["kv_reuse_group"][7], serde_json::json!([16, 17, 18]));
}

#[test]
fn unknown_keys_are_kept() {
    let mut v = tiny_json();
    v["torch_dtype"] = serde_json::json!("bfloat16");
    let config = parse(&v).expect("extra keys are fine");
    let back: serde_json::Value = serde_json::from_str(&config.to_json_string()).expect("json");
    assert_eq!(back["torch_dtype"], "bfloat16");
}

#[test]
fn dt_rank_auto_is_hidden_over_16() {
    let mut v = tiny_json();
    v["mamba_dt_rank"] = serde_json::json!("auto");
    assert_eq!(parse(&v).expect("auto is valid").dt_rank(), 4);
}

#[test]
fn bad_configs_are_errors_naming_the_key() {
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Box<dyn FnOnce(&mut serde_json::Value)>)> = vec![
        (
            "hidden_size",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("hidden_size");
            }),
        ),
        (
            "hidden_size",
            Box::new(|v| v["hidden_size"] = serde_json::json!(-64)),
        ),
        (
            "num_attention_heads",
            Box::new(|v| v["num_attention_heads"] = serde_json::json!(5)),
        ),
        (
            "num_key_value_heads",
            Box::new(|v| v["num_key_value_heads"] = serde_json::json!(3)),
        ),
        (
            "global_attn_idx",
            Box::new(|v| v["global_attn_idx"] = serde_json::json!([0, 4])),
        ),
        (
            "sliding_window",
            Box::new(|v| v["sliding_window"] = serde_json::json!(0)),
        ),
        (
            "kv_reuse_group",
            Box::new(|v| v["kv_reuse_group"] = serde_json::json!([[2, 3]])),
        ),
        (
            "kv_reuse_group",
            Box::new(|v| v["kv_reuse_group"] = serde_json::json!([[1, 2], [0, 2]])),
        ),
        (
            "kv_reuse_group",
            Box::new(|v| v["kv_reuse_group"] = serde_json::json!([[2, 1]])),
        ),
        (
            "mamba_dt_rank",
            Box::new(|v| v["mamba_dt_rank"] = serde_json::json!("huge")),
        ),
        (
            "num_experts",
            Box::new(|v| v["num_experts"] = serde_json::json!(4)),
        ),
        (
            "vocab_size",
            Box::new(|v| v["vocab_size"] = serde_json::json!(0)),
        ),
    ];
    for (key, mutate) in cases {
        let message = error_of(mutate);
        assert!(
            message.contains(key),
            "error for `{key}` does not name it: {message}"
        );
    }
}

#[test]
fn unknown_preset_is_an_error() {
    let err = HymbaConfig::preset("hymba-7b").unwrap_err();
    assert!(err.to_string().contains("hymba-7b") && err.to_string().contains("tiny"));
}

#[test]
fn config_file_errors_name_the_path() {
    let err = HymbaConfig::from_file("/nonexistent/config.json").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/config.json"),
        "{err}"
    );
}
