//! The virtual GPU: prices each plan with the cost model and returns synthetic tokens.

use crate::cost::{BatchShape, CostModel};
use crate::heat::Heat;
use crate::kv_sharing::KvSharing;
use crate::workload::synth_token;
use doppel_core::{Backend, ForwardMode, Plan, StepResult, TimeNs};
use std::collections::VecDeque;

/// One executed step, for the timeline and the batch statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRecord {
    /// Step number.
    pub step: u64,
    /// When the GPU started it.
    pub start: TimeNs,
    /// When it finished.
    pub end: TimeNs,
    /// When the engine loop began forming it (the clock the scheduler saw arrivals by).
    pub scheduled: TimeNs,
    /// When the host finished launching it.
    pub launched: TimeNs,
    /// Device time where it was measured (real engine with CUDA events) or modelled.
    pub device_ns: Option<u64>,
    /// Kind of pass.
    pub mode: ForwardMode,
    /// Requests in the batch.
    pub batch: u32,
    /// Tokens computed.
    pub tokens: u32,
    /// KV tokens read by attention (decode lengths and cached prefixes).
    pub kv_tokens: u64,
    /// With step times taken from a real run: the cost model's device time for the same batch
    /// and its shape, so the model can be checked step by step against the measured one.
    pub model: Option<(u64, BatchShape)>,
}

/// Failure of the virtual GPU: only a misuse of the Backend contract can cause one.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `collect` without a matching `launch`.
    #[error("collect for step {0} without a launched step")]
    NothingInFlight(u64),
}

/// A [`Backend`] whose steps take the time the cost model says, on one virtual GPU.
pub struct SimBackend<C: CostModel> {
    cost: C,
    vocab: usize,
    busy_until: TimeNs,
    cpu_free_at: TimeNs,
    // When the host finished the latest launch: in the overlap order a step's results are
    // collected only after the next step's launch call has returned.
    last_host_end: TimeNs,
    // (end, whether the end is a real run's results time, taken as is)
    inflight: VecDeque<(TimeNs, bool)>,
    gpu_busy_ns: u64,
    record: bool,
    last_mode: ForwardMode,
    /// Executed steps (only when recording).
    pub steps: Vec<StepRecord>,
    // Step times taken from a real run instead of the cost model (`lock_to`), and how many
    // steps were launched so far.
    locked: Vec<StepRecord>,
    launched: usize,
    sharing: KvSharing,
    // The engine thread is busy with other host work (taking in arrivals) until then.
    host_busy_until: TimeNs,
    // Sustained-load heat (`crate::heat`) and when the GPU finished its last step's work.
    heat: Heat,
    heat_end: TimeNs,
}

impl<C: CostModel> SimBackend<C> {
    /// A virtual GPU priced by `cost`; `record` keeps a [`StepRecord`] per step.
    pub fn new(cost: C, vocab: usize, record: bool) -> Self {
        SimBackend {
            cost,
            vocab,
            busy_until: 0,
            cpu_free_at: 0,
            last_host_end: 0,
            inflight: VecDeque::with_capacity(2),
            gpu_busy_ns: 0,
            record,
            last_mode: ForwardMode::Extend,
            steps: Vec::new(),
            locked: Vec::new(),
            launched: 0,
            sharing: KvSharing::new(),
            host_busy_until: 0,
            heat: Heat::new(),
            heat_end: 0,
        }
    }

    /// Take step times from a real run: launch number `i` starts, returns from its launch and
    /// ends when `steps[i]` did (steps beyond the list are priced by the cost model).
    pub fn lock_to(&mut self, steps: Vec<StepRecord>) {
        self.locked = steps;
    }

    /// When the real run began forming launch number `i` (None past the locked steps).
    pub fn locked_schedule(&self, i: usize) -> Option<TimeNs> {
        self.locked.get(i).map(|r| r.scheduled)
    }

