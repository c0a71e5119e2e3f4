//! What bench-one-batch's step time adds to the decode graph's: each step is timed alone (the
//! GPU idle before it, an event recorded before `cuGraphLaunch`), so it also counts the graph's
//! launch. Per batch size: the graph timed that way and back to back, and the host time of the
//! launch call, for the default kernels and for graphs without cuBLAS nodes.

use super::{decode_graph, time_ms};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaGraph;
use doppel_exec::cuda::attention::DecodeMeta;
use doppel_exec::cuda::model::{GpuModel, KvPool, Workspace};
use doppel_exec::cuda::Gpu;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// (isolated step ms as bench-one-batch times it, host µs in the launch call).
fn isolated(gpu: &Gpu, graph: &CudaGraph) -> (f64, f64) {
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let (mut step, mut host) = (Vec::new(), Vec::new());
    for i in 0..25 {
        gpu.sync().unwrap();
        let a = gpu.stream.record_event(flags).unwrap();
        let t = std::time::Instant::now();
        graph.launch().unwrap();
        let h = t.elapsed().as_secs_f64() * 1e6;
        let b = gpu.stream.record_event(flags).unwrap();
        b.synchronize().unwrap();
        if i >= 5 {
            step.push(a.elapsed_ms(&b).unwrap() as f64);
            host.push(h);
        }
    }
    (median(step), median(host))
}

pub fn launch_overhead(
    gpu: &Gpu,
    model: &mut GpuModel,
    kv: &KvPool,
    ws: &Workspace,
    meta: &DecodeMeta,
    b: usize,
    splits: usize,
) {
    let saved = model.kernels;
    let mut rows = Vec::new();
    for (label, skinny) in [
        ("default", saved.skinny_max_tokens),
        ("skinny GEMM up to 64 (no cuBLAS)", 64),
    ] {
        if b <= 16 && label != "default" {
            continue; // no cuBLAS nodes at these sizes anyway
        }
        model.kernels.skinny_max_tokens = skinny;
        let g = decode_graph(gpu, model, kv, ws, meta, b, splits);
        model.kernels = saved;
        let back = time_ms(gpu, 15, 10, || g.launch().unwrap());
        let (alone, host) = isolated(gpu, &g);
        rows.push((label, alone, back, host));
    }
    for (label, alone, back, host) in rows {
        println!(
            "decode b={b} launch, {label}: step alone {alone:.4} ms, back to back {back:.4} ms \
             (+{:.1} us), host launch call {host:.1} us",
            (alone - back) * 1e3
        );
    }
}
