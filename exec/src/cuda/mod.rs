//! The CUDA side of the executor: device start-up, kernels compiled at run time with NVRTC (cached
//! on disk), typed launch wrappers and cuBLAS GEMMs.
//!
//! Everything loads the CUDA libraries dynamically (cudarc's `dynamic-loading`), so the crate
//! builds and its tests run on machines without CUDA; [`Gpu::new`] then fails with
//! [`CudaError::NoDriver`] or [`CudaError::NoDevice`] instead of panicking.
//!
//! Kernel sources live in `kernels/*.cu` at the repository root and are embedded in the binary;
//! `kernels/README.md` documents each kernel and the KV cache layout.

pub mod attention;
pub mod backend;
pub mod bench_one_batch;
pub mod blas;
pub mod blas_lt;
pub mod buffers;
pub mod capture;
pub mod compile;
pub mod forward;
pub mod fused;
pub mod gemm_tile;
pub mod kernels;
mod launch;
mod layer;
pub mod model;
pub mod ops;
pub mod plan;
pub mod rope;
pub mod sample;
pub mod skinny;
pub mod startup;
pub mod timing;
pub mod tp;
pub mod tune;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr};
use std::marker::PhantomData;
use std::sync::Arc;

pub use blas::Blas;
pub use compile::{KernelSource, KERNEL_SOURCES};
pub use kernels::Kernels;

