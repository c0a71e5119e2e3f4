//! doppel-exec: the real engine's model side, built on doppel-core: Hugging Face checkpoint
//! loading, the CPU reference backend, tokenizer and chat template, sampling and stopping.

pub mod chat_template;
pub mod constraint;
pub mod cpu_backend;
pub mod cpu_tp;
pub mod cuda;
pub mod model;
pub mod sampling;
pub mod server;
pub mod testgen;
pub mod tokenizer;
pub mod warmup;
