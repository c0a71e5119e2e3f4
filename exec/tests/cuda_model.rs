//! The whole model on the GPU.
//!
//! * `qwen3_logits_match_transformers`: a random-weight checkpoint (real shapes) and
//!   transformers' bf16 logits, made on the GPU machine by scripts/gpu/make_reference.py (Qwen3-0.6B)
//!   or scripts/gpu/make_models.py (any supported architecture, prompts up to 32k tokens) and
//!   passed as DOPPEL_HF_REF=dir; our logits for several batch mixes (one extend batch, one
//!   prompt at a time, chunked prefill over a cached prefix, decode of the last token) must be
//!   no further from transformers' f32 logits on the same weights than 1.25 x its own bf16
//!   logits are (floor 1.6e-2; references without f32 logits: within 2e-2 of its bf16 ones).
//!   Also runs CudaBackend under the real scheduler for 8 greedy tokens and reports agreement
//!   with transformers' greedy continuation.
//! * `vs_cpu::cuda_backend_matches_cpu_backend` (cuda_model_parts/vs_cpu.rs): a tiny random model (head_dim 64, bf16 weights) under
//!   the real scheduler: the same greedy tokens from CudaBackend as from CpuBackend, in plain and
//!   overlap order, with prefix hits, chunked prefill and a pool small enough to retract;
//!   `..._on_each_architecture` repeats it for tiny Llama, Mistral, Qwen3-with-YaRN and Qwen2
//!   (q/k/v biases) models.
//!
//! Both skip (printing why) without a GPU.

mod cuda_common;
mod engine_common;
#[path = "cuda_model_parts/vs_cpu.rs"]
mod vs_cpu;

use cuda_common::{open_gpu, rel_err, Rng};
use doppel_core::{Engine, Event, RequestSpec, SamplingParams, Scheduler, SchedulerConfig};
use doppel_exec::cuda::attention::{decode_splits, AttnEntry, DecodeMeta, ExtendMeta};
use doppel_exec::cuda::backend::{CudaBackend, CudaBackendConfig};
use doppel_exec::cuda::model::{
    GpuModel, KvPool, RowSampling, StepBatch, StepInput, TokenPick, Workspace,
};
use doppel_exec::cuda::Gpu;
use doppel_exec::model::{ModelConfig, WeightStore};
use engine_common::{req, run_waves};
use std::collections::BTreeMap;
use std::path::Path;

/// One sequence of a step: table row, the new tokens, and how many positions are cached.
struct Seq<'a> {
    row: usize,
    tokens: &'a [u32],
    prefix: usize,
}

/// Run one step and return each sequence's last-position logits.
fn run_step(
    gpu: &Gpu,
    model: &GpuModel,
    kv: &KvPool,
    ws: &mut Workspace,
    table: &[u32],
    seqs: &[Seq<'_>],
    decode: bool,
) -> Vec<Vec<f32>> {
    let mut s = StepInput::default();
    for q in seqs {
        let q_start = s.ids.len();
        for (i, &t) in q.tokens.iter().enumerate() {
            let p = q.prefix + i;
            s.ids.push(t);
            s.tok_row.push(q.row as u32);
            s.positions.push(p as i32);
            s.out_slots.push(table[q.row * kv.max_ctx + p]);
        }
        let e = AttnEntry {
            q_start,
            q_len: q.tokens.len(),
            kv_len: q.prefix + q.tokens.len(),
            row: q.row,
        };
        if decode {
            s.decode.push(e)
        } else {
            s.extend.push(e)
        }
        s.logit_tok.push((s.ids.len() - 1) as u32);
        s.logit_row.push(q.row as u32);
        s.sampling.push(RowSampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.0,
        });
    }
    s.validate(model, kv, ws).unwrap();
    model.upload_step(gpu, ws, &s).unwrap();
    let t = s.ids.len();
    let group = model.cfg.num_heads / model.cfg.num_kv_heads;
    let ext =
        (!decode).then(|| ExtendMeta::new(gpu, &s.extend, t, kv.rows, kv.max_ctx, group).unwrap());
    let dec = decode.then(|| DecodeMeta::new(gpu, &s.decode, t, kv.rows, kv.max_ctx).unwrap());
    let splits =
        decode_splits(seqs.len(), model.cfg.num_kv_heads, kv.max_ctx, 132).min(ws.max_splits);
    // The measured GEMM algorithms (cuBLASLt where one wins) are what these logits check.
    model.tune_gemms(gpu, ws, t, seqs.len()).unwrap();
    model
        .forward(
            gpu,
            kv,
            ws,
            StepBatch {
                tokens: t,
                extend: ext.as_ref(),
                decode: dec.as_ref().map(|d| (d, splits)),
                rows: seqs.len(),
                pick: TokenPick::Argmax,
            },
        )
        .unwrap();
    let v = model.cfg.vocab_size;
    let all = gpu
        .stream
        .clone_dtoh(&ws.logits.slice(0..seqs.len() * v))
        .unwrap();
    all.chunks(v).map(|c| c.to_vec()).collect()
}