/// What can go wrong on the CUDA path.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The CUDA driver library could not be loaded.
    #[error("no CUDA driver found (libcuda.so could not be loaded): {0}")]
    NoDriver(String),
    /// The driver loaded but reports no usable device.
    #[error("no CUDA device available: {0}")]
    NoDevice(String),
    /// NVRTC could not be loaded.
    #[error("NVRTC (libnvrtc.so) could not be loaded: put the CUDA library directory on LD_LIBRARY_PATH ({0})")]
    NoNvrtc(String),
    /// The CUDA headers (cuda_bf16.h) were not found.
    #[error("CUDA headers not found (looked for cuda_bf16.h in {0}); set DOPPEL_CUDA_INCLUDE")]
    NoHeaders(String),
    /// A kernel failed to compile.
    #[error("kernel {file} failed to compile for {arch}:\n{log}")]
    Compile {
        /// The source file.
        file: String,
        /// Target architecture.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A driver call failed.
    #[error("CUDA driver error during {what}: {err}")]
    Driver {
        /// What was being done.
        what: String,
        /// The driver's error.
        err: cudarc::driver::DriverError,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS error during {what}: {err}")]
    Blas {
        /// What was being done.
        what: String,
        /// cuBLAS's error.
        err: cudarc::cublas::result::CublasError,
    },
    /// A cuBLASLt call failed.
    #[error("cuBLASLt error during {what}: {err}")]
    BlasLt {
        /// What was being done.
        what: String,
        /// cuBLASLt's error.
        err: cudarc::cublaslt::result::CublasError,
    },
    /// A launch wrapper was given arguments that do not fit the kernel.
    #[error("invalid arguments for {kernel}: {msg}")]
    Invalid {
        /// The kernel.
        kernel: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The NCCL library could not be loaded (tensor parallelism).
    #[error("NCCL could not be loaded: {0}")]
    NoNccl(String),
    /// An NCCL call failed.
    #[error("NCCL error during {what}: {msg}")]
    Nccl {
        /// What was being done.
        what: String,
        /// NCCL's message.
        msg: String,
    },
    /// The checkpoint or a start-up setting cannot be used.
    #[error("{path}: {msg}")]
    Model {
        /// The checkpoint directory.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// The kernel cache could not be read or written.
    #[error("kernel cache {path}: {err}")]
    Cache {
        /// The file or directory.
        path: String,
        /// The I/O error.
        err: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, CudaError>;

/// Attach a description to a driver error.
pub(crate) trait DriverCtx<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> DriverCtx<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|err| CudaError::Driver {
            what: what.to_string(),
            err,
        })
    }
}

/// A typed raw device pointer with the number of elements it may address: what the launch
/// wrappers take, so callers can pass sub-ranges of larger buffers and the wrappers can check
/// every extent before a kernel touches memory.
#[derive(Debug)]
pub struct DPtr<T> {
    addr: u64,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for DPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DPtr<T> {}

impl<T> DPtr<T> {
    /// The whole of `buf`.
    pub fn of(buf: &CudaSlice<T>, stream: &CudaStream) -> DPtr<T> {
        // Event tracking is off (Gpu::new), so the guard returned with the pointer does nothing.
        let (addr, _guard) = buf.device_ptr(stream);
        DPtr {
            addr,
            len: buf.len(),
            _t: PhantomData,
        }
    }

    /// Elements `start .. start + len` of this range; None if out of bounds.
    pub fn sub(self, start: usize, len: usize) -> Option<DPtr<T>> {
        if start.checked_add(len)? > self.len {
            return None;
        }
        Some(DPtr {
            addr: self.addr + (start * std::mem::size_of::<T>()) as u64,
            len,
            _t: PhantomData,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw device address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

/// One GPU, ready to run doppel's kernels: context, stream, compiled kernels and cuBLAS.
pub struct Gpu {
    /// The context.
    pub ctx: Arc<CudaContext>,
    /// The stream every kernel and GEMM runs on.
    pub stream: Arc<CudaStream>,
    /// Compiled kernels.
    pub kernels: Kernels,
    /// cuBLAS handle bound to `stream`.
    pub blas: Blas,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// Device name.
    pub name: String,
    /// Streaming multiprocessors (sizes the skinny GEMM's grid).
    pub sms: usize,
    /// Most dynamic shared memory one block may opt into (bytes): 227 KB on the H100, ~99 KB on
    /// sm_86/sm_89, 163 KB on the A100.
    pub smem_per_block: usize,
    /// Launch kernels with programmatic dependent launch (see launch.rs).
    pdl: std::sync::atomic::AtomicBool,
}

impl Gpu {
    /// Open device `ordinal`, compile (or load from the cache) every kernel for its architecture,
    /// and create a cuBLAS handle. Fails cleanly when no driver or device is present.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        let ctx = open_context(ordinal)?;
        let cc = ctx
            .compute_capability()
            .ctx("reading the compute capability")?;
        let name = ctx.name().ctx("reading the device name")?;
        // One stream, ordered work: cudarc's per-buffer event tracking would only add overhead
        // and would break CUDA graph capture.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().ctx("creating a stream")?;
        let kernels = Kernels::load(&ctx, cc)?;
        let blas = Blas::new(stream.clone())?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .ctx("reading the SM count")?
            .max(1) as usize;
        let smem_per_block = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .ctx("reading the shared memory per block")?
            .max(0) as usize;
        // Programmatic dependent launch needs sm_90; DOPPEL_PDL=0 turns it off (an A/B switch).
        let pdl = cc.0 >= 9 && std::env::var("DOPPEL_PDL").map_or(true, |v| v != "0");
        Ok(Gpu {
            ctx,
            stream,
            kernels,
            blas,
            cc,
            name,
            sms,
            smem_per_block,
            pdl: pdl.into(),
        })
    }

    /// Copy a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(host).ctx("copying to the device")
    }

    /// Copy a device buffer back to the host (synchronises the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(buf).ctx("copying to the host")
    }

    /// A device buffer of `n` elements, zeroed.
    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros(n).ctx("allocating device memory")
    }

    /// Raw pointer to all of `buf`.
    pub fn ptr<T>(&self, buf: &CudaSlice<T>) -> DPtr<T> {
        DPtr::of(buf, &self.stream)
    }

    /// Wait for all queued work.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().ctx("synchronising the stream")
    }
}

/// Open a context on device `ordinal`, turning "no driver" and "no device" into clear errors
/// (cudarc panics when the library is missing, so its presence is checked first).
pub fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver(
            "is the NVIDIA driver installed and libcuda.so.1 on the library path?".into(),
        ));
    }
    // Lazy module loading (the CUDA 12+ default) loads a library kernel the first time it runs:
    // cuBLAS picks a new kernel for each new GEMM shape, so the first prefills of new lengths
    // paid milliseconds of loading on the host (measured: 4-37 ms launches on an H100 replay).
    // A server wants that paid at start-up. Read by cuInit, so set before the first driver call;
    // an explicit setting by the user wins.
    if std::env::var_os("CUDA_MODULE_LOADING").is_none() {
        std::env::set_var("CUDA_MODULE_LOADING", "EAGER");
    }
    let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice(e.to_string()))?;
    if count <= 0 {
        return Err(CudaError::NoDevice("the driver reports 0 devices".into()));
    }
    if ordinal >= count as usize {
        return Err(CudaError::NoDevice(format!(
            "device {ordinal} requested, {count} present"
        )));
    }
    CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice(e.to_string()))
}
