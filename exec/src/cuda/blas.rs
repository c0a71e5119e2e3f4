//! cuBLAS GEMMs in the layout the model uses: activations `x` row-major `[m, k]`, weights `w`
//! row-major `[n, k]` (as checkpoints store them), `y = x w^T` row-major `[m, n]`.

use super::ops::{check, int, need};
use super::{CudaError, DPtr, Result};
use cudarc::cublas::{result as cr, sys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use half::bf16;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cuBLAS handle bound to one stream.
pub struct Blas {
    handle: CudaBlas,
    // A fixed workspace, so cuBLAS never allocates during CUDA graph capture.
    _workspace: CudaSlice<u8>,
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
            _workspace: workspace,
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
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16(
        &self,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        m: usize,
        n: usize,
        k: usize,
        ldy: usize,
    ) -> Result<()> {
        need("gemm_bf16", "y", &y, m.saturating_sub(1) * ldy + n)?;
        let m = self.rows(m, (n, k, ldy), x.len(), y.len());
        self.gemm(y.addr(), OutType::Bf16, x, w, (m, n, k), ldy, 0.0)
    }

    /// `y[m, n] = bf16(x[m, k] w[n, k]^T + y[m, n])` (beta = 1, one rounding): a projection added
    /// into the residual stream in place, so no separate residual add is needed after it.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_acc(
        &self,
        y: DPtr<bf16>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        m: usize,
        n: usize,
        k: usize,
        ldy: usize,
    ) -> Result<()> {
        need("gemm_bf16_acc", "y", &y, m.saturating_sub(1) * ldy + n)?;
        let m = self.rows(m, (n, k, ldy), x.len(), y.len());
        self.gemm(y.addr(), OutType::Bf16, x, w, (m, n, k), ldy, 1.0)
    }

    /// As [`Blas::gemm_bf16`] with an f32 output (the logits, so sampling sees full precision).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_f32out(
        &self,
        y: DPtr<f32>,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        m: usize,
        n: usize,
        k: usize,
        ldy: usize,
    ) -> Result<()> {
        need("gemm_bf16_f32out", "y", &y, m.saturating_sub(1) * ldy + n)?;
        let m = self.rows(m, (n, k, ldy), x.len(), y.len());
        self.gemm(y.addr(), OutType::F32, x, w, (m, n, k), ldy, 0.0)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        y: u64,
        out: OutType,
        x: DPtr<bf16>,
        w: DPtr<bf16>,
        (m, n, k): (usize, usize, usize),
        ldy: usize,
        beta: f32,
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
