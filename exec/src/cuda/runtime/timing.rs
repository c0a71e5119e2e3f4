//! Step timing for `doppel exec profile` and `doppel exec replay`: CUDA events around each step
//! and a GPU-side stall, so the device time of a step can be measured apart from its host-side
//! launch time.

use crate::cuda::args::SpinNs;
use crate::cuda::launch::Mode;
use crate::cuda::ops::cfg;
use crate::cuda::{DriverCtx, Gpu, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

impl Gpu {
    /// Keep the stream busy for `ns` nanoseconds of GPU time (one thread spinning on the global
    /// timer), so the kernels launched after it queue up before the GPU reaches them.
    pub fn spin_ns(&self, ns: u64) -> Result<()> {
        const K: &str = "spin_ns";
        // Without PDL: the kernel only stalls the stream, it waits for nothing.
        SpinNs { ns }.launch(self, K, cfg((1, 1, 1), 1), Mode::Plain)
    }

    /// Record a timing event on the stream.
    pub fn timing_event(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .ctx("recording a timing event")
    }
}

/// Events around one step: `start` before its first GPU work, `end` after its last.
pub(crate) struct StepEvents {
    pub start: CudaEvent,
    pub end: CudaEvent,
}

impl StepEvents {
    /// The step's device time: from when the GPU reached its first work (after the previous
    /// step's end, if that was later than `start`) to its end. Call once `end` has completed.
    pub fn device_ns(&self, prev_end: Option<&CudaEvent>) -> Result<u64> {
        let mut ms = self
            .start
            .elapsed_ms(&self.end)
            .ctx("reading a timing event")?;
        if let Some(p) = prev_end {
            // The stream runs steps in order, so the step began at max(start, previous end).
            let since_prev = p.elapsed_ms(&self.end).ctx("reading a timing event")?;
            ms = ms.min(since_prev);
        }
        Ok((ms.max(0.0) as f64 * 1e6).round() as u64)
    }
}
