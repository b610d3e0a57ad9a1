//! `config.json`: parse and validate, then everything a loader derives from a config.
#![no_main]

use hymba::{HymbaConfig, hf_tensor_specs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = HymbaConfig::from_json_str(text) else {
        return;
    };
    let _ = config.num_params();
    let _ = hf_tensor_specs(&config);
    for layer in 0..config.num_hidden_layers {
        let _ = (config.kv_role(layer), config.layer_num_params(layer));
    }
    let again = HymbaConfig::from_json_str(&config.to_json_string()).expect("round trip");
    assert_eq!(again.num_params(), config.num_params());
});
