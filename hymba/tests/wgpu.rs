//! The same tiny model on burn's wgpu backend computes what it computes on ndarray.
//!
//! On a machine without a GPU this runs on Mesa's lavapipe software Vulkan driver
//! (`.ci/run` installs it), so "runs on wgpu" is checked on every submission.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Wgpu;
use burn::backend::wgpu::WgpuDevice;
use burn::prelude::Backend;
use common::*;
use hymba::{HymbaCache, HymbaConfig};

#[test]
fn wgpu_logits_equal_ndarray_logits() {
    let cpu_model = tiny_model(13);
    let device = WgpuDevice::DefaultDevice;
    let gpu_model = cpu_model
        .to_backend::<Wgpu<f32, i32>>(&device)
        .expect("same architecture");
    let config = HymbaConfig::tiny();
    let rows = ids(2, 3 * config.sliding_window + 5, config.vocab_size, 2);
    let cpu = to_vec(cpu_model.forward(to_tensor::<B>(&rows, &Default::default())));
    let gpu = to_vec(gpu_model.forward(to_tensor::<Wgpu<f32, i32>>(&rows, &device)));
    let diff = max_abs_diff(&cpu, &gpu);
    assert!(diff <= 1e-4, "wgpu vs ndarray: max |diff| = {diff}");

    // Decode through the cache on wgpu as well.
    let mut cache = HymbaCache::new(&config);
    let split = rows[0].len() - 3;
    let head: Vec<Vec<u32>> = rows.iter().map(|r| r[..split].to_vec()).collect();
    gpu_model.forward_cached(to_tensor::<Wgpu<f32, i32>>(&head, &device), &mut cache);
    let v = config.vocab_size;
    for t in split..rows[0].len() {
        let step: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[t]]).collect();
        let logits = to_vec(
            gpu_model.forward_cached(to_tensor::<Wgpu<f32, i32>>(&step, &device), &mut cache),
        );
        for (b, row) in logits.chunks(v).enumerate() {
            let off = (b * rows[0].len() + t) * v;
            let d = max_abs_diff(row, &cpu[off..off + v]);
            assert!(d <= 1e-4, "wgpu decode step {t}, row {b}: max |diff| = {d}");
        }
    }
}

/// The design-roadmap variants (single-branch layers, no meta tokens) run on wgpu too.
#[test]
fn roadmap_variants_on_wgpu_equal_ndarray() {
    use hymba::roadmap::Roadmap;
    let device = WgpuDevice::DefaultDevice;
    for step in [
        Roadmap::AttentionOnly,
        Roadmap::SsmOnly,
        Roadmap::Sequential,
    ] {
        let config = step.config(&HymbaConfig::tiny());
        B::seed(&Default::default(), 21);
        let cpu_model = hymba::Hymba::<B>::new(&config, &Default::default()).expect("valid");
        let gpu_model = cpu_model
            .to_backend::<Wgpu<f32, i32>>(&device)
            .expect("same architecture");
        let rows = ids(2, 40, config.vocab_size, 3);
        let cpu = to_vec(cpu_model.forward(to_tensor::<B>(&rows, &Default::default())));
        let gpu = to_vec(gpu_model.forward(to_tensor::<Wgpu<f32, i32>>(&rows, &device)));
        let diff = max_abs_diff(&cpu, &gpu);
        assert!(diff <= 1e-4, "{}: max |diff| = {diff}", step.label());
    }
}
