//! The CPU forward pass: incremental decode over a scattered paged KV cache gives bit-identical
//! logits to recomputing the whole sequence, for every supported family.

use doppel_core::KvSlot;
use doppel_exec::model::{Arch, CpuModel, KvCache, LogitsWanted, SeqInput};
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
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TinySpec::tiny(arch);
    spec.shards = shards;
    write_model(dir.path(), &spec).unwrap();
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
