//! HF checkpoint interop (`hymba::weights`): save → load round trips are bit-exact, a file
//! written by Python's `safetensors` loads and re-saves byte for byte, the tensor table is
//! the spec's (§5), and every broken checkpoint is an error naming what is wrong.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use common::*;
use hymba::weights::{
    self, INDEX_FILE, LM_HEAD, SaveDtype, SaveOptions, WEIGHTS_FILE, hf_tensor_specs,
    load_pretrained, save_pretrained,
};
use hymba::{Hymba, HymbaConfig, HymbaError};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

/// The checkpoint written by `fixtures/make_fixture.py` (tiny config, bf16, HF names).
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_hf")
}

/// Every float parameter's values, in visiting order.
fn params_of(model: &Hymba<B>) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(to_vec(param.val()));
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// Logits of `batch` fixed pseudo-random rows of `len` tokens.
fn logits_of(model: &Hymba<B>, batch: usize, len: usize) -> Vec<f32> {
    let rows = ids(batch, len, model.config.vocab_size, 11);
    to_vec(model.forward(to_tensor::<B>(&rows, &device())))
}

/// Logits of two fixed pseudo-random rows of `len` tokens.
fn logits(model: &Hymba<B>, len: usize) -> Vec<f32> {
    logits_of(model, 2, len)
}

fn save(model: &Hymba<B>, dir: &Path, dtype: SaveDtype) {
    let options = SaveOptions {
        dtype,
        ..SaveOptions::default()
    };
    save_pretrained(model, dir, &options).expect("save");
}

fn load(dir: &Path) -> hymba::Result<Hymba<B>> {
    load_pretrained::<B>(dir, &device())
}

/// The error of a load that must fail (`what` names the case).
fn load_err(dir: &Path, what: &str) -> HymbaError {
    match load(dir) {
        Err(e) => e,
        Ok(_) => panic!("{what}: the checkpoint loaded"),
    }
}

/// The problems of a [`HymbaError::Weights`], or a panic naming what came instead.
fn weight_problems(result: hymba::Result<Hymba<B>>) -> Vec<String> {
    match result {
        Err(HymbaError::Weights { problems }) => problems,
        Err(other) => panic!("expected a Weights error, got: {other}"),
        Ok(_) => panic!("expected a Weights error, the checkpoint loaded"),
    }
}

/// A tensor of a safetensors file, owned.
#[derive(Debug, Clone, PartialEq)]
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn read_tensors(path: &Path) -> BTreeMap<String, Owned> {
    let bytes = std::fs::read(path).expect("read safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = Owned {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                bytes: v.data().to_vec(),
            };
            (name, t)
        })
        .collect()
}

