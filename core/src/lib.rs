//! doppel-core: the pure scheduling core shared by the simulator and the real engine.
//!
//! Requests, KV memory pools, the radix prefix cache, scheduling policies, the scheduler and the
//! engine loop over a [`Backend`]. No I/O, no async, no CUDA, no wall clock: time and randomness
//! come in as inputs, so the same inputs always give the same plans.
#![deny(missing_docs)]

pub mod config;
pub mod engine;
pub mod ids;
pub mod plan;
pub mod policy;
pub mod pool;
pub mod radix;
pub mod request;
pub mod scheduler;
pub mod stats;
pub mod testing;

pub use config::{ConfigError, EvictionPolicy, Policy, SchedulerConfig};
pub use engine::{Backend, Engine, Iteration};
pub use ids::{KvSlot, NodeId, RequestId, RowId, TimeNs, TokenId, FUTURE_TOKEN};
pub use plan::{
    Event, FinishInfo, ForwardMode, Plan, PlanEntry, PromptRows, StepResult, TableWrite,
    TokenLogprob,
};
pub use request::{
    Admitted, Constraint, ConstraintHandle, FinishReason, RequestSpec, SamplingParams, SubmitError,
};
pub use scheduler::Scheduler;
pub use stats::{format_decode_log, format_prefill_log, StepStats};
