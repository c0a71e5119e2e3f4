//! Tensor parallelism on the CPU (worker threads over the shared sharding code): TP=2 and TP=4
//! logits equal TP=1 within float tolerance, and greedy tokens through the real scheduler are
//! identical, for every family the CPU backend runs.

use doppel_core::{
    Engine, Event, KvSlot, RequestId, RequestSpec, SamplingParams, Scheduler, SchedulerConfig,
};
use doppel_exec::cpu_backend::CpuBackend;
use doppel_exec::cpu_tp::{TpModel, TpRunError};
use doppel_exec::model::{
    Arch, CpuModel, ForwardErrorKind, LoadError, LogitsWanted, SeqInput, TpError,
};
use doppel_exec::testgen::{write_model, TinySpec};
use std::path::Path;

/// A tiny model of `arch` that splits 4 ways: 8 query heads, 4 KV heads (grouped attention),
/// biases where the family has them, and a vocabulary that does not divide by 4.
fn spec(arch: Arch) -> TinySpec {
    let mut s = TinySpec::tiny(arch);
    (s.num_heads, s.num_kv_heads, s.head_dim) = (8, 4, 8);
    s.attention_bias = arch == Arch::Llama;
    s.vocab_size = Some(391);
    s
}

/// Two sequences: a 9-token prefill (every position's logits) beside a 5-token one, then
/// three decode steps of both, through `run`; returns every logits row produced.
fn batches(mut run: impl FnMut(&[SeqInput<'_>], &mut Vec<f32>)) -> Vec<f32> {
    let a: Vec<u32> = (0..12u32).map(|i| (i * 37 + 5) % 380).collect();
    let b: Vec<u32> = (0..8u32).map(|i| (i * 11 + 1) % 380).collect();
    let row_a: Vec<KvSlot> = (0..12u32).map(|i| KvSlot(90 - 3 * i)).collect();
    let row_b: Vec<KvSlot> = (0..8u32).map(|i| KvSlot(100 + i)).collect();
    let mut out = Vec::new();
    run(
        &[
            seq(&a[..9], &row_a[..9], LogitsWanted::All),
            seq(&b[..5], &row_b[..5], LogitsWanted::Last),
        ],
        &mut out,
    );
    for step in 0..3 {
        let (ea, eb) = (10 + step, 6 + step);
        run(
            &[
                seq(&a[ea - 1..ea], &row_a[..ea], LogitsWanted::Last),
                seq(&b[eb - 1..eb], &row_b[..eb], LogitsWanted::Last),
            ],
            &mut out,
        );
    }
    out
}

fn seq<'a>(tokens: &'a [u32], kv_row: &'a [KvSlot], logits: LogitsWanted) -> SeqInput<'a> {
    SeqInput {
        tokens,
        kv_row,
        logits,
    }
}

fn logits_tp1(dir: &Path) -> Vec<f32> {
    let (model, _) = CpuModel::load(dir, false).unwrap();
    let mut kv = model.kv_cache(128);
    batches(|s, out| model.forward(&mut kv, s, out).unwrap())
}

fn logits_tp(dir: &Path, size: usize) -> Vec<f32> {
    let (mut tp, _) = TpModel::load(dir, size, false).unwrap();
    tp.alloc_kv(128).unwrap();
    batches(|s, out| tp.forward(s, out).unwrap())
}

fn greedy(backend: CpuBackend) -> Vec<Vec<u32>> {
    let cfg = SchedulerConfig {
        kv_capacity_tokens: 256,
        context_len: 128,
        req_pool_size: Some(4),
        chunked_prefill_size: Some(7),
        ..Default::default()
    };
    let mut engine = Engine::new(Scheduler::new(cfg).unwrap(), backend, true);
    for r in 0..3u32 {
        let prompt: Vec<u32> = (0..5 + 4 * r).map(|i| (i * 29 + 3 * r + 7) % 380).collect();
        let mut p = SamplingParams::greedy(12);
        p.ignore_eos = true;
        let spec = RequestSpec::new(RequestId(r.into()), prompt, p, 0);
        engine.scheduler.submit(spec).unwrap();
    }
    let mut events = Vec::new();
    let mut t = 0;
    while !engine.is_idle() {
        engine.iterate(t, &mut events).unwrap();
        t += 1;
        assert!(t < 1000);
    }
    let mut out = vec![Vec::new(); 3];
    for e in events {
        if let Event::Token { id, token, .. } = e {
            out[id.0 as usize].push(token);
        }
    }
    out
}

fn check(arch: Arch) {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &spec(arch)).unwrap();
    let reference = logits_tp1(dir.path());
    assert_eq!(reference.len(), (9 + 1 + 3 * 2) * 391);
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    for size in [2, 4] {
        let got = logits_tp(dir.path(), size);
        assert_eq!(got.len(), reference.len(), "{arch:?} TP={size}");
        let worst = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5 * scale.max(1.0),
            "{arch:?} TP={size}: logits differ by {worst} (scale {scale})"
        );
    }
    let (m, _) = CpuModel::load(dir.path(), false).unwrap();
    let tokens = greedy(CpuBackend::new(m, 256, 0));
    assert!(tokens.iter().all(|t| t.len() == 12));
    for size in [2, 4] {
        let (tp, _) = TpModel::load(dir.path(), size, false).unwrap();
        let backend = CpuBackend::tensor_parallel(tp, 256, 0).unwrap();
        assert_eq!(greedy(backend), tokens, "{arch:?} TP={size}: greedy tokens");
    }
}

#[test]
fn tp_2_and_4_equal_tp_1_qwen3() {
    check(Arch::Qwen3);
}

#[test]
fn tp_2_and_4_equal_tp_1_qwen2_with_qkv_biases() {
    check(Arch::Qwen2);
}

#[test]
fn tp_2_and_4_equal_tp_1_llama_with_qkv_and_o_biases() {
    check(Arch::Llama);
}

#[test]
fn tp_2_and_4_equal_tp_1_mistral() {
    check(Arch::Mistral);
}

#[test]
fn tp_size_that_does_not_divide_the_kv_heads_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &TinySpec::tiny(Arch::Qwen3)).unwrap();
    // 4 query heads, 2 KV heads.
    match TpModel::load(dir.path(), 4, false) {
        Err(LoadError::Tp { reason, .. }) => assert_eq!(
            reason,
            TpError::NotDivisible {
                field: "num_key_value_heads",
                value: 2,
                size: 4
            }
        ),
        other => panic!("expected a TP error, got {:?}", other.map(|_| ())),
    }
    let e = TpModel::load(dir.path(), 3, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("num_attention_heads (4)"), "{e}");
}

#[test]
fn bad_token_is_an_error_on_every_rank_without_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &TinySpec::tiny(Arch::Qwen2)).unwrap();
    let (mut tp, _) = TpModel::load(dir.path(), 2, false).unwrap();
    tp.alloc_kv(8).unwrap();
    let seq = SeqInput {
        tokens: &[100_000],
        kv_row: &[KvSlot(1)],
        logits: LogitsWanted::Last,
    };
    let e = tp.forward(&[seq], &mut Vec::new()).unwrap_err();
    assert!(matches!(
        e,
        TpRunError::Forward(ForwardErrorKind::TokenOutOfRange { token: 100_000, .. })
    ));
    // The group still works afterwards.
    let ok = SeqInput {
        tokens: &[5],
        ..seq
    };
    let mut out = Vec::new();
    tp.forward(&[ok], &mut out).unwrap();
    assert_eq!(out.len(), tp.config().vocab_size);
}