fn write_tensors(path: &Path, tensors: &BTreeMap<String, Owned>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// A saved random tiny checkpoint in a fresh temp dir.
fn saved_tiny(dtype: SaveDtype) -> (tempfile::TempDir, Hymba<B>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = tiny_model(3);
    save(&model, dir.path(), dtype);
    (dir, model)
}

#[test]
fn tiny_round_trip_f32_is_bit_exact() {
    let (dir, model) = saved_tiny(SaveDtype::F32);
    assert!(dir.path().join("config.json").is_file());
    assert!(dir.path().join(WEIGHTS_FILE).is_file());
    let loaded = load(dir.path()).expect("load");
    assert_eq!(loaded.config.vocab_size, model.config.vocab_size);
    assert_eq!(params_of(&loaded), params_of(&model), "a weight changed");
    assert_eq!(logits(&loaded, 24), logits(&model, 24), "logits differ");
}

#[test]
fn hymba_125m_round_trip_f32_is_bit_exact() {
    let config = HymbaConfig::preset("hymba-125m").expect("preset");
    B::seed(&device(), 125);
    let model = Hymba::<B>::new(&config, &device()).expect("model");
    let dir = tempfile::tempdir().expect("temp dir");
    save(&model, dir.path(), SaveDtype::F32);
    let loaded = load(dir.path()).expect("load");
    assert_eq!(loaded.num_params(), model.num_params());
    // One row of 8 tokens (136 positions with the meta tokens) keeps the CPU forward short.
    assert_eq!(
        logits_of(&loaded, 1, 8),
        logits_of(&model, 1, 8),
        "logits differ"
    );
}

#[test]
fn bf16_save_is_idempotent_and_rounds_each_weight_once() {
    let (dir, model) = saved_tiny(SaveDtype::Bf16);
    let file = read_tensors(&dir.path().join(WEIGHTS_FILE));
    assert!(file.values().all(|t| t.dtype == Dtype::BF16));
    let loaded = load(dir.path()).expect("load");
    for (a, b) in params_of(&model).iter().zip(params_of(&loaded)) {
        let rounded: Vec<f32> = a
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(rounded, b, "a weight is not its bf16 rounding");
    }
    let again = tempfile::tempdir().expect("temp dir");
    save(&loaded, again.path(), SaveDtype::Bf16);
    assert_eq!(read_tensors(&again.path().join(WEIGHTS_FILE)), file);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(config["torch_dtype"], "bfloat16");
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let model = tiny_model(4);
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SaveOptions {
        max_shard_bytes: Some(200_000),
        ..SaveOptions::default()
    };
    save_pretrained(&model, dir.path(), &options).expect("save");
    assert!(dir.path().join(INDEX_FILE).is_file());
    assert!(!dir.path().join(WEIGHTS_FILE).exists());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(INDEX_FILE)).expect("index"))
            .expect("json");
    let map = index["weight_map"].as_object().expect("weight_map");
    let files: std::collections::BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    assert!(files.len() >= 2, "expected several shards, got {files:?}");
    assert_eq!(map.len(), hf_tensor_specs(&model.config).len());
    let loaded = load(dir.path()).expect("load");
    assert_eq!(logits(&loaded, 16), logits(&model, 16));

    // Saving again as one file replaces the index, so the loader cannot pick stale shards.
    save(&model, dir.path(), SaveDtype::F32);
    assert!(!dir.path().join(INDEX_FILE).exists());
    assert_eq!(
        logits(&load(dir.path()).expect("load"), 16),
        logits(&model, 16)
    );
}

#[test]
fn tokenizer_is_copied_when_given() {
    let src = tempfile::tempdir().expect("temp dir");
    let tok = src.path().join("my-tokenizer.json");
    std::fs::write(&tok, "{\"version\": \"1.0\"}").expect("write");
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SaveOptions {
        tokenizer: Some(tok),
        ..SaveOptions::default()
    };
    save_pretrained(&tiny_model(1), dir.path(), &options).expect("save");
    let copied = std::fs::read_to_string(dir.path().join("tokenizer.json")).expect("copied");
    assert_eq!(copied, "{\"version\": \"1.0\"}");
}

// --- the Python fixture -----------------------------------------------------------------

#[test]
fn python_fixture_config_is_the_tiny_config() {
    let config = HymbaConfig::from_file(fixture_dir().join("config.json")).expect("config");
    assert_eq!(config, HymbaConfig::tiny());
}

#[test]
fn python_fixture_loads_and_resaves_byte_for_byte() {
    let model = load(&fixture_dir()).expect("load the Python-written checkpoint");
    let ours = tempfile::tempdir().expect("temp dir");
    save(&model, ours.path(), SaveDtype::Bf16);
    let theirs = read_tensors(&fixture_dir().join(WEIGHTS_FILE));
    let mine = read_tensors(&ours.path().join(WEIGHTS_FILE));
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "tensor names differ"
    );
    for (name, t) in &theirs {
        assert_eq!(t.dtype, Dtype::BF16, "{name}");
        assert_eq!(&mine[name], t, "{name} differs");
    }
    let reloaded = load(ours.path()).expect("reload");
    let l = logits(&model, 20);
    assert!(l.iter().all(|v| v.is_finite()));
    assert_eq!(logits(&reloaded, 20), l, "logits differ");
}

/// Sum of a parameter, for comparison with the fixture's `tensor_sums.json`.
fn sum<const D: usize>(p: &Param<Tensor<B, D>>) -> f64 {
    to_vec(p.val()).iter().map(|&v| v as f64).sum()
}

