//! Tokenizer, chat template and streaming detokenization with stop strings.

use doppel_exec::tokenizer::{ChatMessage, Detokenizer, TextStream, Tokenizer};
use std::path::PathBuf;

fn tok() -> Tokenizer {
    Tokenizer::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen3"))
        .unwrap()
}

const TEXTS: [&str; 3] = [
    "The scheduler looked at the queue, picked the oldest request first.",
    "naïve café: 日本語 and an emoji 🙂 in the middle",
    "  leading spaces,\nnew lines\n\nand <|im_end|> a special token",
];

#[test]
fn streaming_decode_equals_full_decode() {
    let t = tok();
    for text in TEXTS {
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), text, "round trip");
        let mut d = Detokenizer::new(&[], false);
        let mut out = String::new();
        for &id in &ids {
            let piece = d.push(&t, id).unwrap();
            assert!(
                !piece.contains('\u{FFFD}'),
                "a partial character was emitted for {text:?}"
            );
            out.push_str(&piece);
        }
        out.push_str(&d.flush(&t).unwrap());
        assert_eq!(out, text);
    }
}

fn stream(
    text: &str,
    stops: &[&str],
    include: bool,
    min_new: usize,
) -> (String, Option<String>, usize) {
    let t = tok();
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    let mut s = TextStream::new(&stops, include, min_new, true);
    let mut out = String::new();
    let ids = t.encode(text, false).unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let step = s.push(&t, id).unwrap();
        out.push_str(&step.emit);
        if step.stopped.is_some() {
            assert_eq!(s.text(), out);
            return (out, step.stopped, i + 1);
        }
    }
    out.push_str(&s.finish(&t).unwrap());
    assert_eq!(s.text(), out);
    (out, None, ids.len())
}

#[test]
fn stop_strings_trim_and_stop_early() {
    let text = "one, two, three, four, five";
    let (out, stop, _) = stream(text, &["three", "zebra"], false, 0);
    assert_eq!(
        (out.as_str(), stop.as_deref()),
        ("one, two, ", Some("three"))
    );
    let (out, _, _) = stream(text, &["three"], true, 0);
    assert_eq!(out, "one, two, three");
    // Earliest match wins even when another stop string ends first in a later piece.
    let (out, stop, _) = stream(text, &["four", "o, t"], false, 0);
    assert_eq!((out.as_str(), stop.as_deref()), ("one, tw", Some("o, t")));
    // No match: everything comes out, nothing held back at the end.
    let (out, stop, _) = stream(text, &["five, six"], false, 0);
    assert_eq!((out.as_str(), stop), (text, None));
    // Special tokens are skipped in the output text.
    let (out, _, _) = stream("a<|im_end|>b", &[], false, 0);
    assert_eq!(out, "ab");
}

#[test]
fn min_new_tokens_delays_stop_strings() {
    let text = "one, two, one, two, three";
    let (out, stop, n) = stream(text, &["one"], false, 0);
    assert_eq!(
        (out.as_str(), stop.as_deref(), n > 0),
        ("", Some("one"), true)
    );
    let (out, stop, _) = stream(text, &["one"], false, 4);
    assert!(out.starts_with("one, two, "), "{out}");
    assert_eq!(stop.as_deref(), Some("one"));
}

#[test]
fn chat_template_renders_like_hf() {
    let t = tok();
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
    ];
    assert_eq!(
        t.apply_chat_template(&msgs, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn python_style_templates_render() {
    // Constructs real templates use: string methods, namespace, loop variables, raise_exception.
    let d = tempfile::tempdir().unwrap();
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen3/tokenizer.json");
    std::fs::copy(src, d.path().join("tokenizer.json")).unwrap();
    let template = r#"{%- set ns = namespace(sys='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}{%- set ns.sys = m.content.strip() -%}
  {%- elif m.role not in ['user', 'assistant'] -%}{{ raise_exception('bad role ' ~ m.role) }}
  {%- else -%}[{{ loop.index0 }}:{{ m.role.upper() }}]{{ m.content.split('</think>')[-1].lstrip() }}{% if m.content.startswith('Q') %}?{% endif %}
{% endif -%}
{%- endfor -%}
SYS={{ ns.sys }}{{ eos_token }}"#;
    let cfg =
        serde_json::json!({"chat_template": template, "eos_token": {"content": "<|im_end|>"}});
    std::fs::write(d.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = Tokenizer::load(d.path()).unwrap();
    let msgs = [
        ChatMessage::new("system", "  sys  "),
        ChatMessage::new("user", "Question"),
        ChatMessage::new("assistant", "<think>x</think>  answer"),
    ];
    assert_eq!(
        t.apply_chat_template(&msgs, false).unwrap(),
        // trim_blocks (as HF sets it) drops the newline after each block tag.
        "[1:USER]Question?[2:ASSISTANT]answerSYS=sys<|im_end|>"
    );
    let e = t
        .apply_chat_template(&[ChatMessage::new("tool", "x")], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad role tool"), "{e}");
}

#[test]
fn qwen_style_template_constructs_render() {
    // The constructs Qwen3-style templates rely on: reversed slices, `is string`, dict `.get`,
    // `in` on strings, rstrip/lstrip with arguments, `tojson`, `is defined`, loop.last.
    let d = tempfile::tempdir().unwrap();
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen3/tokenizer.json");
    std::fs::copy(src, d.path().join("tokenizer.json")).unwrap();
    let template = r#"{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages[::-1] -%}
  {%- if ns.last_user < 0 and m.role == 'user' and m.content is string -%}{%- set ns.last_user = (messages|length - 1) - loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for m in messages -%}
  {%- set content = m.get('content', '') -%}
  {%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1].lstrip('\n') -%}{%- endif -%}
  <|im_start|>{{ m.role }}{{ '*' if loop.index0 == ns.last_user else '' }}
{{ content.rstrip('\n') }}{% if m.extra is defined %}{{ m.extra | tojson }}{% endif %}{{ '<|im_end|>' if not loop.last else '' }}
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"#;
    let cfg = serde_json::json!({ "chat_template": template });
    std::fs::write(d.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = Tokenizer::load(d.path()).unwrap();
    let msgs = [
        ChatMessage::new("user", "first"),
        ChatMessage::new("assistant", "<think>\nhmm\n</think>\n\nanswer\n\n"),
        ChatMessage::new("user", "second"),
    ];
    assert_eq!(
        t.apply_chat_template(&msgs, true).unwrap(),
        "<|im_start|>user\nfirst<|im_end|>\n<|im_start|>assistant\nanswer<|im_end|>\n<|im_start|>user*\nsecond\n<|im_start|>assistant\n"
    );
}
