//! Identifier and unit newtypes shared by every part of the core.

/// A token id of the model's vocabulary.
pub type TokenId = u32;

/// A point in time or a duration, in integer nanoseconds (virtual in the simulator, wall clock in exec).
pub type TimeNs = u64;

/// A client-visible request identifier, chosen by the submitter and unique among live requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Index of one token's K/V entry in the KV pool (slot 0 is the padding dummy, never handed out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KvSlot(pub u32);

/// Row of the request-to-token table (SGLang's req_pool_idx).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowId(pub u32);

/// Node of the radix prefix cache arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// Placeholder in a plan's `input_ids`: "the token this request sampled in the previous step",
/// which the backend substitutes (SGLang's future token ids in the overlap loop).
pub const FUTURE_TOKEN: TokenId = u32::MAX;

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl KvSlot {
    /// The slot index as a usize, for indexing a KV buffer.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl RowId {
    /// The row index as a usize.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl NodeId {
    /// The node index as a usize.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}