    /// Host work of `ns` on the engine thread at `now` (submitting arrived requests): the next
    /// step is formed after it.
    pub fn host_work(&mut self, now: TimeNs, ns: u64) {
        if ns > 0 {
            self.host_busy_until = self.host_busy_until.max(now) + ns;
        }
    }

    /// The cost model.
    pub fn cost(&self) -> &C {
        &self.cost
    }

    /// When the host finished forming and launching the last launched step.
    pub fn cpu_free_at(&self) -> TimeNs {
        self.cpu_free_at
    }

    /// Kind of the last launched plan (the core leaves `StepStats::mode` at its default).
    pub fn last_mode(&self) -> ForwardMode {
        self.last_mode
    }

    /// Total GPU busy time so far.
    pub fn gpu_busy_ns(&self) -> u64 {
        self.gpu_busy_ns
    }
}

impl<C: CostModel> Backend for SimBackend<C> {
    type Error = BackendError;

    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<(), BackendError> {
        // The scheduler spends CPU time forming the plan, then the host launches it; the GPU
        // starts it when the launch has begun and the previous step is done, and cannot finish
        // before the host's last launch. In the overlap order `now` is while the previous step
        // still runs, so the host's time hides behind it.
        let formed = now.max(self.host_busy_until) + self.cost.schedule_ns(plan.entries.len());
        let mut shape = BatchShape::of_plan(plan);
        shape.shared_kv_tokens = self.sharing.observe(plan);
        let l = self.cost.launch_ns(&shape);
        let mut host_end = formed + l.host_ns;
        let mut start = (formed + l.lead_ns).max(self.busy_until);
        let sustained = self.cost.sustained();
        let (mut device, load) = if sustained.is_some() {
            self.cost.step_ns_with_load(&shape)
        } else {
            (self.cost.step_ns(&shape), 0.0)
        };
        let locked = self.locked.get(self.launched);
        if let Some((slowdown, tau)) = sustained {
            // The GPU cooled while idle since its last step; this step runs at its mean heat.
            let at = locked.map_or(start, |r| r.start.max(now));
            self.heat.idle(at.saturating_sub(self.heat_end) as f64, tau);
            let h = self.heat.run(device as f64, load, tau);
            device = ((device as f64) * crate::heat::factor(slowdown, h, load))
                .round()
                .max(1.0) as u64;
            self.heat_end = at + device;
        }
        let mut end = (start + device).max(host_end + l.tail_ns);
        let model = locked.map(|_| (device, shape));
        if let Some(r) = locked {
            start = r.start.max(now);
            (host_end, end) = (r.launched.max(start), r.end.max(start));
            device = r.device_ns.unwrap_or(end - start);
        }
        self.launched += 1;
        self.cpu_free_at = host_end;
        self.last_host_end = host_end;
        self.busy_until = end;
        self.gpu_busy_ns += end - start;
        self.inflight.push_back((end, locked.is_some()));
        self.last_mode = plan.mode;
        if self.record {
            self.steps.push(StepRecord {
                step: plan.step,
                start,
                end,
                scheduled: now,
                launched: host_end,
                device_ns: Some(device),
                mode: plan.mode,
                batch: plan.entries.len() as u32,
                tokens: shape.tokens as u32,
                kv_tokens: shape.kv_read_tokens as u64,
                model,
            });
        }
        Ok(())
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), BackendError> {
        let (end, exact) = self
            .inflight
            .pop_front()
            .ok_or(BackendError::NothingInFlight(plan.step))?;
        out.tokens.extend(plan.entries.iter().map(|e| {
            // The token after position seq_len - 1 is output number seq_len - prompt_len.
            let index = e.seq_len().saturating_sub(e.prompt_len);
            synth_token(e.id.0, index, self.vocab)
        }));
        // A real run's step end is already when its results were available (the CPU backend
        // computes in the launch call and stamps the end there).
        out.done_at = if exact {
            end
        } else {
            end.max(self.last_host_end)
        };
        Ok(())
    }
}
