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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EvictionPolicy;
    use crate::ids::KvSlot;
    use rand::SeedableRng;

    fn cand(handle: u32, arrival: u64, priority: i64, max_new: usize, prefix: usize) -> Candidate {
        Candidate {
            handle,
            arrival,
            seq: handle as u64,
            priority,
            max_new_tokens: max_new,
            prefix_len: prefix,
            node: NodeId(0),
        }
    }

    fn handles(c: &[Candidate]) -> Vec<u32> {
        c.iter().map(|c| c.handle).collect()
    }

    fn queue() -> Vec<Candidate> {
        vec![
            cand(0, 5, 0, 10, 3),
            cand(1, 1, 2, 30, 9),
            cand(2, 3, 2, 20, 9),
            cand(3, 1, -1, 40, 0),
        ]
    }

    #[test]
    fn simple_policies_order_hand_made_queues() {
        let tree = RadixCache::new(1, EvictionPolicy::Lru);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let run = |p: Policy, rng: &mut ChaCha8Rng| {
            let mut q = queue();
            order(p, &mut q, &tree, rng);
            handles(&q)
        };
        assert_eq!(run(Policy::Fcfs, &mut rng), vec![1, 3, 2, 0]);
        assert_eq!(
            run(Policy::Lpm, &mut rng),
            vec![1, 2, 0, 3],
            "stable among equal prefixes"
        );
        assert_eq!(run(Policy::Lof, &mut rng), vec![3, 1, 2, 0]);
        assert_eq!(run(Policy::Priority, &mut rng), vec![1, 2, 0, 3]);
        let a = run(Policy::Random, &mut ChaCha8Rng::seed_from_u64(7));
        let b = run(Policy::Random, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(a, b, "seeded");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
    }

    #[test]
    fn dfs_weight_visits_heavier_subtrees_first_and_parents_after_children() {
        let mut t = RadixCache::new(1, EvictionPolicy::Lru);
        let z = [KvSlot(1); 8];
        t.insert(None, &[1, 2, 3], &z[..3], 0);
        t.insert(None, &[1, 2, 4], &z[..3], 0);
        t.insert(None, &[5, 6], &z[..2], 0);
        let a = t.match_prefix(None, &[1, 2, 3], None).node;
        let b = t.match_prefix(None, &[1, 2, 4], None).node;
        let c = t.match_prefix(None, &[5, 6], None).node;
        let ab = t.match_prefix(None, &[1, 2], None).node;
        let mut q = vec![
            Candidate {
                node: c,
                ..cand(4, 0, 0, 1, 2)
            },
            Candidate {
                node: a,
                ..cand(1, 0, 0, 1, 3)
            },
            Candidate {
                node: b,
                ..cand(2, 0, 0, 1, 3)
            },
            Candidate {
                node: ab,
                ..cand(5, 0, 0, 1, 2)
            },
            Candidate {
                node: b,
                ..cand(3, 0, 0, 1, 3)
            },
        ];
        order(
            Policy::DfsWeight,
            &mut q,
            &t,
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        // [1,2] weighs 4 (B: 2, A: 1, itself: 1) and goes before [5,6] (1).
        assert_eq!(handles(&q), vec![2, 3, 1, 5, 4]);
    }
}
