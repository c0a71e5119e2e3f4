//! doppel-exec: see the issue tracker; built on doppel-core.

pub mod cuda;
