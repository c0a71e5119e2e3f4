//! Radix prefix cache: an arena of nodes keyed by token ids (page-aligned), holding KV slots.
//!
//! Follows SGLang's RadixCache (see shared/reference/sglang-semantics.md section 1) with two
//! documented differences: LFU really counts hits (each request admitted with a cached prefix
//! increments `hits` along it, see `record_hit`), and evictable leaves are kept in an ordered set updated incrementally instead of
//! rebuilding a heap on every `evict` call. Time is a logical clock (one tick per stamp), so the
//! cache is deterministic.

mod node;
#[cfg(test)]
mod tests;

use crate::config::EvictionPolicy;
use crate::ids::{KvSlot, NodeId, TokenId};
use crate::pool::KvAllocator;
use node::{Node, NO_PARENT};
use std::collections::{BTreeMap, BTreeSet};

/// Result of a prefix match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Matched tokens (a multiple of the page size).
    pub len: usize,
    /// Deepest node of the match (a root when nothing matched); lock it to protect the prefix.
    pub node: NodeId,
}

/// The radix tree. Roots (the default one and one per namespace) are never evicted.
#[derive(Clone, Debug)]
pub struct RadixCache {
    page_size: usize,
    policy: EvictionPolicy,
    nodes: Vec<Node>,
    free_nodes: Vec<NodeId>,
    ns_roots: BTreeMap<u64, NodeId>,
    evictable_size: usize,
    protected_size: usize,
    clock: u64,
    leaves: BTreeSet<(i64, i64, NodeId)>,
}

const ROOT: NodeId = NodeId(0);

impl RadixCache {
    /// An empty cache for pages of `page_size` tokens, evicting by `policy`.
    pub fn new(page_size: usize, policy: EvictionPolicy) -> Self {
        RadixCache {
            page_size,
            policy,
            nodes: vec![Node::root()],
            free_nodes: Vec::new(),
            ns_roots: BTreeMap::new(),
            evictable_size: 0,
            protected_size: 0,
            clock: 0,
            leaves: BTreeSet::new(),
        }
    }

    /// Tokens cached and unlocked (reclaimable by `evict`).
    pub fn evictable_size(&self) -> usize {
        self.evictable_size
    }

    /// Tokens cached and locked by live requests.
    pub fn protected_size(&self) -> usize {
        self.protected_size
    }

    /// Tokens cached in all.
    pub fn total_size(&self) -> usize {
        self.evictable_size + self.protected_size
    }

