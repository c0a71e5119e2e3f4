//! Capturing queued work as a CUDA graph: one routine for the decode graphs (backend,
//! bench-one-batch), the GEMM tuner's timing graphs and the GPU tests.

use crate::cuda::attention::DecodeMeta;
use crate::cuda::forward::StepBatch;
use crate::cuda::model::{GpuModel, KvPool, TokenPick, Workspace};
use crate::cuda::{CudaError, DriverCtx, Gpu, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags_enum, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};
use std::sync::Arc;

/// What `body` queues on `stream`, captured (thread-local mode) and instantiated. The capture is
/// ended even when `body` fails, and then `body`'s error is the one returned. `what` names the
/// graph in errors.
pub(crate) fn capture_graph(
    stream: &Arc<CudaStream>,
    what: &'static str,
    body: impl FnOnce() -> Result<()>,
) -> Result<CudaGraph> {
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .ctx(what)?;
    let queued = body();
    let graph = stream
        .end_capture(CUgraphInstantiate_flags_enum(0))
        .ctx(what);
    queued?;
    graph?.ok_or(CudaError::Invalid {
        kernel: what,
        msg: "capture produced no graph".into(),
    })
}

impl Gpu {
    /// Wait for the stream, then capture what `body` queues on it as a graph (see
    /// [`capture_graph`]).
    pub fn capture(
        &self,
        what: &'static str,
        body: impl FnOnce() -> Result<()>,
    ) -> Result<CudaGraph> {
        self.sync()?;
        capture_graph(&self.stream, what, body)
    }
}

impl GpuModel {
    /// One pure decode step of `b` rows (`b` logits rows) with `splits` key splits, captured as
    /// a graph from the model as it is configured now (its kernel switches are read at
    /// capture); replays read the step's inputs from `ws` and `meta`.
    pub fn capture_decode(
        &self,
        gpu: &Gpu,
        kv: &KvPool,
        ws: &Workspace,
        (meta, splits): (&DecodeMeta, usize),
        b: usize,
        pick: TokenPick,
    ) -> Result<CudaGraph> {
        let batch = StepBatch {
            tokens: b,
            extend: None,
            decode: Some((meta, splits)),
            rows: b,
            pick,
        };
        gpu.capture("capturing a decode graph", || {
            self.forward(gpu, kv, ws, batch)
        })
    }
}
