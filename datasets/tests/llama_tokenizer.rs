//! The LLaMA-2 `tokenizer.json` (Hymba's vocabulary) loads and reproduces its reference ids.

mod common;

use hymba_datasets::Tokenizer;

#[derive(serde::Deserialize)]
struct Vector {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn llama2_reproduces_every_test_vector() {
    let tok = common::llama();
    let text =
        std::fs::read_to_string(common::fixture("tokenizer/llama2/test_vectors.jsonl")).unwrap();
    let vectors: Vec<Vector> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(vectors.len(), 12, "the README lists 12 reference cases");
    for v in &vectors {
        let ids = tok.encode(&v.text, true).unwrap();
        assert_eq!(ids, v.ids, "encode({:?})", v.text);
        // Without BOS: the same ids minus the leading 1.
        assert_eq!(
            tok.encode(&v.text, false).unwrap(),
            v.ids[1..],
            "{:?}",
            v.text
        );
        // Decoding drops BOS and undoes the dummy prefix: the text comes back exactly.
        assert_eq!(tok.decode(&ids).unwrap(), v.text);
    }
}

#[test]
fn llama2_special_ids_and_vocab_size() {
    let tok = common::llama();
    assert_eq!(tok.vocab_size(), 32001);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1, 2, 32000));
    assert_eq!(
        tok.encode("Hello world", true).unwrap(),
        vec![1, 15043, 3186]
    );
    assert_eq!(
        tok.decode_with_special(&[1, 15043, 2]).unwrap(),
        "<s> Hello</s>"
    );
}

#[test]
fn hash_is_stable_across_save_and_reload() {
    let tok = common::llama();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let again = Tokenizer::from_file(&path).unwrap();
    assert_eq!(again.hash(), tok.hash());
    assert_ne!(
        again.hash(),
        hymba_datasets::default_tokenizer().unwrap().hash()
    );
}