    /// Live nodes, roots included.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len() - self.free_nodes.len()
    }

    /// The root of a namespace (created on first use); `None` is the default namespace.
    pub fn root(&mut self, namespace: Option<u64>) -> NodeId {
        match namespace {
            None => ROOT,
            Some(ns) => {
                if let Some(&r) = self.ns_roots.get(&ns) {
                    return r;
                }
                let r = self.new_node(Node::root());
                self.ns_roots.insert(ns, r);
                r
            }
        }
    }

    fn new_node(&mut self, node: Node) -> NodeId {
        match self.free_nodes.pop() {
            Some(id) => {
                self.nodes[id.index()] = node;
                id
            }
            None => {
                self.nodes.push(node);
                NodeId((self.nodes.len() - 1) as u32)
            }
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn page_align(&self, n: usize) -> usize {
        n / self.page_size * self.page_size
    }

    /// Child of `node` whose key starts with the first page of `key`.
    fn find_child(&self, node: NodeId, key: &[TokenId]) -> Option<NodeId> {
        let n = &self.nodes[node.index()];
        let first = key[0];
        let start = n.children.partition_point(|&(t, _)| t < first);
        let ps = self.page_size;
        n.children[start..]
            .iter()
            .take_while(|&&(t, _)| t == first)
            .map(|&(_, c)| c)
            .find(|&c| ps == 1 || self.nodes[c.index()].key[..ps] == key[..ps])
    }

    fn common_len(&self, a: &[TokenId], b: &[TokenId]) -> usize {
        let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        self.page_align(n)
    }

    /// Longest cached prefix of `key` (truncated to whole pages) in `namespace`. Stamps access
    /// times and hit counts along the path, splits a node matched partway, and appends the
    /// prefix's KV slots to `out` when given.
    pub fn match_prefix(
        &mut self,
        namespace: Option<u64>,
        key: &[TokenId],
        mut out: Option<&mut Vec<KvSlot>>,
    ) -> PrefixMatch {
        let mut node = self.root(namespace);
        let mut key = &key[..self.page_align(key.len())];
        let mut len = 0;
        while !key.is_empty() {
            let Some(child) = self.find_child(node, key) else {
                break;
            };
            let now = self.tick();
            {
                let c = &mut self.nodes[child.index()];
                c.last_access = now;
            }
            self.refresh_leaf(child);
            let common = self.common_len(&self.nodes[child.index()].key, key);
            let child = if common < self.nodes[child.index()].key.len() {
                self.split(child, common)
            } else {
                child
            };
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(&self.nodes[child.index()].value);
            }
            len += common;
            node = child;
            key = &key[common..];
        }
        PrefixMatch { len, node }
    }

    /// Split `child` so that its first `at` tokens become a new parent node; returns that parent.
    fn split(&mut self, child: NodeId, at: usize) -> NodeId {
        debug_assert!(at > 0 && at < self.nodes[child.index()].key.len());
        let now = self.tick();
        let c = &mut self.nodes[child.index()];
        let tail_key = c.key.split_off(at);
        let tail_val = c.value.split_off(at);
        let head_key = std::mem::replace(&mut c.key, tail_key);
        let head_val = std::mem::replace(&mut c.value, tail_val);
        let parent = c.parent;
        let mid = Node {
            parent,
            children: Vec::new(),
            key: head_key,
            value: head_val,
            lock_ref: c.lock_ref,
            last_access: c.last_access,
            created: now,
            hits: c.hits,
            priority: c.priority,
            leaf_key: None,
            dead: false,
        };
        let first_tail = c.key[0];
        let mid = self.new_node(mid);
        self.nodes[child.index()].parent = mid;
        self.nodes[mid.index()].children.push((first_tail, child));
        // The parent's entry keeps its first token; point it at the new middle node.
        let p = &mut self.nodes[parent.index()];
        let slot = p
            .children
            .iter_mut()
            .find(|(_, c)| *c == child)
            .expect("a child is listed under its parent");
        slot.1 = mid;
        mid
    }

    /// Insert `key` with its KV `value` (both whole pages) into `namespace`; returns how many
    /// leading tokens were already cached (the caller frees its own slots for that part).
    pub fn insert(
        &mut self,
        namespace: Option<u64>,
        key: &[TokenId],
        value: &[KvSlot],
        priority: i64,
    ) -> usize {
        self.insert_path(namespace, key, value, priority, None).0
    }

    /// `insert`, also returning the deepest node of the inserted sequence and appending the slots
    /// the tree now holds for it to `out` (the tree's copies where it already had the tokens), so
    /// a caller can adopt them without matching again.
    pub fn insert_path(
        &mut self,
        namespace: Option<u64>,
        key: &[TokenId],
        value: &[KvSlot],
        priority: i64,
        mut out: Option<&mut Vec<KvSlot>>,
    ) -> (usize, NodeId) {
        debug_assert_eq!(key.len(), value.len());
        let aligned = self.page_align(key.len());
        let (mut key, mut value) = (&key[..aligned], &value[..aligned]);
        let mut node = self.root(namespace);
        let mut cached = 0;
        while !key.is_empty() {
            let Some(child) = self.find_child(node, key) else {
                node = self.add_leaf(node, key, value, priority);
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(value);
                }
                break;
            };
            let now = self.tick();
            {
                let c = &mut self.nodes[child.index()];
                c.last_access = now;
                c.priority = c.priority.max(priority);
            }
            self.refresh_leaf(child);
            let common = self.common_len(&self.nodes[child.index()].key, key);
            let child = if common < self.nodes[child.index()].key.len() {
                self.split(child, common)
            } else {
                child
            };
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(&self.nodes[child.index()].value);
            }
            cached += common;
            node = child;
            key = &key[common..];
            value = &value[common..];
        }
        (cached, node)
    }

    fn add_leaf(
        &mut self,
        parent: NodeId,
        key: &[TokenId],
        value: &[KvSlot],
        priority: i64,
    ) -> NodeId {
        let now = self.tick();
        let leaf = self.new_node(Node {
            parent,
            children: Vec::new(),
            key: key.to_vec(),
            value: value.to_vec(),
            lock_ref: 0,
            last_access: now,
            created: now,
            hits: 0,
            priority,
            leaf_key: None,
            dead: false,
        });
        let first = key[0];
        let children = &mut self.nodes[parent.index()].children;
        let pos = children.partition_point(|&(t, c)| (t, c) < (first, leaf));
        children.insert(pos, (first, leaf));
        self.evictable_size += key.len();
        self.refresh_leaf(parent);
        self.refresh_leaf(leaf);
        leaf
    }

    /// Count a cache hit on the path root -> `node` (LFU's frequency): called once per request
    /// admitted with that prefix, so policy look-ups and retries do not inflate it.
    pub fn record_hit(&mut self, mut node: NodeId) {
        while self.nodes[node.index()].parent != NO_PARENT {
            self.nodes[node.index()].hits += 1;
            let parent = self.nodes[node.index()].parent;
            self.refresh_leaf(node);
            node = parent;
        }
    }

    /// Lock the path from `node` to its root: its tokens become protected from eviction.
    pub fn inc_lock_ref(&mut self, mut node: NodeId) {
        while self.nodes[node.index()].parent != NO_PARENT {
            let n = &mut self.nodes[node.index()];
            if n.lock_ref == 0 {
                self.evictable_size -= n.key.len();
                self.protected_size += n.key.len();
            }
            n.lock_ref += 1;
            let parent = n.parent;
            self.refresh_leaf(node);
            node = parent;
        }
    }

    /// Undo one `inc_lock_ref` on the same node.
    pub fn dec_lock_ref(&mut self, mut node: NodeId) {
        while self.nodes[node.index()].parent != NO_PARENT {
            let n = &mut self.nodes[node.index()];
            debug_assert!(n.lock_ref > 0, "unlocking an unlocked node");
            n.lock_ref -= 1;
            if n.lock_ref == 0 {
                self.evictable_size += n.key.len();
                self.protected_size -= n.key.len();
            }
            let parent = n.parent;
            self.refresh_leaf(node);
            node = parent;
        }
    }

    /// Evict unlocked leaves in policy order until at least `tokens` are freed or nothing is
    /// evictable; frees their KV slots into `alloc` and returns the tokens freed.
    pub fn evict(&mut self, tokens: usize, alloc: &mut KvAllocator) -> usize {
        let mut freed = 0;
        while freed < tokens {
            let Some(&(a, b, leaf)) = self.leaves.first() else {
                break;
            };
            self.leaves.remove(&(a, b, leaf));
            let n = &mut self.nodes[leaf.index()];
            n.leaf_key = None;
            alloc.free(&n.value);
            freed += n.value.len();
            self.evictable_size -= n.key.len();
            let parent = n.parent;
            let first = n.key[0];
            let children = &mut self.nodes[parent.index()].children;
            let pos = children
                .iter()
                .position(|&(t, c)| t == first && c == leaf)
                .expect("a leaf is listed under its parent");
            children.remove(pos);
            self.nodes[leaf.index()] = Node::dead();
            self.free_nodes.push(leaf);
            self.refresh_leaf(parent);
        }
        freed
    }

    fn leaf_priority(&self, n: &Node) -> (i64, i64) {
        let la = n.last_access as i64;
        match self.policy {
            EvictionPolicy::Lru => (la, 0),
            EvictionPolicy::Lfu => (n.hits as i64, la),
            EvictionPolicy::Fifo => (n.created as i64, 0),
            EvictionPolicy::Mru => (-la, 0),
            EvictionPolicy::Filo => (-(n.created as i64), 0),
            EvictionPolicy::Priority => (n.priority, la),
        }
    }

    /// Keep the evictable-leaf set in step with a node whose state may have changed.
    fn refresh_leaf(&mut self, id: NodeId) {
        let n = &self.nodes[id.index()];
        let want = if n.parent != NO_PARENT && n.lock_ref == 0 && n.children.is_empty() {
            Some(self.leaf_priority(n))
        } else {
            None
        };
        if want == n.leaf_key {
            return;
        }
        if let Some((a, b)) = n.leaf_key {
            self.leaves.remove(&(a, b, id));
        }
        if let Some((a, b)) = want {
            self.leaves.insert((a, b, id));
        }
        self.nodes[id.index()].leaf_key = want;
    }

    /// Drop every node and free all cached slots into `alloc`; only valid when nothing is locked.
    pub fn reset(&mut self, alloc: Option<&mut KvAllocator>) {
        debug_assert_eq!(self.protected_size, 0, "reset with locked nodes");
        if let Some(alloc) = alloc {
            for n in &self.nodes {
                if n.parent != NO_PARENT && !n.dead {
                    alloc.free(&n.value);
                }
            }
        }
        *self = RadixCache::new(self.page_size, self.policy);
    }

    /// Parent of a node (None for a root).
    pub fn parent(&self, node: NodeId) -> Option<NodeId> {
        let p = self.nodes[node.index()].parent;
        (p != NO_PARENT).then_some(p)
    }

    /// Children of a node, ordered by first token.
    pub fn children(&self, node: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes[node.index()].children.iter().map(|&(_, c)| c)
    }

    /// First token of a node's key (roots: 0).
    pub fn first_token(&self, node: NodeId) -> TokenId {
        self.nodes[node.index()].key.first().copied().unwrap_or(0)
    }

    /// Append the KV slots of the path root -> `node` to `out`, in position order.
    pub fn path_slots(&self, node: NodeId, out: &mut Vec<KvSlot>) {
        let start = out.len();
        let mut n = node;
        while self.nodes[n.index()].parent != NO_PARENT {
            out.extend(self.nodes[n.index()].value.iter().rev());
            n = self.nodes[n.index()].parent;
        }
        out[start..].reverse();
    }

    /// Lock count of a node.
    pub fn lock_ref(&self, node: NodeId) -> u32 {
        self.nodes[node.index()].lock_ref
    }

    /// Every cached slot (for invariant checks), in arena order.
    pub fn cached_slots(&self) -> impl Iterator<Item = KvSlot> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.parent != NO_PARENT && !n.dead)
            .flat_map(|n| n.value.iter().copied())
    }

    /// Recompute the accounting from scratch and compare (for tests); returns a description of
    /// the first inconsistency.
    pub fn check(&self) -> Result<(), String> {
        let (mut ev, mut pr) = (0, 0);
        let mut leaves = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.dead || n.parent == NO_PARENT {
                continue;
            }
            if n.key.len() != n.value.len() || n.key.is_empty() || n.key.len() % self.page_size != 0
            {
                return Err(format!(
                    "node {i}: key {} / value {} tokens",
                    n.key.len(),
                    n.value.len()
                ));
            }
            if n.lock_ref == 0 {
                ev += n.key.len();
            } else {
                pr += n.key.len();
            }
            let p = &self.nodes[n.parent.index()];
            if !p.children.iter().any(|&(_, c)| c.index() == i) {
                return Err(format!("node {i} missing from its parent's children"));
            }
            if n.lock_ref > 0 && p.parent != NO_PARENT && p.lock_ref == 0 {
                return Err(format!("node {i} locked but its parent is not"));
            }
            let is_leaf = n.lock_ref == 0 && n.children.is_empty();
            if is_leaf != n.leaf_key.is_some() {
                return Err(format!("node {i}: evictable-leaf set out of date"));
            }
            leaves += usize::from(is_leaf);
        }
        if (ev, pr) != (self.evictable_size, self.protected_size) {
            return Err(format!(
                "evictable/protected {}/{} but nodes sum to {ev}/{pr}",
                self.evictable_size, self.protected_size
            ));
        }
        if leaves != self.leaves.len() {
            return Err(format!(
                "{} leaves in the set, {leaves} evictable leaves",
                self.leaves.len()
            ));
        }
        Ok(())
    }
}
