//! text → shards → windows → tokens: the round trip, the manifest, and the header checks.

mod common;

use std::path::Path;

use hymba_datasets::prepare::{document_tokens, is_val_document};
use hymba_datasets::shard::{HEADER_LEN, SHARD_MAGIC};
use hymba_datasets::{
    DataError, DocMode, InputSource, Manifest, PrepareConfig, Shard, ShardWriter, Split,
    TokenDtype, TokenStream, Tokenizer, WindowDataset, default_tokenizer, prepare,
};

/// A small corpus: paragraphs of the default corpus, cut short, in a text file and a JSONL.gz.
fn write_corpus(dir: &Path) -> Vec<String> {
    let text = hymba_datasets::default_corpus_text().unwrap();
    let docs: Vec<String> = text
        .split("\n\n")
        .take(12)
        .map(|d| d.chars().take(1500).collect::<String>().trim().to_owned())
        .collect();
    std::fs::write(dir.join("a.txt"), docs[..8].join("\n\n") + "\n").unwrap();
    let jsonl: String = docs[8..]
        .iter()
        .map(|d| serde_json::json!({ "text": d, "id": 7 }).to_string() + "\n")
        .collect();
    let gz = std::fs::File::create(dir.join("b.jsonl.gz")).unwrap();
    let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, jsonl.as_bytes()).unwrap();
    enc.finish().unwrap();
    docs
}

fn config(input: &Path, out: &Path, val_fraction: f64, shard_tokens: u64) -> PrepareConfig {
    let mut c = PrepareConfig::new(vec![InputSource::Path(input.to_owned())], out);
    c.val_fraction = val_fraction;
    c.seed = 3;
    c.shard_tokens = shard_tokens;
    c.tokenizer_source = "test".into();
    c
}

/// The expected stream of one split: the documents routed there, in order.
fn expected_stream(tok: &Tokenizer, docs: &[String], split: Split, m: &Manifest) -> Vec<u32> {
    let mut train: Vec<Vec<u32>> = Vec::new();
    let mut val: Vec<Vec<u32>> = Vec::new();
    for d in docs {
        let ids = document_tokens(tok, tok.encode(d, false).unwrap());
        if is_val_document(d, m.seed, m.val_fraction) {
            val.push(ids);
        } else {
            train.push(ids);
        }
    }
    if val.is_empty() && m.val_fraction > 0.0 && train.len() > 1 {
        val.push(train.pop().unwrap());
    }
    match split {
        Split::Train => train.concat(),
        Split::Val => val.concat(),
    }
}

fn round_trip(tok: &Tokenizer, shard_tokens: u64) {
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let docs = write_corpus(input.path());
    let report = prepare(
        tok,
        &config(input.path(), out.path(), 0.2, shard_tokens),
        &mut |_| {},
    )
    .unwrap();
    let m = Manifest::load(out.path()).unwrap();
    assert_eq!(m, report.manifest);
    assert_eq!(m.tokenizer.hash, tok.hash());
    assert_eq!(m.dtype, TokenDtype::for_vocab(tok.vocab_size()));
    assert_eq!(m.train.documents + m.val.documents, docs.len() as u64);
    assert!(m.val.documents >= 1 && m.train.documents >= 1);
    assert!(m.train.shards.len() > 1, "small shards force several files");
    assert_eq!(m.load_tokenizer(out.path()).unwrap().hash(), tok.hash());

    for split in [Split::Train, Split::Val] {
        let expected = expected_stream(tok, &docs, split, &m);
        assert_eq!(m.split(split).tokens, expected.len() as u64);
        let seq_len = 64;
        let ds = WindowDataset::open(out.path(), split, seq_len).unwrap();
        ds.check_tokenizer(tok).unwrap();
        assert_eq!(ds.len(), (expected.len() - 1) / seq_len);
        // Windows are consecutive, overlap by one token, and rebuild the stream.
        let mut rebuilt = Vec::new();
        for i in 0..ds.len() {
            let w = ds.window(i).unwrap();
            assert_eq!(w.len(), seq_len + 1);
            assert_eq!(w[..], expected[i * seq_len..i * seq_len + seq_len + 1]);
            rebuilt.extend_from_slice(&w[..seq_len]);
        }
        assert_eq!(rebuilt[..], expected[..ds.len() * seq_len]);
        // The decoded stream holds the documents' text, in order.
        let text = tok.decode(&expected).unwrap();
        let first = docs
            .iter()
            .find(|d| (split == Split::Val) == is_val_document(d, m.seed, m.val_fraction));
        if let Some(first) = first {
            assert!(text.starts_with(&first[..40]), "{split}: {:?}", &text[..60]);
        }
        assert!(ds.window(ds.len()).is_err());
    }
}

