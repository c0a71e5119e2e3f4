//! The CPU forward pass: incremental decode over a scattered paged KV cache gives bit-identical
//! logits to recomputing the whole sequence, for every supported family.

use doppel_core::KvSlot;
use doppel_exec::model::{Arch, CpuModel, KvCache, LogitsWanted, RopeScaling, SeqInput};
use doppel_exec::testgen::{write_model, TinySpec};

fn full(model: &CpuModel, tokens: &[u32]) -> Vec<f32> {
    let mut kv = KvCache::new(model.config(), tokens.len() + 1);
    let row: Vec<KvSlot> = (1..=tokens.len() as u32).map(KvSlot).collect();
    let mut out = Vec::new();
    model
        .forward(
            &mut kv,
            &[SeqInput {
                tokens,
                kv_row: &row,
                logits: LogitsWanted::All,
            }],
            &mut out,
        )
        .unwrap();
    out
}

fn check(arch: Arch, shards: usize) {
    let mut spec = TinySpec::tiny(arch);
    spec.shards = shards;
    check_spec(&spec);
}

fn check_spec(spec: &TinySpec) {
    let arch = spec.arch;
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), spec).unwrap();
    let (model, _) = CpuModel::load(dir.path(), false).unwrap();
    let vocab = model.config().vocab_size;
    let tokens: Vec<u32> = (0..23u32).map(|i| (i * 37 + 5) % 300).collect();
    let reference = full(&model, &tokens);
    assert_eq!(reference.len(), tokens.len() * vocab);
    assert!(reference.iter().all(|x| x.is_finite()));
    // Scattered slots, prefill of 9 tokens, then in chunks of 1 and 4, batched with an unrelated sequence.
    let cap = 200;
    let mut kv = KvCache::new(model.config(), cap);
    let row: Vec<KvSlot> = (0..tokens.len() as u32)
        .map(|i| KvSlot(150 - 3 * i))
        .collect();
    let other_tokens: Vec<u32> = (0..30u32).map(|i| (i * 11 + 1) % 300).collect();
    let other_row: Vec<KvSlot> = (0..30u32).map(|i| KvSlot(160 + i)).collect();
    let mut pos = 0;
    let mut step = 0;
    while pos < tokens.len() {
        let n = if pos == 0 {
            9
        } else if step % 2 == 0 {
            1
        } else {
            4
        }
        .min(tokens.len() - pos);
        let end = pos + n;
        let o_end = (step + 1).min(other_tokens.len());
        let seqs = [
            SeqInput {
                tokens: &other_tokens[o_end - 1..o_end],
                kv_row: &other_row[..o_end],
                logits: LogitsWanted::Last,
            },
            SeqInput {
                tokens: &tokens[pos..end],
                kv_row: &row[..end],
                logits: LogitsWanted::All,
            },
        ];
        let mut out = Vec::new();
        model.forward(&mut kv, &seqs, &mut out).unwrap();
        assert_eq!(out.len(), (1 + n) * vocab);
        assert_eq!(
            &out[vocab..],
            &reference[pos * vocab..end * vocab],
            "{arch:?} positions {pos}..{end}"
        );
        pos = end;
        step += 1;
    }
}

#[test]
fn incremental_equals_full_qwen3() {
    check(Arch::Qwen3, 1);
}

#[test]
fn incremental_equals_full_qwen2_sharded() {
    check(Arch::Qwen2, 3);
}

#[test]
fn incremental_equals_full_llama3() {
    check(Arch::Llama, 2);
}

#[test]
fn incremental_equals_full_mistral_head_dim_64_group_4() {
    let mut spec = TinySpec::tiny(Arch::Mistral);
    (
        spec.hidden_size,
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
    ) = (128, 4, 1, 64);
    check_spec(&spec);
}

#[test]
fn incremental_equals_full_qwen2_yarn() {
    let mut spec = TinySpec::tiny(Arch::Qwen2);
    spec.rope_scaling = RopeScaling::yarn(4.0, 16.0);
    check_spec(&spec);
}

/// Logits of `tokens` (every position) for `spec` with its rope scaling replaced by `scaling`.
fn logits_with(spec: &TinySpec, scaling: RopeScaling, tokens: &[u32]) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec.clone();
    s.rope_scaling = scaling;
    write_model(dir.path(), &s).unwrap();
    let (model, _) = CpuModel::load(dir.path(), false).unwrap();
    full(&model, tokens)
}

#[test]
fn yarn_of_factor_one_is_plain_rope_and_factor_four_is_not() {
    let spec = TinySpec::tiny(Arch::Qwen3);
    let tokens: Vec<u32> = (0..40u32).map(|i| (i * 29 + 3) % 300).collect();
    let plain = logits_with(&spec, RopeScaling::None, &tokens);
    // Factor 1: no frequency is divided (up to the ramp's rounding) and the attention factor is 1.
    let one = logits_with(&spec, RopeScaling::yarn(1.0, 16.0), &tokens);
    let scale = plain.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = one
        .iter()
        .zip(&plain)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff / scale < 1e-5, "relative difference {}", diff / scale);
    let yarn = logits_with(&spec, RopeScaling::yarn(4.0, 16.0), &tokens);
    let vocab = yarn.len() / tokens.len();
    let last = (tokens.len() - 1) * vocab;
    let moved = yarn[last..]
        .iter()
        .zip(&plain[last..])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        moved / scale > 1e-3,
        "YaRN barely changed the logits: {}",
        moved / scale
    );
}