#[test]
fn python_fixture_values_land_in_the_named_modules() {
    // Spelled out by hand, independently of the loader's table: each HF name (spec §5) and
    // the field of our module tree that must hold it.
    let model = load(&fixture_dir()).expect("load");
    let sums: BTreeMap<String, f64> = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("tensor_sums.json")).expect("sums"),
    )
    .expect("json");
    let mut ours: Vec<(String, f64)> = vec![
        ("model.embed_tokens.weight".into(), sum(&model.embed_tokens)),
        (
            "model.memory_tokens".into(),
            sum(model
                .meta_tokens
                .tokens
                .as_ref()
                .expect("tiny has meta tokens")),
        ),
        (
            "model.final_layernorm.weight".into(),
            sum(&model.final_norm.weight),
        ),
    ];
    for (i, l) in model.layers.iter().enumerate() {
        let m = &l.mixer;
        let s = m.ssm.as_ref().expect("tiny layers are hybrid");
        let attn_norm = m.attn_norm.as_ref().expect("hybrid layer");
        let ssm_norm = m.ssm_norm.as_ref().expect("hybrid layer");
        let conv_bias = s.conv_bias.as_ref().expect("tiny has a conv bias");
        let layer = [
            ("input_layernorm.weight", sum(&l.input_norm.weight)),
            ("mamba.in_proj.weight", sum(&m.in_proj.weight)),
            ("mamba.conv1d.weight", sum(&s.conv_weight)),
            ("mamba.conv1d.bias", sum(conv_bias)),
            ("mamba.x_proj.0.weight", sum(&s.x_proj.weight)),
            ("mamba.dt_proj.0.weight", sum(&s.dt_proj.weight)),
            ("mamba.dt_proj.0.bias", sum(&s.dt_bias)),
            ("mamba.A_log.0", sum(&s.a_log)),
            ("mamba.D.0", sum(&s.d)),
            ("mamba.dt_layernorm.weight", sum(&s.dt_norm.weight)),
            ("mamba.B_layernorm.weight", sum(&s.b_norm.weight)),
            ("mamba.C_layernorm.weight", sum(&s.c_norm.weight)),
            ("mamba.pre_avg_layernorm1.weight", sum(&attn_norm.weight)),
            ("mamba.pre_avg_layernorm2.weight", sum(&ssm_norm.weight)),
            ("mamba.out_proj.weight", sum(&m.out_proj.weight)),
            ("pre_moe_layernorm.weight", sum(&l.ffn_norm.weight)),
            (
                "moe.experts.0.gate_proj.weight",
                sum(&l.ffn.gate_proj.weight),
            ),
            ("moe.experts.0.up_proj.weight", sum(&l.ffn.up_proj.weight)),
            (
                "moe.experts.0.down_proj.weight",
                sum(&l.ffn.down_proj.weight),
            ),
        ];
        ours.extend(layer.map(|(n, v)| (format!("model.layers.{i}.{n}"), v)));
    }
    assert_eq!(ours.len(), sums.len(), "tensor count");
    for (name, value) in ours {
        let expected = sums
            .get(&name)
            .unwrap_or_else(|| panic!("{name} not in the fixture"));
        let tol = 1e-9 * expected.abs().max(1.0);
        assert!(
            (value - expected).abs() <= tol,
            "{name}: {value} vs {expected}"
        );
    }
}

// --- the tensor table --------------------------------------------------------------------

