//! doppel-sim: the discrete-event simulator. It drives doppel-core's real scheduler and engine loop
//! with a virtual GPU ([`backend::SimBackend`]) priced by a [`cost::CostModel`] from a
//! [`profile::Profile`], on an integer-nanosecond virtual clock.
#![deny(missing_docs)]

pub mod cost;
pub mod error;
pub mod one_batch;
pub mod profile;
pub mod trace;
pub mod workload;

pub use cost::{BatchShape, CostModel, RooflineCost};
pub use error::SimError;
pub use profile::Profile;
