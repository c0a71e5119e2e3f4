//! doppel-sim: see the issue tracker; built on doppel-core.
