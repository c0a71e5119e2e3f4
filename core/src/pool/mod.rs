//! KV memory pools: the request-to-token table and the KV slot allocator.

mod kv_alloc;
mod req_table;

pub use kv_alloc::KvAllocator;
pub use req_table::ReqToTokenPool;
