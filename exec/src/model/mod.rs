//! Model side shared by every backend: configuration, checkpoint loading, and the CPU forward pass.

pub mod collective;
pub mod config;
pub mod cpu;
mod linear;
pub mod rope;
pub mod shard;
pub mod weights;

pub use collective::{Collective, Solo, ThreadGroup};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use cpu::{
    CpuModel, ForwardError as ForwardErrorKind, KvCache, LoadError, LoadReport, LogitsWanted,
    SeqInput,
};
pub use shard::{Part, Shard, Split, TpError};
pub use weights::{
    tensor_specs, DType, LayerNames, TensorRef, TensorSpec, WeightError, WeightStore,
};
