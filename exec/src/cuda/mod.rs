//! The CUDA side of the executor: device start-up, kernels compiled at run time with NVRTC (cached
//! on disk), typed launch wrappers and cuBLAS GEMMs.
//!
//! Everything loads the CUDA libraries dynamically (cudarc's `dynamic-loading`), so the crate
//! builds and its tests run on machines without CUDA; [`Gpu::new`] then fails with
//! [`CudaError::NoDriver`] or [`CudaError::NoDevice`] instead of panicking.
//!
//! Kernel sources live in `kernels/*.cu` at the repository root and are embedded in the binary;
//! `kernels/README.md` documents each kernel and the KV cache layout.

pub mod backend;
pub mod gemm;
pub mod model;
pub mod ops;
pub mod runtime;
pub mod tp;

// The modules by their earlier flat paths (`cuda::attention`, `cuda::blas`, ...), which the
// tests and the binary name.
pub use backend::startup;
pub use gemm::{blas, blas_lt, gemm_tile, skinny, tune};
use model::layer;
pub use model::{buffers, forward, plan};
pub use ops::{attention, fused, gemv, prompt_logprobs, rope, sample};
pub use runtime::device::{open_context, Gpu};
use runtime::{args, launch};
pub use runtime::{capture, compile, kernels, timing};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::marker::PhantomData;

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
pub trait DriverCtx<T> {
    /// The error as [`CudaError::Driver`] doing `what`.
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

    /// The same range as bytes.
    pub fn bytes(self) -> DPtr<u8> {
        DPtr {
            addr: self.addr,
            len: self.len * std::mem::size_of::<T>(),
            _t: PhantomData,
        }
    }
}
