//! bench-one-batch over a tensor-parallel group: every rank runs the same benchmark
//! ([`super::run`]) on its own thread, in lockstep through the
//! all-reduces; rank 0's timings are reported, with the all-reduce time per layer measured
//! apart (the two all-reduces of a decode step's layer, replayed from a CUDA graph).

use super::{run, BenchOptions, BenchRow};
use doppel_exec::cuda::model::GpuModel;
use doppel_exec::cuda::tp::startup::RankModel;
use doppel_exec::cuda::{CudaError, DriverCtx, Gpu, Result};
use half::bf16;

/// Graph replays timed per batch size for the all-reduce figure.
const ALL_REDUCE_REPLAYS: usize = 20;

/// Rank 0's rows and, per batch size, the all-reduce time per layer (µs).
pub fn run_group(ranks: Vec<RankModel>, opt: &BenchOptions) -> Result<(Vec<BenchRow>, Vec<f64>)> {
    let results: Vec<Result<(Vec<BenchRow>, Vec<f64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|RankModel { gpu, model }| {
                s.spawn(move || {
                    gpu.ctx.bind_to_thread().ctx("binding a rank's context")?;
                    let rows = run(&gpu, &model, opt)?;
                    let ar = opt
                        .batch_sizes
                        .iter()
                        .map(|&b| all_reduce_us_per_layer(&gpu, &model, b))
                        .collect::<Result<Vec<f64>>>()?;
                    Ok((rows, ar))
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(r, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(CudaError::Invalid {
                        kernel: "bench-one-batch",
                        msg: format!("rank {r} panicked"),
                    })
                })
            })
            .collect()
    });
    let mut first = None;
    for r in results {
        let r = r?;
        first.get_or_insert(r);
    }
    first.ok_or(CudaError::Invalid {
        kernel: "bench-one-batch",
        msg: "no ranks".into(),
    })
}

/// The two all-reduces of one layer of a `b`-row decode step (b x hidden bf16 each), captured
/// for every layer as one graph and replayed: µs per layer (median of the replays).
fn all_reduce_us_per_layer(gpu: &Gpu, model: &GpuModel, b: usize) -> Result<f64> {
    let layers = model.cfg.num_layers.max(1);
    let buf = gpu.zeros::<bf16>(b * model.cfg.hidden_size)?;
    let p = gpu.ptr(&buf);
    let graph = gpu.capture("capturing the all-reduce graph", || {
        for _ in 0..2 * layers {
            model.all_reduce_residual(p)?;
        }
        Ok(())
    })?;
    let mut times = Vec::with_capacity(ALL_REDUCE_REPLAYS);
    for rep in 0..=ALL_REDUCE_REPLAYS {
        let a = gpu.timing_event()?;
        graph.launch().ctx("replaying the all-reduce graph")?;
        let e = gpu.timing_event()?;
        e.synchronize().ctx("waiting for an event")?;
        // The first replay uploads the graph: not timed.
        if rep > 0 {
            times.push(a.elapsed_ms(&e).ctx("reading an event")? as f64 * 1e3 / layers as f64);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}
