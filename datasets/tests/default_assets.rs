//! The corpus and tokenizer shipped inside the crate.

use hymba_datasets::{BpeConfig, default_corpus_text, default_tokenizer, train_bpe};

#[test]
fn default_corpus_is_the_sotu_slice() {
    let text = default_corpus_text().unwrap();
    assert_eq!(text.len(), 2_000_899);
    assert!(text.starts_with("Mr. Speaker, Mr. President, Members of the House and Senate"));
    assert_eq!(
        text.split("\n\n").count(),
        58,
        "58 addresses, blank line between"
    );
}

#[test]
fn default_tokenizer_round_trips_the_corpus() {
    let tok = default_tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), 4096);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1, 2, 3));
    let text = default_corpus_text().unwrap();
    let sample: String = text.chars().take(20_000).collect();
    let ids = tok.encode(&sample, true).unwrap();
    assert!(
        ids.len() < sample.len() / 3,
        "compresses English: {} ids",
        ids.len()
    );
    assert_eq!(tok.decode(&ids).unwrap(), sample);
    assert_eq!(
        tok.decode(&tok.encode("naïve café — 東京 🦙", false).unwrap())
            .unwrap(),
        "naïve café — 東京 🦙"
    );
}

#[test]
fn default_tokenizer_is_reproducible_from_the_corpus() {
    let docs: Vec<String> = default_corpus_text()
        .unwrap()
        .split("\n\n")
        .map(|d| d.trim_end().to_owned())
        .collect();
    let retrained = train_bpe(
        docs.into_iter(),
        BpeConfig {
            vocab_size: 4096,
            min_frequency: 2,
        },
    )
    .unwrap();
    assert_eq!(retrained.hash(), default_tokenizer().unwrap().hash());
}

#[test]
fn assets_stay_small() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");
    let total: u64 = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total < 3 << 20, "assets are {total} bytes");
}
