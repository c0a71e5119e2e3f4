//! NCCL communicators for a tensor-parallel group in one process: one unique id, every rank's
//! communicator made in one group call, then each moved to its rank's worker thread. Only the
//! in-place bf16 all-reduce of the residual stream is used (docs/cuda.md, "Tensor parallelism").

use super::super::{CudaError, DPtr, DriverCtx, Gpu, Result};
use crate::model::Shard;
use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};
use half::bf16;
use std::sync::Arc;

/// NCCL's switch for NVLink SHARP (multicast objects). doppel forces it to 0 before NCCL reads
/// its environment: on the lent machines NVLink multicast can take the host's GPUs out of
/// service, and an all-reduce of a few MB gains nothing from it.
pub const NVLS_ENV: &str = "NCCL_NVLS_ENABLE";

/// NCCL's switch for connecting peers at the first collective that needs them (its default)
/// instead of at init. doppel connects at init unless the user chose: a first collective
/// inside a decode graph's capture must not set up connections.
pub const RUNTIME_CONNECT_ENV: &str = "NCCL_RUNTIME_CONNECT";

/// Why NCCL could not be used, with what to do about it.
pub fn nccl_missing() -> CudaError {
    CudaError::NoNccl(
        "cudarc looks for libnccl.so (or libnccl.so.1/.9-.13); NCCL installs libnccl.so.2, so \
         link it as libnccl.so in a directory on LD_LIBRARY_PATH (e.g. `ln -s \
         /usr/lib/x86_64-linux-gnu/libnccl.so.2 DIR/libnccl.so`), or install libnccl-dev"
            .into(),
    )
}

/// Fail with [`nccl_missing`] unless the NCCL library loads (cudarc panics on a missing
/// library, so this runs before any NCCL call).
pub fn ensure_nccl() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate names.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(nccl_missing())
    }
}

/// NCCL's message for `e`.
fn describe(e: &result::NcclError) -> String {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any result code.
    let p = unsafe { sys::ncclGetErrorString(e.0) };
    if p.is_null() {
        return format!("{:?}", e.0);
    }
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

fn nccl_err(what: &str) -> impl Fn(result::NcclError) -> CudaError + '_ {
    move |e| CudaError::Nccl {
        what: what.to_string(),
        msg: describe(&e),
    }
}

/// One rank's communicator, bound to the stream its GPU's work runs on.
pub struct RankComm {
    raw: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    shard: Shard,
}

// SAFETY: an NCCL communicator may be used from any thread as long as one thread at a time
// does; a `RankComm` is owned by its rank's model, which one worker thread drives.
unsafe impl Send for RankComm {}

impl RankComm {
    /// This rank's place in the group.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Replace `buf` on every rank by the element-wise sum of every rank's `buf` (bf16, in
    /// place), queued on the rank's stream (capturable into a CUDA graph).
    pub fn all_reduce_bf16(&self, buf: DPtr<bf16>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let p = buf.addr() as *mut std::ffi::c_void;
        // SAFETY: `buf` is a checked device range of this rank's context; the stream is the
        // one every kernel of this rank runs on, so the reduction is ordered after its writers.
        unsafe {
            result::all_reduce(
                p,
                p,
                buf.len(),
                sys::ncclDataType_t::ncclBfloat16,
                sys::ncclRedOp_t::ncclSum,
                self.raw,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map(|_| ())
        .map_err(nccl_err("all-reduce of the residual stream"))
    }
}

impl Drop for RankComm {
    fn drop(&mut self) {
        // Abort rather than destroy: destroy waits for peers, which may be gone after an error.
        // SAFETY: `raw` was made by ncclCommInitRank and is dropped once.
        let _ = unsafe { result::comm_abort(self.raw) };
    }
}

/// Communicators for `gpus` (rank r on `gpus[r]`), made from one unique id in one group call
/// from this thread, after turning NVLink multicast off, then checked with one all-reduce (so
/// a broken group fails at start-up, not in the first step).
pub fn init_group(gpus: &[&Gpu]) -> Result<Vec<RankComm>> {
    let comms = make_comms(gpus)?;
    first_all_reduce(gpus, &comms)?;
    Ok(comms)
}

fn make_comms(gpus: &[&Gpu]) -> Result<Vec<RankComm>> {
    ensure_nccl()?;
    // Read by NCCL when it first initialises (the unique id below), so set before.
    std::env::set_var(NVLS_ENV, "0");
    if std::env::var_os(RUNTIME_CONNECT_ENV).is_none() {
        std::env::set_var(RUNTIME_CONNECT_ENV, "0");
    }
    let n = gpus.len();
    let id = result::get_uniqueid().map_err(nccl_err("making the unique id"))?;
    let mut raws: Vec<sys::ncclComm_t> = vec![std::ptr::null_mut(); n];
    result::group_start().map_err(nccl_err("starting the init group"))?;
    let mut first_err = None;
    for (r, (g, raw)) in gpus.iter().zip(raws.iter_mut()).enumerate() {
        // NCCL takes the device of the current context.
        if let Err(e) = g.ctx.bind_to_thread() {
            first_err = Some(CudaError::Driver {
                what: format!("binding the context of rank {r}"),
                err: e,
            });
            break;
        }
        // SAFETY: `raw` is a valid out-pointer; rank < n; every rank uses the same id.
        if let Err(e) = unsafe { result::comm_init_rank(raw, n as i32, id, r as i32) } {
            first_err = Some(nccl_err("creating a communicator")(e));
            break;
        }
    }
    let ended = result::group_end().map_err(nccl_err("creating the communicators"));
    let comms: Vec<RankComm> = raws
        .into_iter()
        .zip(gpus)
        .enumerate()
        .filter(|(_, (raw, _))| !raw.is_null())
        .map(|(rank, (raw, g))| RankComm {
            raw,
            stream: g.stream.clone(),
            shard: Shard { rank, size: n },
        })
        .collect();
    if let Some(e) = first_err {
        return Err(e);
    }
    ended?;
    if comms.len() != n {
        return Err(CudaError::Nccl {
            what: "creating the communicators".into(),
            msg: format!("{} of {n} ranks got one", comms.len()),
        });
    }
    Ok(comms)
}

/// Every rank all-reduces a vector of ones in one group call from this thread; each must then
/// hold the group's size.
fn first_all_reduce(gpus: &[&Gpu], comms: &[RankComm]) -> Result<()> {
    let n = comms.len();
    let bufs = gpus
        .iter()
        .map(|g| {
            g.ctx.bind_to_thread().ctx("binding a rank's context")?;
            g.upload(&[bf16::ONE; 64])
        })
        .collect::<Result<Vec<_>>>()?;
    result::group_start().map_err(nccl_err("starting the first all-reduce"))?;
    let queued: Result<()> = gpus
        .iter()
        .zip(comms)
        .zip(&bufs)
        .try_for_each(|((g, c), b)| {
            g.ctx.bind_to_thread().ctx("binding a rank's context")?;
            c.all_reduce_bf16(g.ptr(b))
        });
    let ended = result::group_end().map_err(nccl_err("the first all-reduce"));
    queued?;
    ended?;
    for (r, (g, b)) in gpus.iter().zip(&bufs).enumerate() {
        g.ctx.bind_to_thread().ctx("binding a rank's context")?;
        let got = g.download(b)?;
        if got.iter().any(|v| v.to_f32() != n as f32) {
            return Err(CudaError::Nccl {
                what: "the first all-reduce".into(),
                msg: format!("rank {r} holds {} instead of {n}", got[0]),
            });
        }
    }
    Ok(())
}
