//! `recall`: the synthetic phone book puts the queried entry exactly `distance` lines before
//! the question and is a function of the seed; QA scoring is SQuAD EM/F1 by hand.

use hymba_datasets::RecallExample;
use hymba_eval::recall::{first_line, phonebook, qa_scores};

#[test]
fn phonebook_queries_the_entry_at_the_asked_distance() {
    for (entries, distance, seed) in [(20, 1, 0), (20, 20, 1), (24, 7, 2), (5, 3, 3)] {
        let item = phonebook(entries, distance, seed).expect("valid");
        let lines: Vec<&str> = item.prompt.lines().collect();
        // "Phone book:", the entries, then the question and "Answer:".
        assert_eq!(lines.len(), entries + 3, "{}", item.prompt);
        let question = lines[entries + 1];
        let name = question
            .strip_prefix("Question: What is ")
            .and_then(|q| q.strip_suffix("'s number?"))
            .expect("question line");
        let entry = lines[entries + 1 - distance];
        assert_eq!(
            entry,
            format!("{name}:{}", item.answer),
            "distance {distance}"
        );
        // The name is listed once.
        assert_eq!(
            lines[1..=entries]
                .iter()
                .filter(|l| l.starts_with(&format!("{name}:")))
                .count(),
            1
        );
        assert!(item.prompt.ends_with("Answer:"));
        assert_eq!(phonebook(entries, distance, seed), Some(item));
    }
    assert_ne!(phonebook(20, 5, 0), phonebook(20, 5, 1));
    assert!(phonebook(20, 0, 0).is_none());
    assert!(phonebook(20, 21, 0).is_none());
    assert!(phonebook(25, 1, 0).is_none());
}

#[test]
fn qa_scores_are_squad_exact_match_and_f1() {
    let ex = |answers: &[&str]| RecallExample {
        id: None,
        context: String::new(),
        question: "q".into(),
        answers: answers.iter().map(|s| s.to_string()).collect(),
        source: None,
    };
    let examples = [
        ex(&["Peter Warlock"]),
        ex(&["the Eton College", "Eton"]),
        ex(&["1894"]),
    ];
    let predictions = [
        "peter warlock.".to_string(),          // exact after normalisation
        "Eton College in England".to_string(), // F1 vs "eton college": p 2/4, r 2/2 → 2/3
        "1930".to_string(),                    // wrong
    ];
    let (em, f1) = qa_scores(&examples, &predictions);
    assert!((em - 1.0 / 3.0).abs() < 1e-12, "em {em}");
    assert!(
        (f1 - (1.0 + 2.0 / 3.0 + 0.0) / 3.0).abs() < 1e-12,
        "f1 {f1}"
    );
    assert_eq!(
        first_line("  Peter Warlock\nQuestion: next"),
        "Peter Warlock"
    );
}
