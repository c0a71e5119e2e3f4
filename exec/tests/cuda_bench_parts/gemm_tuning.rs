//! The measured GEMM choices (cuBLASLt candidates vs cublasGemmEx's default) at the cuBLAS
//! shapes of a random-weight Qwen3-0.6B, and whole passes with the choice on and off.

use super::{extend_step, time_ms};
use doppel_exec::cuda::attention::{DecodeMeta, ExtendMeta};
use doppel_exec::cuda::blas::TuneReport;
use doppel_exec::cuda::model::{GpuModel, KvPool, StepInput, Workspace};
use doppel_exec::cuda::Gpu;

fn name(r: &TuneReport, h: usize) -> &'static str {
    match (r.n, r.k, r.acc, r.f32_out) {
        (_, _, _, true) => "lm_head",
        (n, _, true, _) if n == h && r.k > h * 2 => "down +res",
        (n, _, true, _) if n == h => "o +res",
        (_, k, false, _) if k == h && r.n > 5 * h => "gate_up",
        (_, k, false, _) if k == h => "qkv",
        _ => "other",
    }
}

/// Per shape: cublasGemmEx default vs the best cuBLASLt candidate (and its tile/split-K), at
/// the decode graph sizes that reach cuBLAS (above 16; 16 itself for comparison with the
/// skinny GEMM, which serves it) and prefill rows. Tuning host time per M is printed too.
pub fn gemm_tuning_table(gpu: &Gpu, model: &mut GpuModel, ws: &Workspace) {
    let saved = model.kernels;
    // Every M through cuBLAS for the table (16 would otherwise go to the skinny GEMM), and
    // measured at every size.
    model.kernels.skinny_max_tokens = 0;
    model.kernels.gemm_lt_min_tokens = 0;
    println!(
        "\nGEMM choice per shape (us per call, weights cycled over the 28 layers; LM head at rows = M)"
    );
    println!(
        "{:>5} {:<10} {:>6} {:>6} | {:>9} {:>9} {:>6} | {:>4} {:>4} {:>5} {:>6} {:>5} | {:>5} {:>7} {:>8}",
        "M", "gemm", "n", "k", "default", "best Lt", "gain", "algo", "tile", "stage", "splitK", "cands", "uses", "tune ms", "query ms"
    );
    let h = model.cfg.hidden_size;
    for m in [16usize, 24, 32, 48, 64, 128, 512, 2048, 8192] {
        let rows = m.min(ws.max_seqs);
        let reps = model.tune_gemms(gpu, ws, m, rows).unwrap();
        for r in &reps {
            let (lt, a) = match r.best_lt {
                Some((t, a)) => (t, Some(a)),
                None => (f64::NAN, None),
            };
            let f = |v: Option<u32>| v.map_or("-".to_string(), |x| x.to_string());
            println!(
                "{:>5} {:<10} {:>6} {:>6} | {:>9.2} {:>9.2} {:>5.2}x | {:>4} {:>4} {:>5} {:>6} {:>5} | {:>5} {:>7.1} {:>8.1}",
                r.m,
                name(r, h),
                r.n,
                r.k,
                r.default_us,
                lt,
                r.default_us / lt,
                f(a.map(|a| a.id)),
                f(a.map(|a| a.tile)),
                f(a.map(|a| a.stages)),
                f(a.map(|a| a.split_k)),
                r.candidates,
                if r.use_lt { "Lt" } else { "dflt" },
                r.tune_ms,
                r.query_ms
            );
        }
    }
    model.kernels = saved;
}

/// What a serving warm-up pays to tune with the model's settings (`gemm_lt_min_tokens`): the
/// decode graph sizes above 16 up to the workspace's rows (`graph_sizes`) and one prefill per
/// row bucket up to 4096 tokens (`warmup`), summed from the per-shape reports (shapes tuned
/// earlier in this process count their first cost).
pub fn startup_tuning_cost(gpu: &Gpu, model: &GpuModel, ws: &Workspace) {
    let graphs = [24usize, 32, 40, 48, 56, 64]
        .into_iter()
        .filter(|&b| b <= ws.max_seqs);
    let prefill = (2..=4).map(|k| 16 * k).chain((2..=64).map(|k| 64 * k));
    let wall = std::time::Instant::now();
    let mut reps = Vec::new();
    for b in graphs {
        reps.extend(model.tune_gemms(gpu, ws, b, b).unwrap());
    }
    let n_graph = reps.len();
    for t in prefill {
        reps.extend(model.tune_gemms(gpu, ws, t, 1).unwrap());
    }
    let sum = |r: &[TuneReport]| r.iter().map(|r| r.tune_ms).sum::<f64>();
    let query: f64 = reps.iter().map(|r| r.query_ms).sum();
    let lt = reps.iter().filter(|r| r.use_lt).count();
    println!(
        "start-up GEMM tuning from {} rows: {} shapes ({} Lt), {:.0} ms host ({:.0} ms for the decode graph sizes 24-64, {:.0} ms the 66 prefill buckets to 4096; {:.0} ms of it heuristic queries); {:.0} ms wall for the shapes not yet tuned",
        model.kernels.gemm_lt_min_tokens,
        reps.len(),
        lt,
        sum(&reps),
        sum(&reps[..n_graph]),
        sum(&reps[n_graph..]),
        query,
        wall.elapsed().as_secs_f64() * 1e3
    );
}

/// A b-token decode step as a CUDA graph, timed with the measured GEMMs as the model is set,
/// at every size (`gemm_lt_min_tokens` 0), and off.
#[allow(clippy::too_many_arguments)]
pub fn decode_graph_ab(
    gpu: &Gpu,
    model: &mut GpuModel,
    kv: &KvPool,
    ws: &Workspace,
    meta: &DecodeMeta,
    b: usize,
    splits: usize,
) -> [f64; 3] {
    let saved = model.kernels;
    let mut t = [0.0; 3];
    for (i, (on, min)) in [
        (true, saved.gemm_lt_min_tokens),
        (true, 0),
        (false, saved.gemm_lt_min_tokens),
    ]
    .into_iter()
    .enumerate()
    {
        model.kernels.gemm_lt_min_tokens = if on { min } else { usize::MAX };
        model.tune_gemms(gpu, ws, b, b).unwrap();
        let graph = super::decode_graph(gpu, model, kv, ws, meta, b, splits);
        t[i] = time_ms(gpu, 15, 10, || graph.launch().unwrap());
    }
    model.kernels = saved;
    t
}

/// An eager prefill (inputs already uploaded), timed with the measured GEMMs on and off.
pub fn prefill_ab(
    gpu: &Gpu,
    model: &mut GpuModel,
    kv: &KvPool,
    ws: &Workspace,
    s: &StepInput,
    meta: &ExtendMeta,
    b: usize,
) -> (f64, f64) {
    let saved = model.kernels;
    let mut t = [0.0; 2];
    for (i, on) in [true, false].into_iter().enumerate() {
        model.kernels.gemm_lt_min_tokens = if on {
            saved.gemm_lt_min_tokens
        } else {
            usize::MAX
        };
        model.tune_gemms(gpu, ws, s.ids.len(), b).unwrap();
        t[i] = time_ms(gpu, 5, 1, || {
            extend_step(gpu, model, kv, ws, s.ids.len(), meta, b)
        });
    }
    model.kernels = saved;
    (t[0], t[1])
}
