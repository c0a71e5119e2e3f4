//! cuBLASLt GEMMs with a measured algorithm per shape. cublasGemmEx's default pick is slow for
//! the skinny decode projections (~0.8 TB/s of weights at 64 rows on the H100, docs/cuda.md);
//! cuBLASLt lists many candidates (other tiles, split-K), and timing them on the real weights
//! finds the fastest. Tuning runs outside CUDA graph capture (start-up, warm-up); serving only
//! looks the shape up, and a shape keeps the algorithm it was given (same rounding every step).

use crate::cuda::{CudaError, Result};
use cudarc::cublaslt::{result as lr, sys as ls};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// A GEMM shape as the cache keys it: rows as computed (after bucketing), output type, beta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct GemmKey {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ldy: usize,
    pub f32_out: bool,
    pub acc: bool,
}

/// A cuBLASLt algorithm's configuration (what the bench prints).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlgoInfo {
    /// Algorithm id.
    pub id: u32,
    /// Tile (cublasLtMatmulTile_t).
    pub tile: u32,
    /// Stages (cublasLtMatmulStages_t).
    pub stages: u32,
    /// K splits (1: none).
    pub split_k: u32,
    /// Split-K reduction scheme.
    pub reduction: u32,
    /// Waves of thread blocks per the heuristic.
    pub waves: f32,
}

/// What tuning measured for one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneReport {
    /// Rows computed (after bucketing), columns, depth.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Row stride of the output.
    pub ldy: usize,
    /// beta = 1 (the GEMM adds into its output).
    pub acc: bool,
    /// f32 output (the LM head).
    pub f32_out: bool,
    /// cublasGemmEx with CUBLAS_GEMM_DEFAULT, microseconds per call.
    pub default_us: f64,
    /// The fastest cuBLASLt candidate, microseconds per call, and its configuration.
    pub best_lt: Option<(f64, AlgoInfo)>,
    /// cuBLASLt candidates that ran.
    pub candidates: usize,
    /// Whether the cuBLASLt algorithm is used (it beat the default).
    pub use_lt: bool,
    /// Host time spent tuning this shape (heuristic query and timing), milliseconds.
    pub tune_ms: f64,
    /// Of which describing the shape and querying the heuristic, milliseconds.
    pub query_ms: f64,
}

/// One shape's cuBLASLt descriptors.
pub(super) struct Plan {
    desc: ls::cublasLtMatmulDesc_t,
    a: ls::cublasLtMatrixLayout_t,
    b: ls::cublasLtMatrixLayout_t,
    c: ls::cublasLtMatrixLayout_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created in Plan::new and destroyed only here.
        unsafe {
            let _ = lr::destroy_matrix_layout(self.c);
            let _ = lr::destroy_matrix_layout(self.b);
            let _ = lr::destroy_matrix_layout(self.a);
            let _ = lr::destroy_matmul_desc(self.desc);
        }
    }
}

fn lt_err(what: String) -> impl FnOnce(lr::CublasError) -> CudaError {
    move |err| CudaError::BlasLt { what, err }
}

impl Plan {
    /// The model's layout in column-major terms (as blas.rs): y^T [n, m] = w (stored [n, k],
    /// transposed) * x^T [k, m].
    pub(super) fn new(key: &GemmKey) -> Result<Plan> {
        let e = || lt_err(format!("describing gemm {key:?}"));
        let out = if key.f32_out {
            ls::cudaDataType_t::CUDA_R_32F
        } else {
            ls::cudaDataType_t::CUDA_R_16BF
        };
        let bf = ls::cudaDataType_t::CUDA_R_16BF;
        let (m, n, k, ldy) = (key.m as u64, key.n as u64, key.k as u64, key.ldy as i64);
        let desc = lr::create_matmul_desc(
            ls::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ls::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(e())?;
        // From here on the Plan owns what exists; layouts not yet made are null, which
        // cublasLt*Destroy accepts.
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
        };
        let trans_a = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T as i32;
        // SAFETY: desc is live; the attribute is an int32 as documented.
        unsafe {
            lr::set_matmul_desc_attribute(
                desc,
                ls::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&trans_a) as *const i32 as *const c_void,
                4,
            )
        }
        .map_err(e())?;
        plan.a = lr::create_matrix_layout(bf, k, n, k as i64).map_err(e())?;
        plan.b = lr::create_matrix_layout(bf, k, m, k as i64).map_err(e())?;
        plan.c = lr::create_matrix_layout(out, n, m, ldy).map_err(e())?;
        Ok(plan)
    }
}

