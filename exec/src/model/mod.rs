//! Model side shared by every backend: configuration, checkpoint loading, and the CPU forward pass.

pub mod config;
pub mod cpu;
pub mod rope;
pub mod weights;

pub use config::{Arch, ModelConfig, RopeScaling};
pub use cpu::{
    CpuModel, ForwardError as ForwardErrorKind, KvCache, LoadError, LoadReport, LogitsWanted,
    SeqInput,
};
pub use weights::{
    tensor_specs, DType, LayerNames, TensorRef, TensorSpec, WeightError, WeightStore,
};
