//! Kernel launches through `cuLaunchKernelEx`, with programmatic dependent launch (PDL) on
//! sm_90+: a kernel may start while the one before it finishes, prefetch its weights, and wait
//! for that kernel's results on the device (`pdl_enter` in kernels/prelude.cuh, which every
//! kernel launched here calls before touching its inputs or outputs).

use super::Gpu;
use cudarc::driver::{sys, CudaFunction, DeviceRepr, DriverError, LaunchConfig};
use std::ffi::c_void;
use std::marker::PhantomData;

/// Most arguments a kernel of ours takes (the decode attention with the q/k pass folded in: 29).
const MAX_ARGS: usize = 32;

/// A kernel's arguments, collected by reference as cudarc's launch builder does, and launched
/// with or without the PDL attribute. A fixed array, not a Vec: an eager prefill makes ~450
/// launches, each of which would otherwise allocate.
pub(crate) struct Launch<'a> {
    gpu: &'a Gpu,
    f: &'a CudaFunction,
    args: [*mut c_void; MAX_ARGS],
    len: usize,
    _args: PhantomData<&'a ()>,
}

impl<'a> Launch<'a> {
    /// Add the next argument (it must outlive the launch call, which copies it).
    pub fn arg<T: DeviceRepr>(&mut self, v: &'a T) -> &mut Self {
        assert!(
            self.len < MAX_ARGS,
            "a kernel wrapper passes more than MAX_ARGS arguments"
        );
        self.args[self.len] = v as *const T as *mut c_void;
        self.len += 1;
        self
    }

    /// Queue the kernel on the GPU's stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and type, and every
    /// pointer must address memory the kernel may touch (the typed wrappers check extents).
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.gpu.stream.context().bind_to_thread()?;
        // Zeroed, then set: the struct's padding field varies between CUDA versions.
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let pdl = self.gpu.pdl();
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.gpu.stream.cu_stream(),
            attrs: if pdl { &mut attr } else { std::ptr::null_mut() },
            numAttrs: pdl as u32,
        };
        sys::cuLaunchKernelEx(
            &config,
            self.f.cu_function(),
            self.args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
    }
}

impl Gpu {
    /// Start a launch of `f` (see [`Launch`]).
    pub(crate) fn launcher<'a>(&'a self, f: &'a CudaFunction) -> Launch<'a> {
        Launch {
            gpu: self,
            f,
            args: [std::ptr::null_mut(); MAX_ARGS],
            len: 0,
            _args: PhantomData,
        }
    }

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
