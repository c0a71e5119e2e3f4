//! Trace format tests: defaults, good files, located errors.

use super::*;

const GOOD: &str = "profile: a100-80g/qwen3-0.6b/sglang\nworkload:\n  kind: random\n  num_requests: 10\n  input_len: 100\n  output_len: 10\n";

#[test]
fn defaults_are_sglangs() {
    let t = Trace::parse(GOOD, "t.yaml").unwrap();
    assert_eq!(t.name(), "t");
    assert_eq!(t.seed, 1);
    assert_eq!(t.engine, EngineSpec::default());
    assert_eq!(t.arrival.pattern, ArrivalPattern::Burst);
    let p = Profile::load(&t.profile).unwrap();
    let cfg = t.scheduler_config(&p, "t.yaml").unwrap();
    assert_eq!(cfg.chunked_prefill_size, Some(8192));
    assert!(
        cfg.kv_capacity_tokens > 500_000,
        "{}",
        cfg.kv_capacity_tokens
    );
}

#[test]
fn unknown_field_has_line_column_and_name() {
    let text = GOOD.replace("  input_len: 100", "  input_lenn: 100");
    let e = Trace::parse(&text, "bad.yaml").unwrap_err().to_string();
    assert!(e.starts_with("bad.yaml:"), "{e}");
    assert!(e.contains("input_lenn"), "{e}");
    assert!(!e.contains(":0:0:"), "{e}");
}

#[test]
fn wrong_type_is_located() {
    let text = GOOD.replace("num_requests: 10", "num_requests: ten");
    let e = Trace::parse(&text, "bad.yaml").unwrap_err().to_string();
    assert!(
        e.contains("bad.yaml:") && e.contains("ten") || e.contains("invalid"),
        "{e}"
    );
}

#[test]
fn bad_policy_lists_known_ones_with_line() {
    let text = format!("{GOOD}engine:\n  policy: shortest\n");
    let e = Trace::parse(&text, "bad.yaml").unwrap_err().to_string();
    assert!(
        e.contains("bad.yaml:8") && e.contains("engine.policy") && e.contains("lpm"),
        "{e}"
    );
}

#[test]
fn poisson_needs_a_rate() {
    let text = format!("{GOOD}arrival:\n  pattern: poisson\n");
    let e = Trace::parse(&text, "bad.yaml").unwrap_err().to_string();
    assert!(e.contains("arrival.rate"), "{e}");
}

#[test]
fn pool_too_small_is_reported() {
    let text = format!("{GOOD}engine:\n  kv_capacity_tokens: 1\n");
    let t = Trace::parse(&text, "small.yaml").unwrap();
    let p = Profile::load(&t.profile).unwrap();
    let e = t
        .scheduler_config(&p, "small.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("small.yaml") && e.contains("smaller than one request"),
        "{e}"
    );
}

#[test]
fn explicit_requests_need_one_prompt_form() {
    let text = "profile: a100-80g/qwen3-0.6b/sglang\nworkload:\n  kind: requests\n  requests:\n    - {output_len: 4}\n";
    let e = Trace::parse(text, "x.yaml").unwrap_err().to_string();
    assert!(e.contains("workload.requests[0].prompt"), "{e}");
}

#[test]
fn vocab_defaults_to_the_model_s_and_zero_is_refused_by_name() {
    let t = Trace::parse(GOOD, "t.yaml").unwrap();
    assert_eq!(t.prompt_vocab(151_936), 151_936);
    let t = Trace::parse(&format!("vocab: 32000\n{GOOD}"), "t.yaml").unwrap();
    assert_eq!(t.prompt_vocab(151_936), 32_000);
    let e = Trace::parse(&format!("vocab: 0\n{GOOD}"), "bad.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.yaml") && e.contains("vocab"), "{e}");
}
