//! Safetensors weights through our loader: header, tensor list and shapes against the model's
//! config, dtype conversion into the model (a 15k-parameter config, `micro_config.json`).
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use burn::backend::NdArray;
use hymba::{Hymba, HymbaConfig};
use libfuzzer_sys::fuzz_target;

type B = NdArray<f32>;

fn model() -> &'static Hymba<B> {
    static MODEL: OnceLock<Hymba<B>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config =
            HymbaConfig::from_json_str(include_str!("../micro_config.json")).expect("micro config");
        Hymba::new(&config, &Default::default()).expect("micro model")
    })
}

fuzz_target!(|data: &[u8]| {
    // The loader memory-maps a file, as it does for real checkpoints.
    let path = std::env::temp_dir().join(format!("hymba-fuzz-{}.safetensors", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(data));
    if written.is_err() {
        return;
    }
    let _ = hymba::weights::load_safetensors_into(model().clone(), &path);
});
