//! `doppel exec generate` end to end on the committed tiny Llama checkpoint: the text streamed
//! is the transformers-verified greedy continuation, stop strings cut it, bad input is refused.

use std::process::Command;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/exec/tests/fixtures/tiny-llama"
);
const PROMPT: &str = "What is the capital of France? Paris is";

fn generate(extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "exec", "generate", "--model", MODEL, "--prompt", PROMPT, "--quiet",
        ])
        .args(["--max-new-tokens", "12", "--ignore-eos"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn reference_text() -> String {
    let refj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{MODEL}/reference.json")).unwrap())
            .unwrap();
    let p = refj["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["text"] == PROMPT)
        .unwrap();
    let ids: Vec<u32> = p["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let tok = doppel_exec::tokenizer::Tokenizer::load(std::path::Path::new(MODEL)).unwrap();
    tok.decode(&ids, true).unwrap()
}

#[test]
fn greedy_text_matches_reference_and_stops_on_strings() {
    let (ok, out, err) = generate(&["--temperature", "0"]);
    assert!(ok, "{err}");
    let text = out.strip_suffix('\n').unwrap();
    assert_eq!(text, reference_text());
    assert!(
        err.contains("generated tokens 12") && err.contains("prompt tokens 27"),
        "{err}"
    );
    // A stop string from the middle of that text: output ends just before it (or after, with --include-stop).
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let (at, stop) = chars
        .windows(2)
        .skip(2)
        .map(|w| (w[0].0, format!("{}{}", w[0].1, w[1].1)))
        .find(|(i, s)| {
            s.chars().all(|c| c.is_ascii_alphanumeric()) && text.find(s.as_str()) == Some(*i)
        })
        .expect("an ASCII pair in the reference text");
    let (ok, out, err) = generate(&["--temperature", "0", "--stop", &stop]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", &text[..at]), "stop {stop:?}");
    assert!(err.contains("StopString"), "{err}");
    let (_, out, _) = generate(&["--temperature", "0", "--stop", &stop, "--include-stop"]);
    assert_eq!(out, format!("{}\n", &text[..at + stop.len()]));
    // The overlap order (one step in flight when the stop string is seen) prints the same.
    let (ok, out, err) = generate(&[
        "--temperature",
        "0",
        "--stop",
        &stop,
        "--overlap",
        "--chunked-prefill-size",
        "5",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", &text[..at]));
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "exec",
            "generate",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "x",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/model: no such directory"),
        "{err}"
    );
    let (ok, _, err) = generate(&["--top-p", "1.5"]);
    assert!(!ok && err.contains("--top-p 1.5"), "{err}");
    let (ok, _, err) = generate(&["--device", "tpu"]);
    assert!(!ok && err.contains("--device tpu"), "{err}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let args = ["--temperature", "1.0", "--seed", "5", "--top-k", "50"];
    let a = generate(&args);
    let b = generate(&args);
    assert!(a.0, "{}", a.2);
    assert_eq!(a.1, b.1);
    let c = generate(&["--temperature", "1.0", "--seed", "6", "--top-k", "50"]);
    assert_ne!(a.1, c.1, "a different seed should change a 12-token sample");
}
