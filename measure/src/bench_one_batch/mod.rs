//! `doppel exec bench-one-batch`: SGLang's bench_one_batch on our GPU path. For each batch size,
//! one prefill of `batch x input_len` random tokens, then `output_len - 1` decode steps (replayed
//! CUDA graphs, greedy sampling on the GPU, each step's input the previous step's sample
//! resolved on the device), timed with CUDA events after a warm-up run; medians over repeats.

pub mod tp;

use doppel_core::FUTURE_TOKEN;
use doppel_exec::cuda::attention::{decode_splits, AttnEntry, DecodeMeta, ExtendMeta};
use doppel_exec::cuda::model::{
    GpuModel, KvPool, RowSampling, StepBatch, StepInput, TokenPick, Workspace,
};
use doppel_exec::cuda::{DriverCtx, Gpu, Result};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Batch sizes.
    pub batch_sizes: Vec<usize>,
    /// Prompt tokens per sequence.
    pub input_len: usize,
    /// Generated tokens per sequence (the first comes from the prefill).
    pub output_len: usize,
    /// Timed repeats per batch size (the median run is reported).
    pub repeats: usize,
    /// Seed for the random prompts.
    pub seed: u64,
}

/// One row of the table (SGLang's figures).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    /// Batch size.
    pub batch_size: usize,
    /// Prompt length.
    pub input_len: usize,
    /// Output length.
    pub output_len: usize,
    /// Prefill latency (ms).
    pub prefill_ms: f64,
    /// Prefill throughput (tokens/s).
    pub prefill_tok_s: f64,
    /// Median decode step latency (ms).
    pub decode_median_ms: f64,
    /// Decode throughput at the median (tokens/s).
    pub decode_tok_s: f64,
    /// Prefill plus all decode steps (ms).
    pub total_ms: f64,
    /// (input + output) tokens of the batch over the total (tokens/s).
    pub total_tok_s: f64,
    /// Host time measuring the GEMM shapes of this batch size before the timed runs (ms).
    pub gemm_tune_ms: f64,
}

