//! The CUDA runtime: the device, kernel compilation and loading, the launch mechanism and every
//! kernel's argument struct, graph capture and step timing.

pub(crate) mod args;
pub mod capture;
pub mod compile;
pub mod device;
pub mod kernels;
pub(crate) mod launch;
#[cfg(test)]
mod signature;
pub mod timing;
