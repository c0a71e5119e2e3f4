//! Our CPU backend against transformers + torch (f32, eager attention), from reference files
//! written by tools/hf_reference.py for the committed tiny checkpoints: every prompt position's
//! logits within 1e-4 relative error, the same greedy continuation through the real scheduler, and
//! the same tokenization and chat template rendering as the HF tokenizer.

use doppel_core::{
    Engine, Event, KvSlot, RequestId, RequestSpec, SamplingParams, Scheduler, SchedulerConfig,
};
use doppel_exec::cpu_backend::CpuBackend;
use doppel_exec::model::{CpuModel, KvCache, LogitsWanted, SeqInput};
use doppel_exec::tokenizer::{ChatMessage, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy_via_engine(dir: &std::path::Path, prompt: &[u32], n: usize) -> Vec<u32> {
    let (model, _) = CpuModel::load(dir, false).unwrap();
    let cfg = SchedulerConfig {
        kv_capacity_tokens: 512,
        context_len: 256,
        req_pool_size: Some(4),
        chunked_prefill_size: Some(7),
        ..Default::default()
    };
    let backend = CpuBackend::new(model, cfg.kv_capacity_tokens, 0);
    let mut engine = Engine::new(Scheduler::new(cfg).unwrap(), backend, true);
    let mut p = SamplingParams::greedy(n);
    p.ignore_eos = true;
    engine
        .scheduler
        .submit(RequestSpec::new(RequestId(0), prompt.to_vec(), p, 0))
        .unwrap();
    let mut events = Vec::new();
    let mut t = 0;
    while !engine.is_idle() {
        engine.iterate(t, &mut events).unwrap();
        t += 1;
        assert!(t < 1000);
    }
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Token { token, .. } => Some(token),
            _ => None,
        })
        .collect()
}

fn check(name: &str) {
    let dir = fixture(name);
    let refj: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    assert!(
        refj.get("hf_tokenizer_error").is_none(),
        "{name}: the reference script could not load the tokenizer"
    );
    let blob = std::fs::read(dir.join("reference-logits.bin")).unwrap();
    let reference: Vec<f32> = blob
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (model, _) = CpuModel::load(&dir, false).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    let vocab = model.config().vocab_size;
    assert_eq!(refj["vocab_size"].as_u64(), Some(vocab as u64));
    let prompts = refj["prompts"].as_array().unwrap();
    assert_eq!(
        prompts.len(),
        4,
        "{name}: expected the id, two text and the chat prompt"
    );
    let mut worst = 0f32;
    for p in prompts {
        let pname = p["name"].as_str().unwrap();
        let pid = ids(&p["ids"]);
        if let Some(chat) = p.get("chat") {
            let msgs: Vec<ChatMessage> = serde_json::from_value(chat.clone()).unwrap();
            let text = tok.apply_chat_template(&msgs, true).unwrap();
            assert_eq!(
                text,
                p["text"].as_str().unwrap(),
                "{name}: chat template rendering differs"
            );
        }
        if let Some(text) = p.get("text").and_then(Value::as_str) {
            let add = p["add_special_tokens"].as_bool().unwrap();
            assert_eq!(
                tok.encode(text, add).unwrap(),
                pid,
                "{name}/{pname}: tokenization differs from HF"
            );
        }
        let mut kv = KvCache::new(model.config(), pid.len() + 1);
        let row: Vec<KvSlot> = (1..=pid.len() as u32).map(KvSlot).collect();
        let mut ours = Vec::new();
        model
            .forward(
                &mut kv,
                &[SeqInput {
                    tokens: &pid,
                    kv_row: &row,
                    logits: LogitsWanted::All,
                }],
                &mut ours,
            )
            .unwrap();
        let off = p["logits_offset"].as_u64().unwrap() as usize;
        let rows = p["rows"].as_u64().unwrap() as usize;
        assert_eq!(rows, pid.len());
        for r in 0..rows {
            let want = &reference[off + r * vocab..off + (r + 1) * vocab];
            let got = &ours[r * vocab..(r + 1) * vocab];
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            worst = worst.max(err);
            assert!(
                err < 1e-4,
                "{name}/{pname} position {r}: relative error {err:e}"
            );
        }
        let n = refj["greedy_tokens"].as_u64().unwrap() as usize;
        assert_eq!(
            greedy_via_engine(&dir, &pid, n),
            ids(&p["greedy"]),
            "{name}/{pname}: greedy continuation"
        );
    }
    eprintln!("{name}: worst relative logits error vs transformers {worst:e}");
}

#[test]
fn qwen3_matches_transformers() {
    check("tiny-qwen3");
}

#[test]
fn llama3_matches_transformers() {
    check("tiny-llama");
}

#[test]
fn qwen2_matches_transformers() {
    check("tiny-qwen2");
}

#[test]
fn mistral_matches_transformers() {
    check("tiny-mistral");
}

#[test]
fn qwen2_yarn_matches_transformers() {
    check("tiny-qwen2-yarn");
}