#[test]
fn hf_tensor_specs_match_spec_section_5_for_hymba_1_5b() {
    let config = HymbaConfig::preset("hymba-1.5b").expect("preset");
    let specs = hf_tensor_specs(&config);
    let map: BTreeMap<&str, &[usize]> = specs.iter().map(|(n, s)| (n.as_str(), &s[..])).collect();
    assert_eq!(map.len(), specs.len(), "duplicate names");
    assert_eq!(specs.len(), 3 + 32 * 19);
    let total: usize = specs.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(total, 1_522_797_824);
    let expect: [(&str, &[usize]); 22] = [
        ("model.embed_tokens.weight", &[32001, 1600]),
        ("model.memory_tokens", &[128, 1600]),
        ("model.final_layernorm.weight", &[1600]),
        ("model.layers.0.input_layernorm.weight", &[1600]),
        ("model.layers.0.mamba.in_proj.weight", &[8960, 1600]),
        ("model.layers.1.mamba.in_proj.weight", &[8960, 1600]),
        ("model.layers.2.mamba.in_proj.weight", &[8000, 1600]),
        ("model.layers.18.mamba.in_proj.weight", &[8000, 1600]),
        ("model.layers.31.mamba.conv1d.weight", &[3200, 1, 4]),
        ("model.layers.31.mamba.conv1d.bias", &[3200]),
        ("model.layers.31.mamba.x_proj.0.weight", &[132, 3200]),
        ("model.layers.31.mamba.dt_proj.0.weight", &[3200, 100]),
        ("model.layers.31.mamba.dt_proj.0.bias", &[3200]),
        ("model.layers.31.mamba.A_log.0", &[3200, 16]),
        ("model.layers.31.mamba.D.0", &[3200]),
        ("model.layers.31.mamba.dt_layernorm.weight", &[100]),
        ("model.layers.31.mamba.B_layernorm.weight", &[16]),
        ("model.layers.31.mamba.pre_avg_layernorm2.weight", &[3200]),
        ("model.layers.31.mamba.out_proj.weight", &[1600, 3200]),
        ("model.layers.31.pre_moe_layernorm.weight", &[1600]),
        (
            "model.layers.31.moe.experts.0.gate_proj.weight",
            &[5504, 1600],
        ),
        (
            "model.layers.31.moe.experts.0.down_proj.weight",
            &[1600, 5504],
        ),
    ];
    for (name, shape) in expect {
        assert_eq!(map.get(name).copied(), Some(shape), "{name}");
    }
    let consumers = [2, 4, 6, 8, 10, 12, 14, 17, 18, 20, 22, 24, 26, 28, 30];
    for i in 0..32 {
        let rows = map[format!("model.layers.{i}.mamba.in_proj.weight").as_str()][0];
        assert_eq!(
            rows,
            if consumers.contains(&i) { 8000 } else { 8960 },
            "layer {i}"
        );
    }
    assert!(
        !map.contains_key(LM_HEAD),
        "the tied head is not a tensor of its own"
    );
}

#[test]
fn every_module_path_has_an_hf_name() {
    assert_eq!(
        weights::hf_name("layers.7.mixer.ssm.a_log").as_deref(),
        Some("model.layers.7.mamba.A_log.0")
    );
    assert_eq!(
        weights::hf_name("meta_tokens.tokens").as_deref(),
        Some("model.memory_tokens")
    );
    assert_eq!(weights::hf_name("layers.x.mixer.ssm.a_log"), None);
    assert_eq!(weights::hf_name("nope"), None);
}

// --- broken checkpoints: errors that name the tensor or key, never a panic ---------------

#[test]
fn wrong_shapes_missing_and_unexpected_tensors_are_all_named() {
    let (dir, _) = saved_tiny(SaveDtype::F32);
    let path = dir.path().join(WEIGHTS_FILE);
    let mut tensors = read_tensors(&path);
    // in_proj of layer 0 loses a row; A_log of layer 3 is stored transposed.
    let in_proj = "model.layers.0.mamba.in_proj.weight";
    let t = tensors.get_mut(in_proj).expect("in_proj");
    let row = t.shape[1] * 4;
    t.shape[0] -= 1;
    t.bytes.truncate(t.bytes.len() - row);
    let a_log = "model.layers.3.mamba.A_log.0";
    tensors.get_mut(a_log).expect("A_log").shape.reverse();
    tensors.remove("model.final_layernorm.weight");
    tensors.remove("model.layers.2.moe.experts.0.up_proj.weight");
    let extra = Owned {
        dtype: Dtype::F32,
        shape: vec![2],
        bytes: vec![0; 8],
    };
    tensors.insert("model.layers.0.self_attn.q_proj.weight".into(), extra);
    write_tensors(&path, &tensors);

    let problems = weight_problems(load(dir.path()));
    let named = |name: &str| problems.iter().filter(|p| p.contains(name)).count();
    assert_eq!(problems.len(), 5, "{problems:#?}");
    for name in [
        in_proj,
        a_log,
        "model.final_layernorm.weight",
        "model.layers.2.moe.experts.0.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
    ] {
        assert_eq!(named(name), 1, "{name} in {problems:#?}");
    }
    assert!(
        problems
            .iter()
            .any(|p| p.contains("[415, 64]") && p.contains("[416, 64]"))
    );
}