/// A measured choice for one shape: a cuBLASLt algorithm, or None where cublasGemmEx won.
pub(super) struct Entry {
    pub plan: Plan,
    pub algo: Option<ls::cublasLtMatmulAlgo_t>,
    /// Pointer alignment (bytes) the algorithm was chosen for; less aligned calls fall back.
    pub align: u64,
    pub report: TuneReport,
}

/// The cuBLASLt handle and the tuned shapes.
pub(super) struct Lt {
    handle: ls::cublasLtHandle_t,
    pub cache: Mutex<HashMap<GemmKey, Entry>>,
}

// SAFETY: the handle and descriptors are plain cuBLASLt objects usable from any thread (cuBLASLt
// handles are thread-safe for matmul calls); the cache is behind a mutex.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Drop for Lt {
    fn drop(&mut self) {
        if let Ok(c) = self.cache.get_mut() {
            c.clear();
        }
        // SAFETY: created in Lt::new, destroyed only here.
        let _ = unsafe { lr::destroy_handle(self.handle) };
    }
}

/// Largest power of two (up to 256) dividing every address: the alignment cuBLASLt may assume.
pub(super) fn alignment(addrs: &[u64]) -> u64 {
    addrs
        .iter()
        .map(|&a| {
            if a == 0 {
                256
            } else {
                1u64 << a.trailing_zeros().min(8)
            }
        })
        .min()
        .unwrap_or(256)
}

/// Arguments of one cuBLASLt call.
pub(super) struct Call {
    pub y: u64,
    pub x: u64,
    pub w: u64,
    pub beta: f32,
    pub workspace: u64,
    pub workspace_bytes: usize,
    pub stream: ls::cudaStream_t,
}

impl Lt {
    pub(super) fn new() -> Result<Lt> {
        let handle = lr::create_handle().map_err(lt_err("creating the handle".into()))?;
        Ok(Lt {
            handle,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Up to `want` candidate algorithms for `plan`, best first per the heuristic.
    pub(super) fn candidates(
        &self,
        plan: &Plan,
        want: usize,
        workspace_bytes: usize,
        align: u64,
    ) -> Result<Vec<ls::cublasLtMatmulHeuristicResult_t>> {
        let e = || lt_err("querying algorithms".into());
        let pref = lr::create_matmul_pref().map_err(e())?;
        let ws = workspace_bytes as u64;
        let al = align as u32;
        use ls::cublasLtMatmulPreferenceAttributes_t as P;
        // SAFETY: pref is live; the attributes are a uint64 and uint32s as documented; the
        // result array holds `want` entries.
        let got = unsafe {
            let mut r = lr::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws) as *const u64 as *const c_void,
                8,
            );
            for attr in [
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                r = r.and_then(|_| {
                    lr::set_matmul_pref_attribute(
                        pref,
                        attr,
                        (&al) as *const u32 as *const c_void,
                        4,
                    )
                });
            }
            let mut res: Vec<ls::cublasLtMatmulHeuristicResult_t> =
                vec![std::mem::zeroed(); want.max(1)];
            let mut count = 0i32;
            let r = r.and_then(|_| {
                ls::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    plan.desc,
                    plan.a,
                    plan.b,
                    plan.c,
                    plan.c,
                    pref,
                    want.max(1) as i32,
                    res.as_mut_ptr(),
                    &mut count,
                )
                .result()
            });
            let _ = lr::destroy_matmul_pref(pref);
            r.map(|_| {
                res.truncate(count.max(0) as usize);
                res
            })
        };
        let mut got = got.map_err(e())?;
        got.retain(|r| {
            r.state == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && r.workspaceSize <= workspace_bytes
        });
        Ok(got)
    }

