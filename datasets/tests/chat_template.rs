//! `CHAT_TEMPLATE_JINJA` (written into a chat model's `tokenizer_config.json`) renders, under
//! Jinja with HF's `trim_blocks` / `lstrip_blocks`, exactly what `render_chat` /
//! `tokenize_chat` / `render_generation_prompt` produce.

mod common;

use hymba_datasets::sft::render_generation_prompt;
use hymba_datasets::{CHAT_TEMPLATE_JINJA, Message, Role, SftExample, render_chat, tokenize_chat};

/// Renders the template as `apply_chat_template` does.
fn apply(messages: &[Message], bos: &str, eos: &str, add_generation_prompt: bool) -> String {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_template("chat", CHAT_TEMPLATE_JINJA)
        .expect("template parses");
    env.get_template("chat")
        .unwrap()
        .render(minijinja::context! {
            messages => messages,
            bos_token => bos,
            eos_token => eos,
            add_generation_prompt => add_generation_prompt,
        })
        .expect("template renders")
}

fn conversations() -> Vec<Vec<Message>> {
    let m = Message::new;
    let mut out = vec![
        vec![
            m(Role::System, "Be brief."),
            m(Role::User, "Capital of France?"),
            m(Role::Assistant, "Paris."),
            m(Role::User, "And of Italy?"),
            m(Role::Assistant, "Rome, of course."),
        ],
        vec![m(Role::User, "hi"), m(Role::Assistant, "")],
        vec![
            m(Role::System, ""),
            m(Role::User, "  spaced\n\nlines  "),
            m(Role::Assistant, "{{ not jinja }} {% raw %}"),
        ],
    ];
    for line in common::head_lines("sft/topical_chat.jsonl", 5)
        .into_iter()
        .chain(common::head_lines("sft/natural_instructions.jsonl", 5))
    {
        let ex: SftExample = serde_json::from_str(&line).unwrap();
        out.push(ex.messages);
    }
    out
}

#[test]
fn jinja_template_renders_like_render_chat() {
    for messages in conversations() {
        let chat = render_chat(&messages).unwrap().text;
        assert_eq!(
            apply(&messages, "<s>", "</s>", false),
            format!("<s>{chat}</s>"),
            "{messages:?}"
        );
        let prompt = render_generation_prompt(&messages[..messages.len() - 1]).unwrap();
        assert_eq!(
            apply(&messages[..messages.len() - 1], "<s>", "</s>", true),
            format!("<s>{prompt}"),
            "{messages:?}"
        );
    }
}

#[test]
fn jinja_template_tokenizes_like_tokenize_chat() {
    let tok = common::llama();
    for messages in conversations() {
        let text = apply(&messages, "<s>", "</s>", false);
        // `apply_chat_template(tokenize=True)` encodes without adding special tokens: the
        // template's own `<s>` and `</s>` become BOS and EOS.
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            tokenize_chat(&tok, &messages).unwrap().ids,
            "{text:?}"
        );
    }
}
