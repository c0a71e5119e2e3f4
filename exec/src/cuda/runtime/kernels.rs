//! Loading the compiled kernels into a context.

use crate::cuda::compile::{cache_dir, cached_ptx_all, KERNEL_SOURCES};
use crate::cuda::{CudaError, DriverCtx, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Every kernel entry point, loaded and ready to launch.
pub struct Kernels {
    /// Each function with the dynamic shared memory it is opted into (bytes; 48 KB and below
    /// need no opt-in).
    funcs: BTreeMap<&'static str, (CudaFunction, AtomicU32)>,
    /// How many sources came from the on-disk cache (the rest were compiled now).
    pub cache_hits: usize,
    /// Seconds spent compiling and loading.
    pub load_seconds: f64,
}

impl Kernels {
    /// Compile (or fetch from the cache) every source for compute capability `cc` and load it.
    pub fn load(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<Kernels> {
        let t0 = std::time::Instant::now();
        let arch = (cc.0 * 10 + cc.1) as u32;
        let dir = cache_dir();
        let mut funcs = BTreeMap::new();
        let mut cache_hits = 0;
        // Compile what the cache lacks (in parallel), then load the modules in order.
        let ptxs = cached_ptx_all(KERNEL_SOURCES, arch, &dir)?;
        for (k, (ptx, hit)) in KERNEL_SOURCES.iter().zip(ptxs) {
            cache_hits += hit as usize;
            let module = ctx
                .load_module(ptx)
                .ctx(&format!("loading module {}", k.file))?;
            for e in k.entries {
                let f = module
                    .load_function(e)
                    .ctx(&format!("loading kernel {e} from {}", k.file))?;
                funcs.insert(*e, (f, AtomicU32::new(0)));
            }
        }
        Ok(Kernels {
            funcs,
            cache_hits,
            load_seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The named entry point.
    pub fn get(&self, name: &'static str) -> Result<&CudaFunction> {
        self.entry(name).map(|(f, _)| f)
    }

    /// The named entry point, opted into `smem` bytes of dynamic shared memory per block: the
    /// driver call is made only when a launch needs more than the function was opted into so far
    /// (once per function in practice), not on every launch.
    pub fn get_with_smem(&self, name: &'static str, smem: usize) -> Result<&CudaFunction> {
        let (f, opted) = self.entry(name)?;
        let want = u32::try_from(smem).map_err(|_| CudaError::Invalid {
            kernel: name,
            msg: format!("{smem} bytes of shared memory"),
        })?;
        if want > opted.load(Ordering::Relaxed) {
            let attr = CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(attr, want as i32).ctx(name)?;
            opted.fetch_max(want, Ordering::Relaxed);
        }
        Ok(f)
    }

    fn entry(&self, name: &'static str) -> Result<&(CudaFunction, AtomicU32)> {
        self.funcs.get(name).ok_or(CudaError::Invalid {
            kernel: name,
            msg: "no such kernel is loaded".into(),
        })
    }
}
