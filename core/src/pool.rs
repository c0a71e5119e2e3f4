//! KV memory pools.
