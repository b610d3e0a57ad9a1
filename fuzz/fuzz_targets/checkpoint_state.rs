//! A step checkpoint's `checksums.json` and `state.json`, and resuming the data sampler
//! from the state.
#![no_main]

use std::path::Path;

use hymba_datasets::WindowSampler;
use hymba_datasets::durable::Checksums;
use hymba_train::checkpoint::TrainState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Checksums::from_json_str(text, Path::new("checksums.json"));
    let Ok(state) = serde_json::from_str::<TrainState>(text) else {
        return;
    };
    // A sampler saved for a modest data set: resume it and draw past an epoch boundary.
    let windows = state.sampler.num_windows;
    if windows > 1 << 16 {
        return;
    }
    if let Ok(mut sampler) = WindowSampler::resume(state.sampler, windows as usize) {
        for _ in 0..(2 * windows).min(300) / 7 + 1 {
            let _ = sampler.next_batch(7);
        }
    }
});
