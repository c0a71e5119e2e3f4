//! The device: one GPU's context, stream, compiled kernels and cuBLAS handle.

use crate::cuda::{Blas, CudaError, DPtr, DriverCtx, Kernels, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use std::sync::Arc;

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
    /// L2 cache bytes (50 MB on the H100): bounds the decode attention's KV prefetch.
    pub l2_bytes: usize,
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
        let l2_bytes = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .ctx("reading the L2 size")?
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
            l2_bytes,
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

impl Gpu {
    /// Whether kernels are launched with programmatic dependent launch.
    pub fn pdl(&self) -> bool {
        self.pdl.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turn programmatic dependent launch on or off (it is on by default on sm_90 and newer
    /// unless `DOPPEL_PDL=0`; it has no effect before sm_90). CUDA graphs captured before a
    /// change keep the launches they were captured with.
    pub fn set_pdl(&self, on: bool) {
        let on = on && self.cc.0 >= 9;
        self.pdl.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}