    /// Split-K variants (2 to 8 splits, reduced in f32 in the workspace) of the first `top`
    /// candidates, those the library accepts for `plan`. The heuristic offers few split-K
    /// configurations, and skinny GEMMs with 1024 output columns fill few SMs without one.
    pub(super) fn split_k_variants(
        &self,
        plan: &Plan,
        base: &[ls::cublasLtMatmulHeuristicResult_t],
        top: usize,
        workspace_bytes: usize,
    ) -> Vec<ls::cublasLtMatmulHeuristicResult_t> {
        use ls::cublasLtMatmulAlgoConfigAttributes_t as A;
        let mut out: Vec<ls::cublasLtMatmulHeuristicResult_t> = Vec::new();
        for b in base.iter().take(top) {
            for splits in [2u32, 3, 4, 6, 8] {
                let mut algo = b.algo;
                let scheme =
                    ls::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
                // SAFETY: algo is a copy owned here; both attributes are uint32s; the check
                // writes one result.
                let ok = unsafe {
                    let set = |algo: &mut ls::cublasLtMatmulAlgo_t, attr: A, v: &u32| {
                        ls::cublasLtMatmulAlgoConfigSetAttribute(
                            algo,
                            attr,
                            v as *const u32 as *const c_void,
                            4,
                        )
                    };
                    let mut res: ls::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
                    let st = [
                        set(&mut algo, A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits),
                        set(&mut algo, A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme),
                    ];
                    if st
                        .iter()
                        .all(|s| *s == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                        && ls::cublasLtMatmulAlgoCheck(
                            self.handle,
                            plan.desc,
                            plan.a,
                            plan.b,
                            plan.c,
                            plan.c,
                            &algo,
                            &mut res,
                        ) == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                        && res.workspaceSize <= workspace_bytes
                    {
                        Some(res)
                    } else {
                        None
                    }
                };
                if let Some(mut r) = ok {
                    r.algo = algo;
                    let dup = base.iter().chain(out.iter()).any(|c| c.algo == r.algo);
                    if !dup {
                        out.push(r);
                    }
                }
            }
        }
        out
    }

    /// Queue `y = x w^T (+ y)` with `algo`.
    pub(super) fn run(
        &self,
        plan: &Plan,
        algo: &ls::cublasLtMatmulAlgo_t,
        c: &Call,
    ) -> std::result::Result<(), lr::CublasError> {
        let alpha = 1.0f32;
        // SAFETY: the plan's layouts describe the buffers (checked by the caller), the
        // workspace is the Blas one, and the algorithm came from the heuristic for this plan.
        unsafe {
            lr::matmul(
                self.handle,
                plan.desc,
                (&alpha) as *const f32 as *const c_void,
                (&c.beta) as *const f32 as *const c_void,
                c.w as *const c_void,
                plan.a,
                c.x as *const c_void,
                plan.b,
                c.y as *const c_void,
                plan.c,
                c.y as *mut c_void,
                plan.c,
                algo,
                c.workspace as *mut c_void,
                c.workspace_bytes,
                c.stream,
            )
        }
    }
}

/// An algorithm's configuration attributes.
pub(super) fn algo_info(r: &ls::cublasLtMatmulHeuristicResult_t) -> AlgoInfo {
    use ls::cublasLtMatmulAlgoConfigAttributes_t as A;
    let get = |attr: A| -> u32 {
        let mut v = 0u32;
        let mut written = 0usize;
        // SAFETY: every attribute read here is a 4-byte integer.
        let s = unsafe {
            ls::cublasLtMatmulAlgoConfigGetAttribute(
                &r.algo,
                attr,
                (&mut v) as *mut u32 as *mut c_void,
                4,
                &mut written,
            )
        };
        if s == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            v
        } else {
            u32::MAX
        }
    };
    AlgoInfo {
        id: get(A::CUBLASLT_ALGO_CONFIG_ID),
        tile: get(A::CUBLASLT_ALGO_CONFIG_TILE_ID),
        stages: get(A::CUBLASLT_ALGO_CONFIG_STAGES_ID),
        split_k: get(A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
        reduction: get(A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
        waves: r.wavesCount,
    }
}

#[cfg(test)]
mod tests {
    use super::alignment;

    #[test]
    fn alignment_is_the_largest_common_power_of_two_up_to_256() {
        assert_eq!(alignment(&[0x1000, 0x2000]), 256);
        assert_eq!(alignment(&[0x1000, 0x1010]), 16);
        assert_eq!(alignment(&[0x1002]), 2);
        assert_eq!(alignment(&[]), 256);
    }
}
