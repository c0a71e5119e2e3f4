//! The sampling checks (sampling_parts/) on the CPU backend: seeded reproducibility in any
//! batch, every token explained by its draw, frequencies under temperature / top-k / top-p /
//! min-p, logprobs, penalties and logit bias. The logits here equal the reference's, so this
//! validates the checks' statistics and tolerances; cuda_sampling.rs runs them on the GPU.

mod engine_common;
mod sampling_parts;

use doppel_core::{Engine, Scheduler, SchedulerConfig};
use doppel_exec::cpu_backend::CpuBackend;
use doppel_exec::model::CpuModel;
use sampling_parts::scenarios::{scheduler_scenarios, Rounding};
use sampling_parts::{Batching, CdfOrder, Checks, Reference, Subject, Tolerance};

#[test]
fn sampling_checks_pass_on_the_cpu_backend() {
    let dir = sampling_parts::model_dir();
    let reference = Reference::load(dir.path());
    let make = |cfg: &SchedulerConfig| {
        let (m, _) = CpuModel::load(dir.path(), false).unwrap();
        CpuBackend::new(m, cfg.kv_capacity_tokens, 99)
    };
    let s = Subject {
        name: "cpu",
        backend: &make,
        reference: &reference,
        // The same forward pass as the reference: equal up to f32 summation order.
        tol: Tolerance {
            logit_rel: 0.0,
            logit_abs: 1e-5,
            batch_logit: 1e-5,
        },
        plain_order: CdfOrder::HostSampler,
        batching: Batching::Invariant,
        measured: Default::default(),
    };
    s.check_all("sampling checks, CPU backend");
}

/// The 8B scenarios of cuda_sampling.rs on the tiny model: the scenarios' own logic (a prefix
/// hit, a retraction, the comparison) checked where every token must be equal.
#[test]
fn scheduler_scenarios_match_one_plain_pass_on_the_cpu_backend() {
    let dir = sampling_parts::model_dir();
    let reference = Reference::load(dir.path());
    let engine = |sc: &SchedulerConfig, overlap: bool| {
        let (m, _) = CpuModel::load(dir.path(), false).unwrap();
        let backend = CpuBackend::new(m, sc.kv_capacity_tokens, 99);
        Engine::new(Scheduler::new(sc.clone()).unwrap(), backend, overlap)
    };
    let exact = Rounding {
        logprob: 0.0,
        tie: 0.0,
    };
    let mut c = Checks::new("scheduler scenarios, CPU backend");
    scheduler_scenarios(&mut c, &engine, reference.vocab, Batching::Invariant, exact);
    c.finish();
}
