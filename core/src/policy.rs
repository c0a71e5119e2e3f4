//! Waiting-queue policies: orderings of candidate requests (pure functions over plain data).

use crate::config::Policy;
use crate::ids::{NodeId, TimeNs};
use crate::radix::RadixCache;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// What a policy may look at for one waiting request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the request in the caller's storage (returned in order).
    pub handle: u32,
    /// Arrival time.
    pub arrival: TimeNs,
    /// Submission sequence number (FCFS tie-break).
    pub seq: u64,
    /// Priority (larger first under the priority policy).
    pub priority: i64,
    /// max_new_tokens.
    pub max_new_tokens: usize,
    /// Cached prefix length (lpm, dfs-weight).
    pub prefix_len: usize,
    /// Deepest matched node (dfs-weight).
    pub node: NodeId,
}

/// Order `cands` in place by `policy` (cache-aware policies need prefix_len / node filled in).
pub fn order(policy: Policy, cands: &mut [Candidate], tree: &RadixCache, rng: &mut ChaCha8Rng) {
    match policy {
        Policy::Fcfs => cands.sort_by_key(|c| (c.arrival, c.seq)),
        Policy::Lpm => cands.sort_by_key(|c| std::cmp::Reverse(c.prefix_len)),
        Policy::Lof => cands.sort_by_key(|c| std::cmp::Reverse(c.max_new_tokens)),
        Policy::Priority => {
            cands.sort_by_key(|c| (std::cmp::Reverse(c.priority), c.arrival, c.seq))
        }
        Policy::Random => cands.shuffle(rng),
        Policy::DfsWeight => dfs_weight(cands, tree),
    }
}

/// SGLang's dfs-weight: a node's weight is the number of waiting requests whose matched node lies
/// in its subtree; visit children heaviest first (ties: child order by first token), emitting a
/// node's own requests after its children's. Only weighted nodes are visited.
fn dfs_weight(cands: &mut [Candidate], tree: &RadixCache) {
    let mut weight: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut own: BTreeMap<NodeId, Vec<Candidate>> = BTreeMap::new();
    for c in cands.iter() {
        own.entry(c.node).or_default().push(*c);
        let mut n = Some(c.node);
        while let Some(id) = n {
            *weight.entry(id).or_default() += 1;
            n = tree.parent(id);
        }
    }
    // Weighted children of each weighted node, in the tree's child order.
    let mut kids: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
    let mut roots = Vec::new();
    for &id in weight.keys() {
        match tree.parent(id) {
            Some(p) => kids.entry(p).or_default().push(id),
            None => roots.push(id),
        }
    }
    for list in kids.values_mut() {
        // Ties keep the tree's child order (first token, then node id).
        list.sort_by_key(|c| (std::cmp::Reverse(weight[c]), tree.first_token(*c), *c));
    }
    let mut out = Vec::with_capacity(cands.len());
    let mut stack: Vec<(NodeId, bool)> = roots.into_iter().rev().map(|r| (r, false)).collect();
    while let Some((id, expanded)) = stack.pop() {
        if expanded {
            if let Some(reqs) = own.get(&id) {
                out.extend_from_slice(reqs);
            }
            continue;
        }
        stack.push((id, true));
        if let Some(list) = kids.get(&id) {
            stack.extend(list.iter().rev().map(|&c| (c, false)));
        }
    }
    debug_assert_eq!(out.len(), cands.len());
    cands.copy_from_slice(&out);
}