#[test]
fn kv_reuse_group_that_disagrees_with_in_proj_rows_is_named() {
    let (dir, _) = saved_tiny(SaveDtype::F32);
    let path = dir.path().join("config.json");
    let mut config = HymbaConfig::from_file(&path).expect("config");
    // The file's layer 2 is a KV consumer (no K/V rows); the config now says it owns K/V.
    config.kv_reuse_group = vec![];
    config.save(&path).expect("save config");
    let problems = weight_problems(load(dir.path()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("model.layers.2.mamba.in_proj.weight"),
        "{}",
        problems[0]
    );
    assert!(problems[0].contains("kv_reuse_group"), "{}", problems[0]);

    // Moving the group makes layer 1 a consumer with owner rows, and layer 2 the reverse.
    config.kv_reuse_group = vec![vec![0, 1]];
    config.save(&path).expect("save config");
    let problems = weight_problems(load(dir.path()));
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems.iter().all(|p| p.contains("kv_reuse_group")),
        "{problems:#?}"
    );
    assert!(problems[0].contains("model.layers.1.mamba.in_proj.weight"));
    assert!(problems[1].contains("model.layers.2.mamba.in_proj.weight"));
}

#[test]
fn truncated_or_garbage_files_are_errors_naming_the_file() {
    let (dir, _) = saved_tiny(SaveDtype::F32);
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).expect("read");
    let header = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    for cut in [bytes.len() - 1, bytes.len() / 2, 8 + header / 2, 5, 0] {
        std::fs::write(&path, &bytes[..cut]).expect("truncate");
        match load(dir.path()) {
            Err(HymbaError::Checkpoint { path: p, message }) => {
                assert!(p.ends_with(WEIGHTS_FILE), "cut {cut}: {p}: {message}")
            }
            Err(other) => panic!("cut {cut}: unexpected error {other}"),
            Ok(_) => panic!("cut {cut}: a truncated file loaded"),
        }
    }
    std::fs::write(&path, b"not a safetensors file at all").expect("write");
    assert!(matches!(
        load(dir.path()),
        Err(HymbaError::Checkpoint { .. })
    ));
}