#[test]
fn round_trip_with_default_tokenizer() {
    round_trip(&default_tokenizer().unwrap(), 1000);
}

#[test]
fn round_trip_with_llama_tokenizer() {
    let tok = common::llama();
    round_trip(&tok, 1000);
}

#[test]
fn prepare_is_deterministic() {
    let tok = default_tokenizer().unwrap();
    let input = tempfile::tempdir().unwrap();
    write_corpus(input.path());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for out in [&a, &b] {
        prepare(
            &tok,
            &config(input.path(), out.path(), 0.2, 700),
            &mut |_| {},
        )
        .unwrap();
    }
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a.path()), names(b.path()));
    for name in names(a.path()) {
        let fa = std::fs::read(a.path().join(&name)).unwrap();
        let fb = std::fs::read(b.path().join(&name)).unwrap();
        assert!(fa == fb, "{name:?} differs");
    }
}

#[test]
fn prepare_reports_progress_and_rejects_bad_settings() {
    let tok = default_tokenizer().unwrap();
    let input = tempfile::tempdir().unwrap();
    write_corpus(input.path());
    let out = tempfile::tempdir().unwrap();
    let mut last = None;
    prepare(
        &tok,
        &config(input.path(), out.path(), 0.0, 1 << 20),
        &mut |p| last = Some(*p),
    )
    .unwrap();
    let last = last.unwrap();
    assert_eq!(last.documents, 12);
    assert_eq!(last.bytes_read, last.bytes_total);
    let m = Manifest::load(out.path()).unwrap();
    assert_eq!(m.val.documents, 0, "val_fraction 0 holds nothing out");
    assert_eq!(last.tokens, m.train.tokens);
    let err = prepare(
        &tok,
        &config(input.path(), out.path(), 1.5, 10),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("val fraction"), "{err}");
}

#[test]
fn doc_modes_cut_plain_text_differently() {
    let tok = default_tokenizer().unwrap();
    let input = tempfile::tempdir().unwrap();
    std::fs::write(input.path().join("x.txt"), "one\ntwo\n\nthree\n").unwrap();
    let mut counts = Vec::new();
    for mode in [DocMode::Paragraph, DocMode::Line, DocMode::File] {
        let out = tempfile::tempdir().unwrap();
        let mut c = config(input.path(), out.path(), 0.0, 1000);
        c.docs.doc_mode = mode;
        counts.push(
            prepare(&tok, &c, &mut |_| {})
                .unwrap()
                .manifest
                .train
                .documents,
        );
    }
    assert_eq!(counts, vec![2, 3, 1]);
}

fn write_shard(path: &Path, dtype: TokenDtype, hash: u64, ids: &[u32]) {
    let mut w = ShardWriter::create(path, dtype, hash).unwrap();
    w.write(ids).unwrap();
    assert_eq!(w.finish().unwrap(), ids.len() as u64);
}

#[test]
fn shard_round_trips_u16_and_u32() {
    let dir = tempfile::tempdir().unwrap();
    let p16 = dir.path().join("a.bin");
    let p32 = dir.path().join("b.bin");
    write_shard(&p16, TokenDtype::U16, 9, &[0, 1, 65535, 7]);
    write_shard(&p32, TokenDtype::U32, 9, &[70000, 0, u32::MAX]);
    assert_eq!(
        std::fs::metadata(&p16).unwrap().len(),
        HEADER_LEN as u64 + 8
    );
    assert_eq!(
        Shard::open(&p16).unwrap().to_vec().unwrap(),
        vec![0, 1, 65535, 7]
    );
    assert_eq!(
        Shard::open(&p32).unwrap().to_vec().unwrap(),
        vec![70000, 0, u32::MAX]
    );
    // A stream across both shards (dtype must agree: the u32 one is refused).
    assert!(matches!(
        TokenStream::open_files(&[p16.clone(), p32.clone()], 9),
        Err(DataError::BadDtype { .. })
    ));
    let s = TokenStream::open_files(&[p16.clone(), p16.clone()], 9).unwrap();
    let mut out = [0u32; 4];
    s.read(2, &mut out).unwrap();
    assert_eq!(out, [65535, 7, 0, 1]);
    // An id too large for u16 is an error, not a silent wrap.
    let mut w = ShardWriter::create(dir.path().join("c.bin"), TokenDtype::U16, 9).unwrap();
    assert!(matches!(
        w.write(&[65536]),
        Err(DataError::TokenOutOfRange { id: 65536, .. })
    ));
}

