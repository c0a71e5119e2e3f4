//! The `Backend` seam and the loop that drives scheduler + backend, in plain or overlap order.

use crate::ids::TimeNs;
use crate::plan::{Event, Plan, StepResult};
use crate::scheduler::Scheduler;
use crate::stats::StepStats;

/// Something that executes plans: the simulator's virtual GPU, the CPU model, the CUDA model.
pub trait Backend {
    /// What can go wrong while executing.
    type Error: std::fmt::Debug + std::fmt::Display;

    /// Start executing `plan` at time `now` (it may finish asynchronously).
    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<(), Self::Error>;

    /// Wait for `plan` (the oldest launched and not yet collected) and write its results into `out`:
    /// one token per entry, and `done_at`, when the results became available.
    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), Self::Error>;

    /// While on, the backend may spend time measuring kernel choices for the shapes its steps
    /// meet (the warm-up turns it on, then off before serving). Default: nothing to tune.
    fn set_tuning(&mut self, _on: bool) {}
}

/// What one iteration of the loop did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Iteration {
    /// Statistics of the plan launched in this iteration, if any.
    pub launched: Option<StepStats>,
    /// Completion time of the plan whose results were applied in this iteration, if any.
    pub completed_at: Option<TimeNs>,
}

impl Iteration {
    /// Nothing was launched and nothing completed: the engine has no work.
    pub fn is_idle(&self) -> bool {
        self.launched.is_none() && self.completed_at.is_none()
    }
}

/// The event loop: scheduler and backend, one owner, no locks.
pub struct Engine<B: Backend> {
    /// The scheduler (submit and abort requests through it between iterations).
    pub scheduler: Scheduler,
    /// The backend.
    pub backend: B,
    overlap: bool,
    inflight: Option<Plan>,
    spare: Vec<Plan>,
    result: StepResult,
}

impl<B: Backend> Engine<B> {
    /// A loop over `scheduler` and `backend`; `overlap` selects SGLang's overlap order.
    pub fn new(scheduler: Scheduler, backend: B, overlap: bool) -> Self {
        Engine {
            scheduler,
            backend,
            overlap,
            inflight: None,
            spare: Vec::new(),
            result: StepResult::default(),
        }
    }

    /// Whether the overlap order is on.
    pub fn overlap(&self) -> bool {
        self.overlap
    }

    /// The plan launched but not yet applied (overlap order only).
    pub fn inflight(&self) -> Option<&Plan> {
        self.inflight.as_ref()
    }

    /// True when no request is waiting or running and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_none() && self.scheduler.is_idle()
    }

    /// One iteration at time `now`; events (tokens, finishes) are appended to `events`.
    ///
    /// Plain order: form plan N, launch it, wait, apply its results.
    /// Overlap order: form plan N+1 and launch it, then wait for N and apply its results, so the
    /// scheduler's CPU work hides behind the GPU step and request state is one step behind.
    pub fn iterate(&mut self, now: TimeNs, events: &mut Vec<Event>) -> Result<Iteration, B::Error> {
        let mut plan = self.spare.pop().unwrap_or_default();
        let formed = self.scheduler.schedule(&mut plan);
        self.scheduler.take_events(events);
        let mut it = Iteration::default();
        if formed {
            self.backend.launch(&plan, now)?;
            it.launched = Some(plan.stats);
        }
        if self.overlap {
            if let Some(prev) = self.inflight.take() {
                it.completed_at = Some(self.finish(&prev, events)?);
                self.spare.push(prev);
            }
            if formed {
                self.inflight = Some(plan);
            } else {
                self.spare.push(plan);
            }
        } else {
            if formed {
                it.completed_at = Some(self.finish(&plan, events)?);
            }
            self.spare.push(plan);
        }
        Ok(it)
    }

    /// Collect and apply the in-flight plan, if any (used to drain the overlap pipeline).
    pub fn drain(&mut self, events: &mut Vec<Event>) -> Result<Option<TimeNs>, B::Error> {
        match self.inflight.take() {
            Some(prev) => {
                let at = self.finish(&prev, events)?;
                self.spare.push(prev);
                Ok(Some(at))
            }
            None => Ok(None),
        }
    }

    fn finish(&mut self, plan: &Plan, events: &mut Vec<Event>) -> Result<TimeNs, B::Error> {
        self.result.clear();
        self.backend.collect(plan, &mut self.result)?;
        let at = self.result.done_at;
        self.scheduler.complete(plan, &self.result, events);
        Ok(at)
    }
}
