//! Radix tree node storage.

use crate::ids::{KvSlot, NodeId, TokenId};

/// Parent of a root.
pub(super) const NO_PARENT: NodeId = NodeId(u32::MAX);

/// One node: an edge label (`key`) with its KV slots, linked into the arena by ids.
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub parent: NodeId,
    /// (first token of the child's key, child), sorted; several children may share a first
    /// token when pages are longer than one token.
    pub children: Vec<(TokenId, NodeId)>,
    pub key: Vec<TokenId>,
    pub value: Vec<KvSlot>,
    pub lock_ref: u32,
    pub last_access: u64,
    pub created: u64,
    pub hits: u64,
    pub priority: i64,
    /// Key under which the node sits in the evictable-leaf set, if it does.
    pub leaf_key: Option<(i64, i64)>,
    pub dead: bool,
}

impl Node {
    pub fn root() -> Node {
        Node {
            parent: NO_PARENT,
            children: Vec::new(),
            key: Vec::new(),
            value: Vec::new(),
            lock_ref: 1,
            last_access: 0,
            created: 0,
            hits: 0,
            priority: 0,
            leaf_key: None,
            dead: false,
        }
    }

    pub fn dead() -> Node {
        Node {
            dead: true,
            ..Node::root()
        }
    }
}
