//! cuBLAS GEMMs in the layout the model uses: activations `x` row-major `[m, k]`, weights `w`
//! row-major `[n, k]` (as checkpoints store them), `y = x w^T` row-major `[m, n]`.

use crate::cuda::blas_lt::{algo_info, alignment, Call, Entry, GemmKey, Lt, Plan};
pub use crate::cuda::blas_lt::{AlgoInfo, TuneReport};
use crate::cuda::ops::{check, int, need};
use crate::cuda::{CudaError, DPtr, DriverCtx, Result};
use cudarc::cublas::{result as cr, sys, CudaBlas};
use cudarc::cublaslt::sys::cublasLtMatmulHeuristicResult_t as LtCandidate;
use cudarc::driver::sys::{CUevent_flags, CUstreamCaptureStatus};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream, DevicePtr};
use half::bf16;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A cuBLAS handle bound to one stream.
pub struct Blas {
    handle: CudaBlas,
    stream: Arc<CudaStream>,
    // A fixed workspace, so cuBLAS never allocates during CUDA graph capture (shared by
    // cuBLAS and cuBLASLt: both queue on the one stream).
    _workspace: CudaSlice<u8>,
    workspace_addr: u64,
    /// cuBLASLt and the measured algorithm per shape.
    lt: Lt,
    /// Round the row count of GEMMs above 16 rows up to a bucket (see `set_row_buckets`).
    row_buckets: AtomicBool,
}

/// The row count cuBLAS is asked for: above 16 rows, rounded up to a multiple of 16 (to 64) or
/// of 64 (beyond). cuBLAS pays milliseconds of host time the first time it meets a GEMM shape
/// (measured on the H100: 1.3-2.5 ms more per prefill of a new length in Poisson replays, up to
/// 29 ms), and prompt lengths are all different; buckets make the shapes few, and a warm-up can
/// meet them all before serving.
pub fn bucket_rows(m: usize) -> usize {
    match m {
        0..=16 => m,
        17..=64 => m.next_multiple_of(16),
        _ => m.next_multiple_of(64),
    }
}

/// Bytes of cuBLAS workspace (what PyTorch gives Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

/// Output type of a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutType {
    Bf16,
    F32,
}

/// The output of a GEMM and how it is written.
#[derive(Clone, Copy, Debug)]
pub enum GemmOut {
    /// y = x w^T in bf16.
    Bf16(DPtr<bf16>),
    /// y = bf16(x w^T + y) (beta = 1: a projection added into the residual stream).
    Bf16Acc(DPtr<bf16>),
    /// y = x w^T in f32 (the logits).
    F32(DPtr<f32>),
}

impl GemmOut {
    fn parts(&self) -> (u64, usize, OutType, f32) {
        match self {
            GemmOut::Bf16(p) => (p.addr(), p.len(), OutType::Bf16, 0.0),
            GemmOut::Bf16Acc(p) => (p.addr(), p.len(), OutType::Bf16, 1.0),
            GemmOut::F32(p) => (p.addr(), p.len(), OutType::F32, 0.0),
        }
    }
}