#[test]
fn qwen3_logits_match_transformers() {
    let Some(dir) = std::env::var_os("DOPPEL_HF_REF") else {
        eprintln!("skipping: DOPPEL_HF_REF is not set (scripts/gpu/make_reference.py makes it)");
        return;
    };
    let Some(gpu) = open_gpu() else { return };
    let dir = Path::new(&dir);
    let cfg = ModelConfig::load(dir).unwrap();
    let store = WeightStore::open(dir).unwrap();
    let prompts: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/prompts.json")).unwrap())
            .unwrap();
    // Sized from the prompts: scripts/gpu/models.sh passes one of 32k tokens.
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let total: usize = prompts.iter().map(Vec::len).sum();
    let max_ctx = (longest + 16).next_multiple_of(64).max(512);
    let kv_cap = (total + 64 * prompts.len()).max(8192);
    let max_pos = (longest + 64).max(4096);
    let mut model = GpuModel::load(&gpu, &cfg, &store, max_pos).unwrap();
    // The measured GEMM algorithms at every cuBLAS size, so these batches exercise them.
    model.kernels.gemm_lt_min_tokens = 0;
    let bytes = std::fs::read(dir.join("reference/logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let floats = |name: &str| -> Option<Vec<f64>> {
        let t = st.tensor(name).ok()?;
        Some(
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
        )
    };
    let reference = floats("logits").unwrap();
    // transformers in f32 on the same weights (newer references): the truth; without it the
    // check falls back to transformers' bf16 logits.
    let truth = floats("logits_f32");
    let v = cfg.vocab_size;
    let n = prompts.len();
    let mut kv = KvPool::new(&gpu, &model, kv_cap, n + 1, max_ctx).unwrap();
    let mut ws = Workspace::new(&gpu, &model, total.max(1024), n, 64).unwrap();
    let mut rng = Rng::new(3);
    let mut worst = 0f64;
    let mut worst_ratio = 0f64;
    let mut check = |what: &str, i: usize, got: &[f32]| {
        let r = &reference[i * v..(i + 1) * v];
        let got: Vec<f64> = got.iter().map(|x| *x as f64).collect();
        let e = rel_err(&got, r);
        let am = |x: &[f64]| {
            x.iter()
                .enumerate()
                .fold(0, |b, (j, &y)| if y > x[b] { j } else { b })
        };
        let vs_truth = truth.as_ref().map(|t| {
            let t = &t[i * v..(i + 1) * v];
            let (ours, theirs) = (rel_err(&got, t), rel_err(r, t));
            worst_ratio = worst_ratio.max(ours / theirs.max(TRUTH_FLOOR));
            format!("; vs f32: ours {ours:.3e}, transformers bf16 {theirs:.3e}")
        });
        eprintln!(
            "{what:<34} prompt {i} (len {:>3}): rel err {e:.3e}, argmax ours {} ref {}{}",
            prompts[i].len(),
            am(&got),
            am(r),
            vs_truth.unwrap_or_default()
        );
        worst = worst.max(e);
    };
    for mix in [
        "one extend batch",
        "one prompt at a time",
        "chunked prefill",
        "decode last token",
    ] {
        // Fresh scattered slots for every mix: prefixes cross arbitrary slots.
        let mut slots = rng.distinct(total, kv_cap).into_iter();
        let mut table = vec![0u32; (n + 1) * max_ctx];
        for (i, p) in prompts.iter().enumerate() {
            for pos in 0..p.len() {
                table[(i + 1) * max_ctx + pos] = slots.next().unwrap();
            }
        }
        gpu.stream.memcpy_htod(&table, &mut kv.table).unwrap();
        let kvm = &kv;
        match mix {
            "one extend batch" => {
                let seqs: Vec<Seq> = prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Seq {
                        row: i + 1,
                        tokens: p,
                        prefix: 0,
                    })
                    .collect();
                for (i, l) in run_step(&gpu, &model, kvm, &mut ws, &table, &seqs, false)
                    .iter()
                    .enumerate()
                {
                    check(mix, i, l);
                }
            }
            "one prompt at a time" => {
                for (i, p) in prompts.iter().enumerate() {
                    let l = run_step(
                        &gpu,
                        &model,
                        kvm,
                        &mut ws,
                        &table,
                        &[Seq {
                            row: i + 1,
                            tokens: p,
                            prefix: 0,
                        }],
                        false,
                    );
                    check(mix, i, &l[0]);
                }
            }
            "chunked prefill" => {
                let cut: Vec<usize> = prompts
                    .iter()
                    .map(|p| (p.len() * 2 / 3).max(1).min(p.len()))
                    .collect();
                let first: Vec<Seq> = prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Seq {
                        row: i + 1,
                        tokens: &p[..cut[i]],
                        prefix: 0,
                    })
                    .collect();
                run_step(&gpu, &model, kvm, &mut ws, &table, &first, false);
                let idx: Vec<usize> = (0..n).filter(|&i| cut[i] < prompts[i].len()).collect();
                let rest: Vec<Seq> = idx
                    .iter()
                    .map(|&i| Seq {
                        row: i + 1,
                        tokens: &prompts[i][cut[i]..],
                        prefix: cut[i],
                    })
                    .collect();
                for (k, l) in run_step(&gpu, &model, kvm, &mut ws, &table, &rest, false)
                    .iter()
                    .enumerate()
                {
                    check(mix, idx[k], l);
                }
            }
            _ => {
                let idx: Vec<usize> = (0..n).filter(|&i| prompts[i].len() > 1).collect();
                let pre: Vec<Seq> = idx
                    .iter()
                    .map(|&i| Seq {
                        row: i + 1,
                        tokens: &prompts[i][..prompts[i].len() - 1],
                        prefix: 0,
                    })
                    .collect();
                run_step(&gpu, &model, kvm, &mut ws, &table, &pre, false);
                let last: Vec<Seq> = idx
                    .iter()
                    .map(|&i| Seq {
                        row: i + 1,
                        tokens: &prompts[i][prompts[i].len() - 1..],
                        prefix: prompts[i].len() - 1,
                    })
                    .collect();
                for (k, l) in run_step(&gpu, &model, kvm, &mut ws, &table, &last, true)
                    .iter()
                    .enumerate()
                {
                    check(mix, idx[k], l);
                }
            }
        }
    }
    eprintln!("worst logits relative error vs transformers bf16: {worst:.3e}");
    if truth.is_some() {
        eprintln!(
            "worst ratio of our error to transformers' bf16 error, both against its f32: \
             {worst_ratio:.2} (limit {TRUTH_RATIO})"
        );
    }

    // Greedy continuations through the real scheduler and CudaBackend.
    let greedy_ref: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/greedy.json")).unwrap())
            .unwrap();
    drop(model);
    let model = GpuModel::load(&gpu, &cfg, &store, max_pos).unwrap();
    let scfg = SchedulerConfig {
        kv_capacity_tokens: kv_cap,
        context_len: max_ctx,
        req_pool_size: Some(16),
        max_prefill_tokens: 4096,
        ..Default::default()
    };
    let bcfg = backend_cfg(&scfg);
    let backend = CudaBackend::new(gpu, model, bcfg).unwrap();
    eprintln!("{}", backend.summary());
    let reqs: Vec<RequestSpec> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| greedy_req(i as u64, p.clone(), 8))
        .collect();
    let got = run_engine(
        Engine::new(Scheduler::new(scfg).unwrap(), backend, true),
        &[reqs],
    );
    let (mut same, mut total) = (0, 0);
    for (i, r) in greedy_ref.iter().enumerate() {
        let g = got.get(&(i as u64)).cloned().unwrap_or_default();
        let agree = g.iter().zip(r).take_while(|(a, b)| a == b).count();
        eprintln!("prompt {i}: greedy tokens agreeing with transformers before the first difference: {agree}/{}", r.len());
        same += agree;
        total += r.len();
    }
    eprintln!("greedy agreement with transformers (bf16 both; prefix before first divergence): {same}/{total}");
    if truth.is_some() {
        assert!(
            worst_ratio <= TRUTH_RATIO,
            "our logits are {worst_ratio:.2} x as far from transformers' f32 as its bf16 are"
        );
    } else {
        assert!(
            worst < 2e-2,
            "logits differ from transformers by {worst:.3e} (limit 2e-2)"
        );
    }
}

