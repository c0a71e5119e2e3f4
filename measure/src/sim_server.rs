//! `doppel exec serve --backend sim`: the HTTP server over the simulator's virtual GPU on the
//! wall clock. Clients see the profile's latencies; tokens are synthetic.

use doppel_core::{Backend, Plan, StepResult, TimeNs};
use doppel_exec::server::{ExternalBackend, Server, ServerConfig, ServerError};
use doppel_sim::backend::{BackendError, SimBackend};
use doppel_sim::{CostModel, Profile, RooflineCost};
use std::time::{Duration, Instant};

/// The simulator's virtual GPU on the wall clock: results are released when the cost model says
/// the step ends, so clients see real latencies.
struct Realtime<C: CostModel> {
    inner: SimBackend<C>,
    start: Instant,
}

impl<C: CostModel> Backend for Realtime<C> {
    type Error = BackendError;

    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<(), Self::Error> {
        self.inner.launch(plan, now)
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), Self::Error> {
        self.inner.collect(plan, out)?;
        let due = self.start + Duration::from_nanos(out.done_at);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        Ok(())
    }
}

/// Build a server whose backend is `profile` (a built-in name or a .yaml file) in real time.
pub fn build(cfg: ServerConfig, profile: &str) -> Result<Server, ServerError> {
    let p = Profile::load(profile).map_err(|e| ServerError::Load(e.to_string()))?;
    let kv = p.kv_capacity_from_fraction(p.default_mem_fraction(cfg.chunked_prefill_size, 1), 1);
    let origin = Instant::now();
    let ext = ExternalBackend {
        backend: Realtime {
            inner: SimBackend::new(RooflineCost::new(&p, 1), p.model.vocab, false),
            start: origin,
        },
        name: p.name.clone(),
        backend_name: format!("sim:{}", p.name),
        vocab: p.model.vocab,
        arch: "sim".to_string(),
        context_len: p.model.context_len,
        kv_capacity_tokens: kv,
        cuda_graph: true,
        origin,
    };
    Server::build_with(cfg, ext)
}
