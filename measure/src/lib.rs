//! doppel-measure: the tools that need both sides, the real engine (doppel-exec) and the
//! simulator (doppel-sim): trace replay on the real engine, step profiling for calibration, the
//! `bench serve` client, the HTTP server over the simulator's virtual GPU, and
//! `exec bench-one-batch` on the GPU path.

pub mod bench;
pub mod bench_one_batch;
pub mod profile;
pub mod replay;
pub mod sim_server;