/// Our bf16 forward may be at most this many times as far from transformers' f32 logits as
/// transformers' own bf16 forward is (per prompt and batch mix)...
const TRUTH_RATIO: f64 = 1.25;
/// ...where transformers' bf16 error counts as at least this much (a shallow model's is tiny).
const TRUTH_FLOOR: f64 = 1.6e-2;

fn backend_cfg(s: &SchedulerConfig) -> CudaBackendConfig {
    // As `exec serve` sizes it: one prefill budget (a chunk can exceed max_prefill_tokens) plus
    // a decode token per running request.
    let prefill = s
        .max_prefill_tokens
        .max(s.chunked_prefill_size.unwrap_or(s.context_len));
    CudaBackendConfig {
        kv_capacity_tokens: s.kv_capacity_tokens,
        table_rows: s.req_pool_size.unwrap_or(64),
        context_len: s.context_len,
        max_tokens: prefill + s.req_pool_size.unwrap_or(64),
        max_seqs: s.req_pool_size.unwrap_or(64),
        max_graph_batch: 16,
        seed: 99,
    }
}

fn greedy_req(id: u64, prompt: Vec<u32>, n: usize) -> RequestSpec {
    req(id, prompt, SamplingParams::greedy(n))
}

/// Run waves of requests (each wave after the engine went idle); tokens by request.
fn run_engine<B: doppel_core::Backend>(
    mut engine: Engine<B>,
    waves: &[Vec<RequestSpec>],
) -> BTreeMap<u64, Vec<u32>> {
    let events = run_waves(&mut engine, waves, 20_000, |_| {});
    let mut out: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for e in events {
        if let Event::Token {
            id, token, index, ..
        } = e
        {
            let v = out.entry(id.0).or_default();
            assert_eq!(v.len(), index);
            v.push(token);
        }
    }
    out
}
