//! A saved model's HF side files (`hymba_train::hf_files`): the special tokens and ids of the
//! run's tokenizer (LLaMA-2 from the workspace's `fixtures/`, and the embedded default BPE),
//! the chat template only for chat models, and a directory with them loads as an `--init`.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use hymba::hf::{HfGenerationConfig, SideFiles, TokenIds, TokenizerConfig};
use hymba::{Hymba, HymbaConfig};
use hymba_datasets::{CHAT_TEMPLATE_JINJA, Tokenizer, default_tokenizer};
use hymba_train::hf_files::write_side_files;
use hymba_train::posttrain::InitSource;

type B = NdArray<f32>;

fn llama() -> Tokenizer {
    let path: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tokenizer/llama2/tokenizer.json");
    Tokenizer::from_file(&path).expect("LLaMA-2 tokenizer fixture")
}

fn tokens(t: &TokenizerConfig) -> [Option<String>; 4] {
    [&t.bos_token, &t.eos_token, &t.pad_token, &t.unk_token]
        .map(|t| t.as_ref().map(|t| t.content().to_string()))
}

fn some(s: [&str; 4]) -> [Option<String>; 4] {
    s.map(|s| Some(s.to_string()))
}

#[test]
fn llama_sft_model_gets_llama_tokens_ids_and_the_chat_template() {
    let tok = llama();
    let mut config = HymbaConfig::tiny();
    config.vocab_size = tok.vocab_size();
    let dir = tempfile::tempdir().unwrap();
    write_side_files(dir.path(), &tok, &config, true).expect("write");

    let files = SideFiles::read(dir.path(), config.vocab_size).expect("read back");
    let t = files.tokenizer.expect("tokenizer_config.json");
    assert_eq!(tokens(&t), some(["<s>", "</s>", "[PAD]", "<unk>"]));
    assert_eq!(t.tokenizer_class.as_deref(), Some("LlamaTokenizerFast"));
    assert_eq!(
        (t.add_bos_token, t.add_eos_token),
        (Some(true), Some(false))
    );
    assert_eq!(
        t.model_max_length.as_ref().and_then(|n| n.as_u64()),
        Some(config.max_position_embeddings as u64)
    );
    assert_eq!(t.chat_template_str(), Some(CHAT_TEMPLATE_JINJA));
    let g = files.generation.expect("generation_config.json");
    assert_eq!(
        g,
        HfGenerationConfig {
            bos_token_id: Some(1),
            eos_token_id: Some(TokenIds::One(2)),
            pad_token_id: Some(32000),
            max_length: Some(config.max_position_embeddings),
            do_sample: Some(false),
            extra: Default::default(),
        }
    );
}

#[test]
fn pretrained_model_with_the_default_tokenizer_has_no_chat_template() {
    let tok = default_tokenizer().unwrap();
    let config = HymbaConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    write_side_files(dir.path(), &tok, &config, false).expect("write");

    let files = SideFiles::read(dir.path(), tok.vocab_size()).expect("read back");
    let t = files.tokenizer.expect("tokenizer_config.json");
    let [bos, eos, pad, _unk] = tokens(&t);
    assert_eq!(
        [bos, eos, pad],
        ["<s>", "</s>", "<pad>"].map(|s| Some(s.to_string()))
    );
    assert_eq!(
        t.tokenizer_class.as_deref(),
        Some("PreTrainedTokenizerFast")
    );
    assert_eq!(t.chat_template, None);
    let g = files.generation.expect("generation_config.json");
    assert_eq!(
        (g.bos_token_id, g.eos_token_id, g.pad_token_id),
        (
            Some(tok.bos_id()),
            Some(TokenIds::One(tok.eos_id())),
            Some(tok.pad_id())
        )
    );
}

#[test]
fn a_model_directory_with_side_files_is_a_valid_init() {
    let tok = default_tokenizer().unwrap();
    let mut config = HymbaConfig::tiny();
    config.vocab_size = tok.vocab_size();
    let device = Default::default();
    let model = Hymba::<B>::new(&config, &device).expect("model");
    let dir = tempfile::tempdir().unwrap();
    hymba::save_pretrained(&model, dir.path(), &hymba::SaveOptions::default()).expect("save");
    tok.save(dir.path().join("tokenizer.json")).unwrap();
    write_side_files(dir.path(), &tok, &config, true).expect("side files");

    let init = InitSource::find(dir.path()).expect("classified");
    assert_eq!(init, InitSource::Pretrained(dir.path().to_path_buf()));
    assert!(init.tokenizer().is_some());
    let back = init.load::<B>(&device).expect("loads with side files");
    // Saving adds `torch_dtype` and `auto_map` to the config's extra keys; the rest is equal.
    let (mut got, mut want) = (back.config.clone(), model.config.clone());
    got.extra.clear();
    want.extra.clear();
    assert_eq!(got, want);
    hymba::weights::inspect_pretrained(dir.path()).expect("side files pass the check");
}
