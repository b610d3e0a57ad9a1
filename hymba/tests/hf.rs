//! The HF side files (`hymba::hf`): a model directory loads with or without
//! `tokenizer_config.json` / `generation_config.json`, NVIDIA-style files (AddedToken objects,
//! an EOS list, `1e30` lengths, extra keys) parse and round-trip, and broken ones are typed
//! errors naming the file.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use hymba::hf::{
    GENERATION_CONFIG_FILE, HfFileError, HfGenerationConfig, SideFiles, TOKENIZER_CONFIG_FILE,
    TokenIds, TokenizerConfig,
};
use hymba::weights::inspect_pretrained;
use hymba::{HymbaError, load_pretrained};

type B = NdArray<f32>;

/// A copy of the tiny checkpoint of `fixtures/tiny_hf` (vocab_size 512) in a temp dir.
fn tiny_checkpoint() -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_hf");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).expect("mkdir");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), dir.join(file)).expect("copy fixture");
    }
    (tmp, dir)
}

/// Side files as `transformers` writes them for NVIDIA's Hymba (abridged).
const NVIDIA_TOKENIZER_CONFIG: &str = r#"{
  "add_bos_token": true,
  "add_eos_token": false,
  "added_tokens_decoder": {"0": {"content": "<unk>", "special": true}},
  "bos_token": {"content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
  "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
  "clean_up_tokenization_spaces": false,
  "eos_token": "</s>",
  "model_max_length": 1000000000000000019884624838656,
  "pad_token": "[PAD]",
  "tokenizer_class": "LlamaTokenizer",
  "unk_token": "<unk>"
}"#;
const NVIDIA_GENERATION_CONFIG: &str = r#"{
  "_from_model_config": true,
  "bos_token_id": 1,
  "eos_token_id": [2],
  "pad_token_id": 0,
  "transformers_version": "4.44.0"
}"#;

#[test]
fn a_directory_without_side_files_loads_and_reads_as_none() {
    let (_tmp, dir) = tiny_checkpoint();
    assert_eq!(
        SideFiles::read(&dir, 512).expect("read"),
        SideFiles::default()
    );
    load_pretrained::<B>(&dir, &Default::default()).expect("loads without side files");
    inspect_pretrained(&dir).expect("checks without side files");
}

#[test]
fn nvidia_style_side_files_parse_load_and_round_trip() {
    let (_tmp, dir) = tiny_checkpoint();
    std::fs::write(dir.join(TOKENIZER_CONFIG_FILE), NVIDIA_TOKENIZER_CONFIG).unwrap();
    std::fs::write(dir.join(GENERATION_CONFIG_FILE), NVIDIA_GENERATION_CONFIG).unwrap();

    load_pretrained::<B>(&dir, &Default::default()).expect("loads with side files");
    inspect_pretrained(&dir).expect("side files pass the check");

    let files = SideFiles::read(&dir, 512).expect("read");
    let tok = files.tokenizer.clone().expect("tokenizer_config.json");
    let text = |t: &Option<hymba::hf::TokenText>| t.as_ref().map(|t| t.content().to_string());
    assert_eq!(text(&tok.bos_token).as_deref(), Some("<s>"));
    assert_eq!(text(&tok.eos_token).as_deref(), Some("</s>"));
    assert_eq!(text(&tok.pad_token).as_deref(), Some("[PAD]"));
    assert_eq!(tok.tokenizer_class.as_deref(), Some("LlamaTokenizer"));
    assert!(
        tok.chat_template_str()
            .is_some_and(|t| t.contains("messages"))
    );
    assert!(tok.extra.contains_key("added_tokens_decoder"));
    let generation = files.generation.clone().expect("generation_config.json");
    assert_eq!(generation.eos_token_id, Some(TokenIds::Many(vec![2])));
    assert_eq!(
        (generation.bos_token_id, generation.pad_token_id),
        (Some(1), Some(0))
    );
    assert!(generation.extra.contains_key("transformers_version"));

    // Written back and read again: the same values, unknown keys included.
    let out = tempfile::tempdir().unwrap();
    files.write(out.path()).expect("write");
    assert_eq!(SideFiles::read(out.path(), 512).expect("re-read"), files);
}

#[test]
fn an_id_outside_the_vocabulary_is_a_typed_error() {
    let (_tmp, dir) = tiny_checkpoint();
    let generation = HfGenerationConfig {
        bos_token_id: Some(1),
        eos_token_id: Some(TokenIds::One(2)),
        pad_token_id: Some(32000),
        ..Default::default()
    };
    generation.write(&dir).expect("write");
    let err = inspect_pretrained(&dir).unwrap_err();
    assert!(
        matches!(
            &err,
            HymbaError::HfFile(HfFileError::TokenOutOfRange {
                key: "pad_token_id",
                id: 32000,
                vocab_size: 512,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains(GENERATION_CONFIG_FILE), "{err}");
    // Loading the weights does not look at the side files.
    load_pretrained::<B>(&dir, &Default::default()).expect("loads");
}

#[test]
fn malformed_side_files_name_the_file() {
    let (_tmp, dir) = tiny_checkpoint();
    std::fs::write(dir.join(TOKENIZER_CONFIG_FILE), "{\"bos_token\": 7}").unwrap();
    let err = TokenizerConfig::read(&dir).unwrap_err();
    assert!(matches!(err, HfFileError::Parse { .. }), "{err}");
    assert!(err.to_string().contains(TOKENIZER_CONFIG_FILE), "{err}");
    std::fs::write(dir.join(TOKENIZER_CONFIG_FILE), "{}").unwrap();
    std::fs::write(
        dir.join(GENERATION_CONFIG_FILE),
        r#"{"eos_token_id": "two"}"#,
    )
    .unwrap();
    let err = inspect_pretrained(&dir).unwrap_err();
    assert!(
        matches!(err, HymbaError::HfFile(HfFileError::Parse { .. })),
        "{err}"
    );
}