#[test]
fn shard_header_rejects_wrong_magic_version_dtype_hash_and_length() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.bin");
    write_shard(&good, TokenDtype::U16, 0xabcd, &[1, 2, 3]);
    let bytes = std::fs::read(&good).unwrap();
    let corrupt = |name: &str, at: usize, patch: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        Shard::open(&p).unwrap_err()
    };

    let e = corrupt("magic.bin", 0, b"NOTTOKEN");
    assert!(
        matches!(e, DataError::BadMagic { found, .. } if &found == b"NOTTOKEN"),
        "{e}"
    );
    assert!(e.to_string().contains("not a hymba token shard"), "{e}");

    let e = corrupt("version.bin", 8, &7u32.to_le_bytes());
    assert!(matches!(e, DataError::BadVersion { found: 7, .. }), "{e}");

    let e = corrupt("dtype.bin", 12, &3u32.to_le_bytes());
    assert!(matches!(e, DataError::BadDtype { .. }), "{e}");
    assert!(e.to_string().contains("code 3"), "{e}");

    let e = corrupt("count.bin", 16, &4u64.to_le_bytes());
    assert!(
        matches!(
            e,
            DataError::Truncated {
                expected: 4,
                found: 3,
                ..
            }
        ),
        "{e}"
    );

    let e = Shard::open_expecting(&good, TokenDtype::U16, 0x1234).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TokenizerMismatch {
                found: 0xabcd,
                expected: 0x1234,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("000000000000abcd"), "{e}");

    let e = Shard::open_expecting(&good, TokenDtype::U32, 0xabcd).unwrap_err();
    assert!(matches!(e, DataError::BadDtype { .. }), "{e}");
    assert!(
        e.to_string().contains("u16") && e.to_string().contains("u32"),
        "{e}"
    );

    std::fs::write(dir.path().join("short.bin"), SHARD_MAGIC).unwrap();
    assert!(matches!(
        Shard::open(dir.path().join("short.bin")),
        Err(DataError::Truncated { .. })
    ));
    assert!(matches!(
        Shard::open(dir.path().join("missing.bin")),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn data_made_with_another_tokenizer_is_refused() {
    let tok = default_tokenizer().unwrap();
    let input = tempfile::tempdir().unwrap();
    write_corpus(input.path());
    let out = tempfile::tempdir().unwrap();
    prepare(
        &tok,
        &config(input.path(), out.path(), 0.2, 1 << 20),
        &mut |_| {},
    )
    .unwrap();
    let ds = WindowDataset::open(out.path(), Split::Train, 16).unwrap();
    let other = hymba_datasets::train_bpe(
        std::iter::once("a tiny different corpus".repeat(10)),
        hymba_datasets::BpeConfig {
            vocab_size: 270,
            min_frequency: 2,
        },
    )
    .unwrap();
    let e = ds.check_tokenizer(&other).unwrap_err();
    assert!(matches!(e, DataError::TokenizerMismatch { .. }), "{e}");
    let m = Manifest::load(out.path()).unwrap();
    assert!(m.check_tokenizer(&other, out.path()).is_err());

    // A shard swapped in from another tokenizer's data fails against the manifest.
    let shard = out.path().join(&m.train.shards[0].file);
    write_shard(
        &shard,
        TokenDtype::U16,
        other.hash(),
        &vec![5; m.train.shards[0].tokens as usize],
    );
    let e = TokenStream::open(out.path(), Split::Train).unwrap_err();
    assert!(matches!(e, DataError::TokenizerMismatch { .. }), "{e}");
}

#[test]
fn a_damaged_shard_is_named_and_prepare_leaves_no_partial_file() {
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write_corpus(input.path());
    let tok = default_tokenizer().unwrap();
    let report = prepare(
        &tok,
        &config(input.path(), out.path(), 0.2, 500),
        &mut |_| {},
    )
    .unwrap();
    let first = &report.manifest.train.shards[0];
    let sum = first
        .checksum
        .expect("prepare records each shard's checksum");
    let path = out.path().join(&first.file);
    assert_eq!(sum.bytes, std::fs::metadata(&path).unwrap().len());
    let names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    TokenStream::open(out.path(), Split::Train).unwrap();

    // One flipped bit in the tokens: the header still agrees, the checksum does not.
    let intact = std::fs::read(&path).unwrap();
    let mut flipped = intact.clone();
    flipped[HEADER_LEN + 3] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    let e = TokenStream::open(out.path(), Split::Train).unwrap_err();
    assert!(matches!(e, DataError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains(&first.file), "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");

    // Cut short: named too (by the header's token count, which is checked first).
    std::fs::write(&path, &intact[..intact.len() - 2]).unwrap();
    let e = TokenStream::open(out.path(), Split::Train).unwrap_err();
    assert!(e.to_string().contains(&first.file), "{e}");
}
