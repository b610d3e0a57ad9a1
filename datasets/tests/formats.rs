//! SFT / DPO / multiple-choice / recall records: parsing, validation, the chat template's
//! loss mask, packing, and the JSONL reader's skip/strict behaviour.

mod common;

use std::path::Path;

use hymba_datasets::sft::render_chat;
use hymba_datasets::{
    DataError, DpoExample, McExample, Message, PromptFormat, RecallExample, Role, SftExample,
    Tokenizer, default_tokenizer, pack, read_jsonl, tokenize_chat,
};

/// The first `n` examples of each SFT fixture.
fn sft_examples(n: usize) -> Vec<SftExample> {
    let mut out = Vec::new();
    for file in ["sft/natural_instructions.jsonl", "sft/topical_chat.jsonl"] {
        for line in common::head_lines(file, n) {
            out.push(serde_json::from_str(&line).unwrap());
        }
    }
    out
}

/// Positions of masked tokens as runs `[start, end)`.
fn runs(mask: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < mask.len() {
        if mask[i] == 1 {
            let s = i;
            while i < mask.len() && mask[i] == 1 {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

/// For one-assistant-turn chats: the mask is exactly the tokens of `assistant + "\n"` and the
/// final EOS, and everything before it is the tokenized prompt.
fn check_single_turn_mask(tok: &Tokenizer, ex: &SftExample) {
    let t = tokenize_chat(tok, &ex.messages).unwrap();
    assert_eq!(t.ids.len(), t.mask.len());
    assert_eq!(
        (t.ids[0], t.mask[0]),
        (tok.bos_id(), 0),
        "BOS first, unmasked"
    );
    assert_eq!(
        (*t.ids.last().unwrap(), *t.mask.last().unwrap()),
        (tok.eos_id(), 1)
    );
    let r = runs(&t.mask);
    assert_eq!(r.len(), 1, "one masked run: the assistant turn + EOS");
    let (start, end) = r[0];
    assert_eq!(end, t.ids.len());
    let chat = render_chat(&ex.messages).unwrap();
    let span = chat.assistant_spans[0].clone();
    // Independent check: the unmasked part is exactly the tokenized prompt text...
    assert_eq!(
        t.ids[..start],
        tok.encode(&chat.text[..span.start], true).unwrap()[..]
    );
    // ...and the masked part decodes to the assistant's content and its closing newline.
    let answer = ex.messages.last().unwrap();
    assert_eq!(answer.role, Role::Assistant);
    assert_eq!(
        tok.decode(&t.ids[start..end - 1]).unwrap(),
        format!("{}\n", answer.content)
    );
}

#[test]
fn sft_mask_covers_exactly_the_assistant_turn_default_tokenizer() {
    let examples = sft_examples(40);
    let tok = default_tokenizer().unwrap();
    for ex in &examples {
        check_single_turn_mask(&tok, ex);
    }
}

#[test]
fn sft_mask_covers_exactly_the_assistant_turn_llama() {
    let (examples, tok) = (sft_examples(40), common::llama());
    for ex in &examples {
        check_single_turn_mask(&tok, ex);
    }
}

#[test]
fn sft_mask_covers_every_assistant_turn_of_a_dialogue() {
    let tok = default_tokenizer().unwrap();
    let messages = vec![
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "Capital of France?"),
        Message::new(Role::Assistant, "Paris."),
        Message::new(Role::User, "And of Italy?"),
        Message::new(Role::Assistant, "Rome, of course."),
    ];
    let t = tokenize_chat(&tok, &messages).unwrap();
    let r = runs(&t.mask);
    assert_eq!(r.len(), 2);
    assert_eq!(tok.decode(&t.ids[r[0].0..r[0].1]).unwrap(), "Paris.\n");
    assert_eq!(
        tok.decode_with_special(&t.ids[r[1].0..r[1].1]).unwrap(),
        "Rome, of course.\n</s>"
    );
    // Unmasked: BOS, the system block, both user turns and the three headers.
    let unmasked: Vec<u32> = t
        .ids
        .iter()
        .zip(&t.mask)
        .filter(|(_, m)| **m == 0)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        tok.decode(&unmasked).unwrap(),
        "<extra_id_0>System\nBe brief.\n\n<extra_id_1>User\nCapital of France?\n<extra_id_1>Assistant\n\
         <extra_id_1>User\nAnd of Italy?\n<extra_id_1>Assistant\n"
    );
}

#[test]
fn packing_keeps_every_target_and_fills_fixed_windows() {
    let examples = sft_examples(30);
    let tok = default_tokenizer().unwrap();
    let seqs: Vec<_> = examples.iter().map(|e| e.tokenize(&tok).unwrap()).collect();
    let seq_len = 1024;
    let fitting: Vec<_> = seqs
        .into_iter()
        .filter(|s| s.len() <= seq_len + 1)
        .collect();
    let targets: usize = fitting.iter().map(|s| s.target_count()).sum();
    let tokens: usize = fitting.iter().map(|s| s.len()).sum();
    let packed = pack(fitting.clone(), seq_len, tok.pad_id()).unwrap();
    assert_eq!((packed.truncated, packed.dropped), (0, 0));
    assert!(
        packed
            .sequences
            .iter()
            .all(|s| s.ids.len() == seq_len + 1 && s.mask.len() == seq_len + 1)
    );
    assert_eq!(
        packed
            .sequences
            .iter()
            .map(|s| s.target_count())
            .sum::<usize>(),
        targets
    );
    let real: usize = packed
        .sequences
        .iter()
        .map(|s| {
            s.ids
                .iter()
                .rev()
                .skip_while(|&&i| i == tok.pad_id())
                .count()
        })
        .sum();
    assert_eq!(real, tokens, "only padding was added");
    assert!(
        packed.sequences.len() < fitting.len(),
        "several examples share a sequence"
    );
}

const VALID: &str = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;

#[test]
fn malformed_sft_lines_are_reported_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sft.jsonl");
    let lines = [
        VALID,
        r#"{"messages": [{"role": "user", "content": "#,
        VALID,
        r#"{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
        "",
        r#"{"messages": [{"role": "user", "content": "q"}]}"#,
        VALID,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();

    let lenient = read_jsonl::<SftExample>(&path, false).unwrap();
    assert_eq!(lenient.records.len(), 3);
    let skipped: Vec<usize> = lenient.skipped.iter().map(|s| s.line).collect();
    assert_eq!(skipped, vec![2, 4, 6]);
    assert_skipped_because(&lenient.skipped, 0, "EOF");
    assert_skipped_because(&lenient.skipped, 1, "robot");
    assert_skipped_because(&lenient.skipped, 2, "assistant");

    let err = read_jsonl::<SftExample>(&path, true).unwrap_err();
    assert!(matches!(err, DataError::Jsonl { line: 2, .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: ", path.display())),
        "{err}"
    );
}

/// Every record of `dir/rel`, read strictly (the first bad line fails the test).
fn read_all<T: serde::de::DeserializeOwned + hymba_datasets::Validate>(
    dir: &Path,
    rel: &str,
) -> Vec<T> {
    let r = read_jsonl::<T>(dir.join(rel), true).unwrap();
    assert!(r.skipped.is_empty());
    r.records
}

/// The JSONL files of the shared data folder (mirrored in `fixtures/`), their formats and
/// their line counts in the shared folder.
const DATA_FILES: [(&str, Format, usize); 10] = [
    ("sft/natural_instructions.jsonl", Format::Sft, 9617),
    ("sft/topical_chat.jsonl", Format::Sft, 4000),
    ("dpo/hhh_alignment.jsonl", Format::Dpo, 221),
    ("dpo/qa_incorrect.jsonl", Format::Dpo, 6000),
    ("eval/social_iqa.jsonl", Format::Mc, 1954),
    ("eval/goal_step_wikihow.jsonl", Format::Mc, 3953),
    ("eval/timedial.jsonl", Format::Mc, 2550),
    ("eval/winogrande_twins.jsonl", Format::Mc, 4000),
    ("eval/mmlu_dev.jsonl", Format::Mc, 281),
    ("eval/recall_quoref.jsonl", Format::Recall, 1400),
];

#[derive(Clone, Copy)]
enum Format {
    Sft,
    Dpo,
    Mc,
    Recall,
}

/// Reads every data file under `dir` strictly and returns `(file, records)`; checks the
/// WinoGrande rows' partial-scoring contexts on the way.
fn parse_all(dir: &Path) -> Vec<(&'static str, usize)> {
    let mut counts = Vec::new();
    for (file, format, _) in DATA_FILES {
        let n = match format {
            Format::Sft => read_all::<SftExample>(dir, file).len(),
            Format::Dpo => read_all::<DpoExample>(dir, file).len(),
            Format::Mc => read_all::<McExample>(dir, file).len(),
            Format::Recall => read_all::<RecallExample>(dir, file).len(),
        };
        counts.push((file, n));
    }
    let wino = read_all::<McExample>(dir, "eval/winogrande_twins.jsonl");
    assert!(
        wino.iter()
            .all(|w| w.partial.as_ref().is_some_and(|p| p.contexts.len() == 2))
    );
    counts
}

#[test]
fn every_fixture_file_parses_and_validates() {
    for (file, n) in parse_all(&common::fixtures_dir()) {
        assert!(n >= 5, "{file}: {n} records");
    }
}

#[test]
#[ignore = "needs ../shared/data (the large corpora); run by .ci/run"]
fn every_shared_data_file_parses_and_validates() {
    let counts = parse_all(&common::data_dir());
    for ((file, got), (_, _, want)) in counts.into_iter().zip(DATA_FILES) {
        assert_eq!(got, want, "{file}");
    }
}

#[test]
#[ignore = "needs ../shared/data (the large corpora); run by .ci/run"]
fn shared_data_fixtures_are_verbatim_prefixes_of_the_shared_files() {
    let (shared, fixtures) = (common::data_dir(), common::fixtures_dir());
    let files = DATA_FILES.iter().map(|(f, _, _)| *f).chain([
        "tokenizer/llama2/tokenizer.json",
        "tokenizer/llama2/test_vectors.jsonl",
        "tokenizer/llama2/NOTICE",
    ]);
    for file in files {
        let ours = std::fs::read(fixtures.join(file)).unwrap();
        let theirs = std::fs::read(shared.join(file)).unwrap();
        assert!(
            !ours.is_empty()
                && theirs.starts_with(&ours)
                && (ours.len() == theirs.len() || ours.ends_with(b"\n")),
            "fixtures/{file} is not a whole-line prefix of ../shared/data/{file}"
        );
    }
}

#[test]
fn invalid_eval_records_are_rejected() {
    let bad_gold = r#"{"context": "c", "choices": [" a", " b"], "gold": 2}"#;
    let one_choice = r#"{"context": "c", "choices": [" a"], "gold": 0}"#;
    let no_answers = r#"{"context": "c", "question": "q", "answers": []}"#;
    let empty_chosen = r#"{"prompt": "p", "chosen": " ", "rejected": "r"}"#;
    let mc = hymba_datasets::parse_jsonl::<McExample>(
        format!("{bad_gold}\n{one_choice}\n").as_bytes(),
        "mc",
        false,
    )
    .unwrap();
    assert_eq!(mc.records.len(), 0);
    assert_skipped_because(&mc.skipped, 0, "gold 2 is out of range");
    assert_skipped_because(&mc.skipped, 1, "at least 2 choices");
    let rc =
        hymba_datasets::parse_jsonl::<RecallExample>(no_answers.as_bytes(), "rc", false).unwrap();
    assert_eq!(rc.skipped.len(), 1);
    let dp = hymba_datasets::parse_jsonl::<DpoExample>(empty_chosen.as_bytes(), "dpo", true)
        .unwrap_err();
    assert!(dp.to_string().contains("dpo:1: `chosen` is empty"), "{dp}");
}

#[test]
fn multiple_choice_scores_only_the_choice_tokens() {
    let (tok, lines) = (
        common::llama(),
        common::head_lines("eval/social_iqa.jsonl", 5),
    );
    for line in lines {
        let ex: McExample = serde_json::from_str(&line).unwrap();
        let ctx = tok.encode(&ex.context, true).unwrap();
        for (seq, choice) in ex.tokenize_choices(&tok).unwrap().iter().zip(&ex.choices) {
            assert_eq!(
                seq.ids[..seq.target_start],
                ctx[..],
                "context tokens come first"
            );
            assert_eq!(
                seq.ids,
                tok.encode(&format!("{}{choice}", ex.context), true)
                    .unwrap()
            );
            assert_eq!(
                tok.decode(&seq.ids[seq.target_start..]).unwrap(),
                choice.trim_start()
            );
        }
    }
    // WinoGrande: empty context, the whole sentence is scored after BOS.
    let ex = McExample {
        id: None,
        context: String::new(),
        choices: vec!["The cat sat.".into(), "The dog sat.".into()],
        gold: 0,
        source: None,
        partial: None,
    };
    let seqs = ex.tokenize_choices(&tok).unwrap();
    assert_eq!(seqs[0].target_start, 1);
    assert_eq!(tok.decode(&seqs[1].ids[1..]).unwrap(), "The dog sat.");
}

#[test]
fn dpo_pairs_share_the_prompt_and_mask_the_responses() {
    let lines = common::head_lines("dpo/hhh_alignment.jsonl", 10);
    let tok = default_tokenizer().unwrap();
    for line in lines {
        let ex: DpoExample = serde_json::from_str(&line).unwrap();
        for format in [PromptFormat::Chat, PromptFormat::Plain] {
            let pair = ex.tokenize(&tok, format).unwrap();
            for (side, text) in [(&pair.chosen, &ex.chosen), (&pair.rejected, &ex.rejected)] {
                let r = runs(&side.mask);
                assert_eq!(r.len(), 1);
                let got = tok.decode(&side.ids[r[0].0..r[0].1]).unwrap();
                match format {
                    PromptFormat::Chat => assert_eq!(got, format!("{text}\n")),
                    PromptFormat::Plain => assert_eq!(got, *text),
                }
            }
            let c = runs(&pair.chosen.mask)[0].0;
            let r = runs(&pair.rejected.mask)[0].0;
            assert_eq!(
                pair.chosen.ids[..c],
                pair.rejected.ids[..r],
                "same prompt tokens"
            );
        }
    }
}

/// Asserts that the `i`-th skipped line's reason mentions `why`.
fn assert_skipped_because(skipped: &[hymba_datasets::jsonl::SkippedLine], i: usize, why: &str) {
    assert!(skipped[i].reason.contains(why), "{}", skipped[i]);
}
