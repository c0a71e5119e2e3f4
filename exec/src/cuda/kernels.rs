//! Loading the compiled kernels into a context.

use super::compile::{cache_dir, cached_ptx, KERNEL_SOURCES};
use super::{CudaError, DriverCtx, Result};
use cudarc::driver::{CudaContext, CudaFunction};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every kernel entry point, loaded and ready to launch.
pub struct Kernels {
    funcs: BTreeMap<&'static str, CudaFunction>,
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
        for k in KERNEL_SOURCES {
            let (ptx, hit) = cached_ptx(k, arch, &dir)?;
            cache_hits += hit as usize;
            let module = ctx
                .load_module(ptx)
                .ctx(&format!("loading module {}", k.file))?;
            for e in k.entries {
                let f = module
                    .load_function(e)
                    .ctx(&format!("loading kernel {e} from {}", k.file))?;
                funcs.insert(*e, f);
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
        self.funcs.get(name).ok_or(CudaError::Invalid {
            kernel: name,
            msg: "no such kernel is loaded".into(),
        })
    }
}
