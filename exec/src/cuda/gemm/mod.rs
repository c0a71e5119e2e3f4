//! The projections' GEMMs: cuBLAS and cuBLASLt with measured algorithms, the skinny and the
//! tiled tensor-core GEMMs.

pub mod blas;
pub mod blas_lt;
pub mod gemm_tile;
pub mod skinny;
pub mod tune;