#[test]
fn missing_files_are_errors_naming_them() {
    let (dir, _) = saved_tiny(SaveDtype::F32);
    std::fs::remove_file(dir.path().join(WEIGHTS_FILE)).expect("rm");
    let err = load_err(dir.path(), "no weights");
    assert!(err.to_string().contains(WEIGHTS_FILE), "{err}");
    std::fs::remove_file(dir.path().join("config.json")).expect("rm");
    let err = load_err(dir.path(), "no config");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn broken_index_is_an_error_naming_the_problem() {
    let model = tiny_model(4);
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SaveOptions {
        max_shard_bytes: Some(200_000),
        ..SaveOptions::default()
    };
    save_pretrained(&model, dir.path(), &options).expect("save");
    let index_path = dir.path().join(INDEX_FILE);
    let text = std::fs::read_to_string(&index_path).expect("index");
    let mut index: serde_json::Value = serde_json::from_str(&text).expect("json");
    let map = index["weight_map"].as_object_mut().expect("map");
    let embed = "model.embed_tokens.weight";
    let right = map[embed].as_str().expect("file").to_string();
    let wrong = map
        .values()
        .filter_map(|v| v.as_str())
        .find(|f| *f != right)
        .expect("another shard")
        .to_string();
    map.insert(embed.into(), wrong.into());
    std::fs::write(&index_path, index.to_string()).expect("write");
    let problems = weight_problems(load(dir.path()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains(embed));

    std::fs::write(&index_path, "{\"weight_map\": 3}").expect("write");
    let err = load_err(dir.path(), "bad index");
    assert!(matches!(err, HymbaError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains(INDEX_FILE), "{err}");

    std::fs::write(
        &index_path,
        "{\"weight_map\": {\"x\": \"gone.safetensors\"}}",
    )
    .expect("w");
    let err = load_err(dir.path(), "missing shard");
    assert!(err.to_string().contains("gone.safetensors"), "{err}");
}

#[test]
fn lm_head_is_optional_but_must_have_the_embedding_shape() {
    let (dir, model) = saved_tiny(SaveDtype::F32);
    let path = dir.path().join(WEIGHTS_FILE);
    let mut tensors = read_tensors(&path);
    let embed = tensors["model.embed_tokens.weight"].clone();
    tensors.insert(LM_HEAD.into(), embed.clone());
    write_tensors(&path, &tensors);
    let loaded = load(dir.path()).expect("a tied lm_head in the file is fine");
    assert_eq!(logits(&loaded, 8), logits(&model, 8));

    let mut head = embed;
    head.shape[0] -= 1;
    head.bytes.truncate(head.bytes.len() - head.shape[1] * 4);
    tensors.insert(LM_HEAD.into(), head);
    write_tensors(&path, &tensors);
    let problems = weight_problems(load(dir.path()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains(LM_HEAD));
}

#[test]
fn non_float_tensors_and_f16_files_are_handled() {
    let (dir, model) = saved_tiny(SaveDtype::F16);
    let loaded = load(dir.path()).expect("f16 loads");
    for (a, b) in params_of(&model).iter().zip(params_of(&loaded)) {
        let rounded: Vec<f32> = a.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert_eq!(rounded, b);
    }
    let path = dir.path().join(WEIGHTS_FILE);
    let mut tensors = read_tensors(&path);
    let d = tensors.get_mut("model.layers.1.mamba.D.0").expect("D");
    d.dtype = Dtype::I16;
    write_tensors(&path, &tensors);
    let problems = weight_problems(load(dir.path()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("model.layers.1.mamba.D.0") && problems[0].contains("I16"));
}

#[test]
fn load_safetensors_into_replaces_every_weight() {
    let (dir, saved) = saved_tiny(SaveDtype::F32);
    let other = tiny_model(99);
    assert_ne!(params_of(&other), params_of(&saved));
    let loaded =
        weights::load_safetensors_into(other, dir.path().join(WEIGHTS_FILE)).expect("load");
    assert_eq!(params_of(&loaded), params_of(&saved));
}

// --- the 1.5B layout ---------------------------------------------------------------------

/// Zero-filled bf16 bytes for a tensor, produced only when the writer asks (3 GB in all).
struct Zeros(Vec<usize>);

impl safetensors::tensor::View for &Zeros {
    fn dtype(&self) -> Dtype {
        Dtype::BF16
    }
    fn shape(&self) -> &[usize] {
        &self.0
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(vec![0; self.data_len()])
    }
    fn data_len(&self) -> usize {
        self.0.iter().product::<usize>() * 2
    }
}

/// Builds the 1.5B model from a file holding every spec §5 name (6 GB of f32 on the CPU).
#[test]
#[ignore = "allocates the 1.5B model: ~3 GB file, ~7 GB memory"]
fn hymba_1_5b_checkpoint_with_spec_names_loads_with_1_522_797_824_params() {
    let config = HymbaConfig::preset("hymba-1.5b").expect("preset");
    let dir = tempfile::tempdir().expect("temp dir");
    config.save(dir.path().join("config.json")).expect("config");
    let zeros: Vec<(String, Zeros)> = hf_tensor_specs(&config)
        .into_iter()
        .map(|(n, s)| (n, Zeros(s)))
        .collect();
    let views = zeros.iter().map(|(n, z)| (n.as_str(), z));
    safetensors::serialize_to_file(views, None, &dir.path().join(WEIGHTS_FILE)).expect("write");
    let model = load(dir.path()).expect("load 1.5B");
    assert_eq!(model.num_params(), 1_522_797_824);
}