impl Blas {
    /// A handle on `stream`.
    pub fn new(stream: Arc<CudaStream>) -> Result<Blas> {
        let workspace =
            stream
                .alloc_zeros::<u8>(WORKSPACE_BYTES)
                .map_err(|err| CudaError::Driver {
                    what: "allocating the cuBLAS workspace".into(),
                    err,
                })?;
        let handle = CudaBlas::new(stream.clone()).map_err(|err| CudaError::Blas {
            what: "creating the handle".into(),
            err,
        })?;
        let (ptr, _guard) = workspace.device_ptr(&stream);
        let status = unsafe {
            sys::cublasSetWorkspace_v2(*handle.handle(), ptr as *mut c_void, WORKSPACE_BYTES)
        };
        if status != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(CudaError::Blas {
                what: "setting the workspace".into(),
                err: cr::CublasError(status),
            });
        }
        drop(_guard);
        Ok(Blas {
            handle,
            stream,
            _workspace: workspace,
            workspace_addr: ptr,
            lt: Lt::new()?,
            row_buckets: AtomicBool::new(false),
        })
    }

    /// Compute GEMMs above 16 rows on [`bucket_rows`] rows where `x` and `y` have room for
    /// them: the extra rows read whatever `x` holds there and write only rows of `y` past `m`,
    /// which callers that turn this on never read (the model's workspace). Off by default, so
    /// exact-size callers see exactly `m` rows written.
    pub fn set_row_buckets(&self, on: bool) {
        self.row_buckets.store(on, Ordering::Relaxed);
    }

    /// Rows to compute for an `m`-row GEMM given the buffers' lengths.
    fn rows(
        &self,
        m: usize,
        (n, k, ldy): (usize, usize, usize),
        x_len: usize,
        y_len: usize,
    ) -> usize {
        if m <= 16 || !self.row_buckets.load(Ordering::Relaxed) {
            return m;
        }
        let b = bucket_rows(m);
        if b * k <= x_len && (b - 1) * ldy + n <= y_len {
            b
        } else {
            m
        }
    }

    /// `y[m, n] = x[m, k] w[n, k]^T` in bf16 with f32 accumulation; `ldy` is y's row stride.
    pub fn gemm_bf16(
        &self,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        mnk: (usize, usize, usize),
        ldy: usize,
    ) -> Result<()> {
        self.project(GemmOut::Bf16(y), x, w, mnk, ldy, false)
    }

    /// `y[m, n] = bf16(x[m, k] w[n, k]^T + y[m, n])` (beta = 1, one rounding): a projection added
    /// into the residual stream in place, so no separate residual add is needed after it.
    pub fn gemm_bf16_acc(
        &self,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        mnk: (usize, usize, usize),
        ldy: usize,
    ) -> Result<()> {
        self.project(GemmOut::Bf16Acc(y), x, w, mnk, ldy, false)
    }

    /// As [`Blas::gemm_bf16`] with an f32 output (the logits, so sampling sees full precision).
    pub fn gemm_bf16_f32out(
        &self,
        y: DPtr<f32>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        mnk: (usize, usize, usize),
        ldy: usize,
    ) -> Result<()> {
        self.project(GemmOut::F32(y), x, w, mnk, ldy, false)
    }

    /// `y[m, n] = x[m, k] w[n, k]^T` written as `y` says, `ldy` y's row stride. With `tuned`,
    /// a shape [`Blas::tune`] measured runs the algorithm chosen then (cuBLASLt or cublasGemmEx);
    /// other shapes, and every shape without `tuned`, run cublasGemmEx's default.
    pub fn project(
        &self,
        y: GemmOut,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        (m, n, k): (usize, usize, usize),
        ldy: usize,
        tuned: bool,
    ) -> Result<()> {
        let (ya, ylen, out, beta) = y.parts();
        let y_need = m.saturating_sub(1) * ldy + n;
        check("gemm", ylen >= y_need, || {
            format!("y holds {ylen} elements, {y_need} needed")
        })?;
        let m = self.rows(m, (n, k, ldy), x.len(), ylen);
        if tuned && m > 0 && n > 0 {
            check("gemm", ldy >= n, || format!("ldy {ldy} < n {n}"))?;
            need("gemm", "x", &x, m * k)?;
            need("gemm", "w", &w, n * k)?;
            let key = GemmKey {
                m,
                n,
                k,
                ldy,
                f32_out: out == OutType::F32,
                acc: beta != 0.0,
            };
            let cache = self.lt.cache.lock().map_err(|_| CudaError::Invalid {
                kernel: "gemm",
                msg: "the tuning cache lock is poisoned".into(),
            })?;
            if let Some(Entry {
                plan,
                algo: Some(algo),
                align,
                ..
            }) = cache.get(&key)
            {
                if alignment(&[ya, x.addr(), w.addr()]) >= *align {
                    return self
                        .lt
                        .run(plan, algo, &self.call(ya, x.addr(), w.addr(), beta))
                        .map_err(|err| CudaError::BlasLt {
                            what: format!("gemm {key:?}"),
                            err,
                        });
                }
            }
        }
        self.gemm((ya, out, beta), x, w, (m, n, k), ldy)
    }

    fn call(&self, y: u64, x: u64, w: u64, beta: f32) -> Call {
        Call {
            y,
            x,
            w,
            beta,
            workspace: self.workspace_addr,
            workspace_bytes: WORKSPACE_BYTES,
            stream: self.stream.cu_stream() as cudarc::cublaslt::sys::cudaStream_t,
        }
    }

    /// The measured choices so far, by shape.
    pub fn tuned(&self) -> Vec<TuneReport> {
        let mut v: Vec<TuneReport> = match self.lt.cache.lock() {
            Ok(c) => c.values().map(|e| e.report.clone()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by_key(|r| (r.m, r.n, r.k, r.ldy, r.acc, r.f32_out));
        v
    }

    /// Measure cublasGemmEx's default and cuBLASLt's candidates for the GEMM
    /// [`Blas::project`] would run with these arguments, and keep the fastest for
    /// `project(.., tuned = true)`. Each timed call uses the next of `w` (same shape: e.g. every
    /// layer's copy of a projection), so weights come from memory as in a forward pass rather
    /// than from L2. Writes `y` (any contents: callers pass buffers whose contents are dead) and
    /// synchronises the stream; does nothing during graph capture or for a shape already measured
    /// (returns its report).
    pub fn tune(
        &self,
        y: GemmOut,
        x: DPtr<bf16>,
        w: &[DPtr<bf16>],
        mnk: (usize, usize, usize),
        ldy: usize,
    ) -> Result<Option<TuneReport>> {
        const K: &str = "gemm tune";
        let Some(key) = self.tune_key(&y, &x, w, mnk, ldy)? else {
            return Ok(None);
        };
        let poisoned = || CudaError::Invalid {
            kernel: K,
            msg: "the tuning cache lock is poisoned".into(),
        };
        if let Some(e) = self.lt.cache.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(Some(e.report.clone()));
        }
        let t0 = Instant::now();
        let (ya, _, out, beta) = y.parts();
        let GemmKey { m, n, k, .. } = key;
        // The timed calls cycle through every layer's weights: the algorithm must suit all.
        let ptrs: Vec<u64> = [ya, x.addr()]
            .into_iter()
            .chain(w.iter().map(|p| p.addr()))
            .collect();
        let align = alignment(&ptrs);
        let plan = Plan::new(&key)?;
        let (small, reps, want) = tune_budget(&key);
        // No candidates (the heuristic found none for this shape or alignment, or failed): the
        // default GEMM is measured alone and kept.
        let mut cands = self
            .lt
            .candidates(&plan, want, WORKSPACE_BYTES, align)
            .unwrap_or_default();
        if want > 8 {
            let extra = self.lt.split_k_variants(&plan, &cands, 2, WORKSPACE_BYTES);
            cands.extend(extra);
        }
        let query_ms = t0.elapsed().as_secs_f64() * 1e3;
        let pick = |i: usize| w[i % w.len()];
        let base = if small { self.barrier_us(reps)? } else { 0.0 };
        let default_us = self.time_us(small, reps, |i| {
            self.gemm((ya, out, beta), x, pick(i), (m, n, k), ldy)
        })? - base;
        let (best, ran) = self.time_candidates(&plan, &key, &cands, (small, reps, base), |i| {
            self.call(ya, x.addr(), pick(i).addr(), beta)
        });
        let use_lt = best.is_some_and(|(t, _)| t < default_us);
        let report = TuneReport {
            m,
            n,
            k,
            ldy,
            acc: key.acc,
            f32_out: key.f32_out,
            default_us,
            best_lt: best.map(|(t, i)| (t, algo_info(&cands[i]))),
            candidates: ran,
            use_lt,
            tune_ms: t0.elapsed().as_secs_f64() * 1e3,
            query_ms,
        };
        let entry = Entry {
            plan,
            algo: best.filter(|_| use_lt).map(|(_, i)| cands[i].algo),
            align,
            report: report.clone(),
        };
        self.lt
            .cache
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, entry);
        Ok(Some(report))
    }

    /// The cache key [`Blas::tune`] measures for these arguments, after checking them; None
    /// during graph capture, for an empty shape or without weights.
    fn tune_key(
        &self,
        y: &GemmOut,
        x: &DPtr<bf16>,
        w: &[DPtr<bf16>],
        (m, n, k): (usize, usize, usize),
        ldy: usize,
    ) -> Result<Option<GemmKey>> {
        const K: &str = "gemm tune";
        let capturing = self
            .stream
            .capture_status()
            .ctx("reading the capture status")?;
        let (_, ylen, out, beta) = y.parts();
        if w.is_empty() {
            return Ok(None);
        }
        if capturing != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE || m == 0 || n == 0 {
            return Ok(None);
        }
        let y_need = (m - 1) * ldy + n;
        check(K, ylen >= y_need, || {
            format!("y holds {ylen} elements, {y_need} needed")
        })?;
        let m = self.rows(m, (n, k, ldy), x.len(), ylen);
        check(K, ldy >= n, || format!("ldy {ldy} < n {n}"))?;
        need(K, "x", x, m * k)?;
        for wi in w {
            need(K, "w", wi, n * k)?;
        }
        Ok(Some(GemmKey {
            m,
            n,
            k,
            ldy,
            f32_out: out == OutType::F32,
            acc: beta != 0.0,
        }))
    }

    /// Time each cuBLASLt candidate (`call(i)`: the operands of the i-th timed call) as
    /// [`Blas::time_us`] does, less `base`: the fastest (us, index) and how many ran. A
    /// candidate the library refuses at run time is skipped, not fatal.
    fn time_candidates(
        &self,
        plan: &Plan,
        key: &GemmKey,
        cands: &[LtCandidate],
        (small, reps, base): (bool, usize, f64),
        call: impl Fn(usize) -> Call,
    ) -> (Option<(f64, usize)>, usize) {
        let mut best: Option<(f64, usize)> = None;
        let mut ran = 0;
        for (ci, c) in cands.iter().enumerate() {
            let t = self.time_us(small, reps, |i| {
                self.lt
                    .run(plan, &c.algo, &call(i))
                    .map_err(|err| CudaError::BlasLt {
                        what: format!("tuning gemm {key:?}"),
                        err,
                    })
            });
            let Ok(t) = t.map(|t| t - base) else { continue };
            ran += 1;
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, ci));
            }
        }
        (best, ran)
    }

    /// Microseconds per call of `f(i)`: one call on the stream (loads the kernel; an algorithm
    /// the library refuses fails here), then `reps` calls. With `graph`, they are captured in a
    /// CUDA graph, each after a 4-byte memset, and the graph's fastest of two replays counts: a
    /// graph because decode steps run as graphs (launched from the stream, a short GEMM's
    /// per-call host work would be timed instead of its kernel: cublasGemmEx's default measured
    /// 8-12 us per call that way at 64 rows, 6-8 us in a graph); the memset, because in a
    /// forward pass every GEMM waits for the kernel before it. The memsets' own time is
    /// measured apart (`barrier_us`) and subtracted by the caller. Without `graph`, the calls
    /// are timed once on the stream (long calls: the host keeps ahead).
    fn time_us(
        &self,
        graph: bool,
        reps: usize,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<f64> {
        f(0)?;
        if !graph {
            let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let a = self.stream.record_event(flags).ctx("recording an event")?;
            for i in 0..reps {
                f(1 + i)?;
            }
            let b = self.stream.record_event(flags).ctx("recording an event")?;
            b.synchronize().ctx("waiting for an event")?;
            let ms = a.elapsed_ms(&b).ctx("reading an event")? as f64;
            return Ok(ms * 1e3 / reps as f64);
        }
        let graph = self.capture(|| {
            for i in 0..reps {
                self.barrier()?;
                f(1 + i)?;
            }
            Ok(())
        })?;
        self.replay_us(&graph, reps)
    }

    /// The memset `time_us` puts before each call: 4 bytes of the workspace, whose contents no
    /// GEMM expects to find again.
    fn barrier(&self) -> Result<()> {
        // SAFETY: the workspace is live and holds at least 4 bytes.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                self.workspace_addr,
                0,
                4,
                self.stream.cu_stream(),
            )
        }
        .ctx("queueing a memset")
    }

    /// Microseconds per call of `reps` barriers alone (subtracted from `time_us`).
    fn barrier_us(&self, reps: usize) -> Result<f64> {
        let graph = self.capture(|| (0..reps).try_for_each(|_| self.barrier()))?;
        self.replay_us(&graph, reps)
    }

    fn capture(&self, body: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
        crate::cuda::capture::capture_graph(&self.stream, "capturing a GEMM tuning graph", body)
    }

    fn replay_us(&self, graph: &CudaGraph, reps: usize) -> Result<f64> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        graph.launch().ctx("replaying a tuning graph")?;
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let a = self.stream.record_event(flags).ctx("recording an event")?;
            graph.launch().ctx("replaying a tuning graph")?;
            let b = self.stream.record_event(flags).ctx("recording an event")?;
            b.synchronize().ctx("waiting for an event")?;
            let ms = a.elapsed_ms(&b).ctx("reading an event")? as f64;
            best = best.min(ms * 1e3 / reps as f64);
        }
        Ok(best)
    }

    /// cublasGemmEx's default algorithm; `y` is the output's address, type and beta.
    fn gemm(
        &self,
        (y, out, beta): (u64, OutType, f32),
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        (m, n, k): (usize, usize, usize),
        ldy: usize,
    ) -> Result<()> {
        const K: &str = "gemm";
        check(K, ldy >= n, || format!("ldy {ldy} < n {n}"))?;
        need(K, "x", &x, m * k)?;
        need(K, "w", &w, n * k)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (mi, ni, ki, ld) = (int(K, m)?, int(K, n)?, int(K, k)?, int(K, ldy)?);
        let alpha = 1.0f32;
        let c_type = match out {
            OutType::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
            OutType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        };
        // Column-major view: y^T [n, m] = w [n, k] (w^T stored) * x^T [k, m].
        unsafe {
            cr::gemm_ex(
                *self.handle.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha) as *const f32 as *const c_void,
                w.addr() as *const c_void,
                sys::cudaDataType_t::CUDA_R_16BF,
                ki,
                x.addr() as *const c_void,
                sys::cudaDataType_t::CUDA_R_16BF,
                ki,
                (&beta) as *const f32 as *const c_void,
                y as *mut c_void,
                c_type,
                ld,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|err| CudaError::Blas {
            what: format!("gemm m={m} n={n} k={k}"),
            err,
        })
    }
}

/// How [`Blas::tune`] times a shape: (in a CUDA graph, repeats, candidates wanted). Bytes and
/// flops of one call size the repeats (~150 us of timed calls per candidate) and pick the
/// timing: calls of more than ~30 us are timed straight on the stream (the host keeps ahead of
/// them), shorter ones in a CUDA graph (see `time_us`). Skinny shapes get more candidates
/// (split-K variants); large ones only the heuristic's.
fn tune_budget(key: &GemmKey) -> (bool, usize, usize) {
    let GemmKey { m, n, k, .. } = *key;
    let bytes = (n * k + m * k) * 2 + m * n * if key.f32_out { 4 } else { 2 };
    let est_us = (bytes as f64 / 2.5e6).max(2.0 * (m * n * k) as f64 / 6e8);
    let small = est_us < 30.0;
    let reps = ((150.0 / est_us) as usize).clamp(2, 24);
    let want = if m <= 256 && small { 32 } else { 8 };
    (small, reps, want)
}