fn ms_between(gpu: &Gpu, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let a = gpu.timing_event()?;
    f()?;
    let b = gpu.timing_event()?;
    b.synchronize().ctx("waiting for an event")?;
    a.elapsed_ms(&b).ctx("reading an event").map(|x| x as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Run the benchmark for every batch size on `model`.
pub fn run(gpu: &Gpu, model: &GpuModel, opt: &BenchOptions) -> Result<Vec<BenchRow>> {
    let ctx = opt.input_len + opt.output_len;
    let max_b = opt.batch_sizes.iter().copied().max().unwrap_or(1);
    let sms = gpu.sms;
    let mut kv = KvPool::new(gpu, model, 1 + max_b * ctx, max_b + 1, ctx)?;
    // Row r (1-based) holds positions 0..ctx in slots 1 + (r-1)*ctx ..; row 0 is unused.
    let table: Vec<u32> = (0..(max_b + 1) * ctx)
        .map(|i| if i < ctx { 0 } else { (1 + i - ctx) as u32 })
        .collect();
    gpu.stream
        .memcpy_htod(&table, &mut kv.table)
        .ctx("writing the slot table")?;
    let max_splits = decode_splits(1, model.cfg.num_kv_heads, ctx, sms);
    let mut ws = Workspace::new(gpu, model, max_b * opt.input_len, max_b, max_splits)?;
    let mut rng = opt.seed | 1;
    let mut next_id = move |vocab: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % vocab as u64) as u32
    };
    let greedy = RowSampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        uniform: 0.0,
    };
    let mut rows = Vec::new();
    for &b in &opt.batch_sizes {
        // Prefill input.
        let mut pre = StepInput::default();
        for i in 0..b {
            let row = i + 1;
            for p in 0..opt.input_len {
                pre.ids.push(next_id(model.cfg.vocab_size));
                pre.tok_row.push(row as u32);
                pre.positions.push(p as i32);
                pre.out_slots.push((1 + i * ctx + p) as u32);
            }
            pre.extend.push(AttnEntry {
                q_start: i * opt.input_len,
                q_len: opt.input_len,
                kv_len: opt.input_len,
                row,
            });
            pre.logit_tok.push(((i + 1) * opt.input_len - 1) as u32);
            pre.logit_row.push(row as u32);
            pre.sampling.push(greedy);
        }
        pre.validate(model, &kv, &ws)?;
        let group = model.cfg.num_heads / model.cfg.num_kv_heads;
        let ext = ExtendMeta::new(gpu, &pre.extend, pre.ids.len(), kv.rows, kv.max_ctx, group)?;
        // Decode steps: FUTURE_TOKEN inputs, so each step consumes the previous step's samples.
        let decode_input = |step: usize| -> StepInput {
            let mut s = StepInput::default();
            let pos = opt.input_len + step;
            for i in 0..b {
                let row = i + 1;
                s.ids.push(FUTURE_TOKEN);
                s.tok_row.push(row as u32);
                s.positions.push(pos as i32);
                s.out_slots.push((1 + i * ctx + pos) as u32);
                s.decode.push(AttnEntry {
                    q_start: i,
                    q_len: 1,
                    kv_len: pos + 1,
                    row,
                });
                s.logit_tok.push(i as u32);
                s.logit_row.push(row as u32);
                s.sampling.push(greedy);
            }
            s
        };
        let splits = decode_splits(b, model.cfg.num_kv_heads, ctx, sms).min(max_splits);
        let first = decode_input(0);
        let mut meta = DecodeMeta::new(gpu, &first.decode, b, kv.rows, kv.max_ctx)?;
        model.upload_step(gpu, &mut ws, &first)?;
        // GEMM algorithms of the graph (fixed at capture) and of the prefill, measured first.
        let tune_start = std::time::Instant::now();
        model.tune_gemms(gpu, &ws, b, b)?;
        model.tune_gemms(gpu, &ws, pre.ids.len(), b)?;
        let gemm_tune_ms = tune_start.elapsed().as_secs_f64() * 1e3;
        let graph = model.capture_decode(gpu, &kv, &ws, (&meta, splits), b, TokenPick::Argmax)?;

        let mut runs = Vec::new();
        // One warm-up run (module loads, cuBLAS heuristics), then the timed repeats.
        for rep in 0..=opt.repeats.max(1) {
            model.upload_step(gpu, &mut ws, &pre)?;
            let prefill = ms_between(gpu, || {
                model.forward(
                    gpu,
                    &kv,
                    &ws,
                    StepBatch {
                        tokens: pre.ids.len(),
                        extend: Some(&ext),
                        decode: None,
                        rows: b,
                        pick: TokenPick::Argmax,
                    },
                )
            })?;
            let mut decode = Vec::new();
            for step in 0..opt.output_len.saturating_sub(1) {
                let s = decode_input(step);
                model.upload_step(gpu, &mut ws, &s)?;
                meta.update(gpu, &s.decode, kv.rows, kv.max_ctx)?;
                decode.push(ms_between(gpu, || {
                    graph.launch().ctx("replaying the decode graph")
                })?);
            }
            if rep > 0 {
                runs.push((prefill, decode));
            }
        }
        // The repeat with the median total is reported.
        runs.sort_by(|a, b| {
            (a.0 + a.1.iter().sum::<f64>()).total_cmp(&(b.0 + b.1.iter().sum::<f64>()))
        });
        let (prefill_ms, decode) = runs.swap_remove(runs.len() / 2);
        let decode_median_ms = median(decode.clone());
        let total_ms = prefill_ms + decode.iter().sum::<f64>();
        rows.push(BenchRow {
            batch_size: b,
            input_len: opt.input_len,
            output_len: opt.output_len,
            prefill_ms,
            prefill_tok_s: (b * opt.input_len) as f64 / prefill_ms * 1e3,
            decode_median_ms,
            decode_tok_s: if decode_median_ms > 0.0 {
                b as f64 / decode_median_ms * 1e3
            } else {
                0.0
            },
            total_ms,
            total_tok_s: (b * (opt.input_len + opt.output_len)) as f64 / total_ms * 1e3,
            gemm_tune_ms,
        });
    }
    Ok(rows)
}

/// The rows as a table like SGLang's output.
pub fn format_table(rows: &[BenchRow]) -> String {
    let mut s = format!(
        "{:>5} {:>6} {:>6} | {:>11} {:>13} | {:>13} {:>12} | {:>10} {:>12}\n",
        "batch",
        "input",
        "output",
        "prefill ms",
        "prefill tok/s",
        "decode med ms",
        "decode tok/s",
        "total ms",
        "total tok/s"
    );
    for r in rows {
        s += &format!(
            "{:>5} {:>6} {:>6} | {:>11.3} {:>13.0} | {:>13.4} {:>12.0} | {:>10.2} {:>12.0}\n",
            r.batch_size,
            r.input_len,
            r.output_len,
            r.prefill_ms,
            r.prefill_tok_s,
            r.decode_median_ms,
            r.decode_tok_s,
            r.total_ms,
            r.total_tok_s
        );
    }
    s
}

/// The rows as JSON (one object per batch size).
pub fn to_json(rows: &[BenchRow]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                serde_json::json!({
                    "batch_size": r.batch_size,
                    "input_len": r.input_len,
                    "output_len": r.output_len,
                    "prefill_latency_ms": r.prefill_ms,
                    "prefill_throughput_tok_s": r.prefill_tok_s,
                    "median_decode_latency_ms": r.decode_median_ms,
                    "median_decode_throughput_tok_s": r.decode_tok_s,
                    "total_latency_ms": r.total_ms,
                    "overall_throughput_tok_s": r.total_tok_s,
                    "gemm_tune_ms": r.gemm_tune_ms,
                })
            })
            .collect(),
    )
}
