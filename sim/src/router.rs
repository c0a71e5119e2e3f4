//! A router in front of several replicas, as sglang-router places requests: round robin, or
//! cache-aware (the worker whose approximate prefix tree matches the prompt best, with a
//! load-balance fallback). Routing is decided per request before the replicas run, so each
//! replica replays its share as a workload of its own (`Expanded::subset`).

use crate::workload::{Expanded, Start};
use doppel_core::TimeNs;
use std::collections::{BinaryHeap, HashSet};

/// How the router picks a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Router {
    /// Each new conversation to the next replica in turn.
    RoundRobin,
    /// sglang-router's `cache_aware` policy with its default thresholds.
    CacheAware,
}

impl Router {
    /// Every router, in a fixed order.
    pub const ALL: [Router; 2] = [Router::RoundRobin, Router::CacheAware];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Router::RoundRobin => "round-robin",
            Router::CacheAware => "cache-aware",
        }
    }

    /// Parse a command-line name.
    pub fn parse(s: &str) -> Option<Router> {
        Router::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// sglang-router's cache-aware defaults: the share of the prompt a worker's tree must match
/// to win on cache, and the in-flight imbalance (absolute and relative) past which the
/// least-loaded worker wins instead.
const CACHE_THRESHOLD: f64 = 0.3;
const BALANCE_ABS: usize = 64;
const BALANCE_REL: f64 = 1.5;
/// Tokens per node of the router's approximate tree (sglang-router matches characters; a
/// block of tokens keeps the sets small and matches the same shared prefixes).
const BLOCK: usize = 16;

/// Chained hashes of a prompt's full blocks: entry k stands for its first (k + 1) blocks.
fn block_hashes(prompt: &[u32]) -> Vec<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    prompt
        .chunks_exact(BLOCK)
        .map(|b| {
            for &t in b {
                h = (h ^ t as u64).wrapping_mul(0x0100_0000_01b3);
            }
            h
        })
        .collect()
}

/// The replica of every request of `work` among `replicas`. A follow-up turn goes where the
/// turn it continues went (its prompt starts with that conversation). `estimate` gives each
/// request's (send, finish) times from an earlier pass: the cache-aware router's in-flight
/// counts come from it (without one it balances on cache and tree size only).
pub fn route(
    work: &Expanded,
    replicas: usize,
    router: Router,
    estimate: Option<&[(TimeNs, TimeNs)]>,
) -> Vec<usize> {
    let n = work.requests.len();
    let replicas = replicas.max(1);
    let mut to = vec![0usize; n];
    if replicas == 1 {
        return to;
    }
    let follows = |i: usize| match work.requests[i].start {
        Start::After { prev, .. } => Some(prev),
        Start::At(_) => None,
    };
    if router == Router::RoundRobin {
        let mut next = 0;
        for i in 0..n {
            to[i] = match follows(i) {
                Some(prev) => to[prev],
                None => {
                    next += 1;
                    (next - 1) % replicas
                }
            };
        }
        return to;
    }
    let mut prompts = work.clone();
    let hashes: Vec<Vec<u64>> = (0..n)
        .map(|i| block_hashes(&prompts.build_prompt(i).unwrap_or_default()))
        .collect();
    // Requests in the order the router sees them (by estimated send time).
    let send = |i: usize| match (estimate, work.requests[i].start) {
        (Some(e), _) => e[i].0,
        (None, Start::At(t)) => t,
        (None, Start::After { .. }) => TimeNs::MAX,
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (send(i), i));
    let mut trees: Vec<HashSet<u64>> = vec![HashSet::new(); replicas];
    // Per replica, the estimated finish times of its requests in flight.
    let mut inflight: Vec<BinaryHeap<std::cmp::Reverse<TimeNs>>> =
        vec![BinaryHeap::new(); replicas];
    for i in order {
        let now = send(i);
        for q in inflight.iter_mut() {
            while q.peek().is_some_and(|f| f.0 <= now) {
                q.pop();
            }
        }
        let load: Vec<usize> = inflight.iter().map(|q| q.len()).collect();
        let w = match follows(i) {
            Some(prev) => to[prev],
            None => pick(&trees, &load, &hashes[i], work.requests[i].prompt_len),
        };
        to[i] = w;
        trees[w].extend(hashes[i].iter().copied());
        if let Some(e) = estimate {
            inflight[w].push(std::cmp::Reverse(e[i].1));
        }
    }
    to
}

/// sglang-router's cache-aware choice for one prompt.
fn pick(trees: &[HashSet<u64>], load: &[usize], hashes: &[u64], len: usize) -> usize {
    let argmin = |key: &dyn Fn(usize) -> usize| (0..trees.len()).min_by_key(|&w| (key(w), w));
    let (max, min) = (
        load.iter().copied().max().unwrap_or(0),
        load.iter().copied().min().unwrap_or(0),
    );
    if max.saturating_sub(min) > BALANCE_ABS && max as f64 > min as f64 * BALANCE_REL {
        return argmin(&|w| load[w]).unwrap_or(0);
    }
    let matched = |w: usize| hashes.iter().take_while(|h| trees[w].contains(h)).count();
    let best = (0..trees.len())
        .max_by_key(|&w| (matched(w), std::cmp::Reverse(w)))
        .unwrap_or(0);
    if (matched(best) * BLOCK) as f64 > CACHE_THRESHOLD * len.max(1) as f64 {
        best
    } else {
        argmin(&|w| trees[w].len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Trace;
    use crate::workload::expand;

    fn shared_prefix(groups: usize) -> Expanded {
        let text = format!(
            "profile: a100-80g/qwen3-0.6b/sglang\nworkload: {{kind: shared_prefix, num_groups: {groups}, prompts_per_group: 8, system_prompt_len: 512, question_len: 32, output_len: 8}}\n"
        );
        expand(&Trace::parse(&text, "t.yaml").unwrap(), 151936)
    }

    #[test]
    fn round_robin_cycles_and_cache_aware_keeps_each_system_prompt_on_one_replica() {
        let work = shared_prefix(4);
        let rr = route(&work, 3, Router::RoundRobin, None);
        assert!(rr.iter().enumerate().all(|(i, &w)| w == i % 3));
        let ca = route(&work, 2, Router::CacheAware, None);
        let group = |i: usize| match work.requests[i].prompt {
            crate::workload::PromptSpec::Random { group, .. } => group,
            _ => None,
        };
        for i in 0..work.requests.len() {
            for j in 0..i {
                if group(i) == group(j) {
                    assert_eq!(ca[i], ca[j], "requests {j} and {i} share a prefix");
                }
            }
        }
        // Both replicas get work (a new prefix goes to the smaller tree).
        assert!(ca.contains(&0) && ca.contains(&1));
    }

    #[test]
    fn cache_aware_falls_back_to_the_least_loaded_replica_when_imbalanced() {
        let trees = vec![HashSet::from([1u64, 2]), HashSet::new()];
        // The prompt matches replica 0 wholly, but it has 100 in flight and replica 1 none.
        assert_eq!(pick(&trees, &[100, 0], &[1, 2], 32), 1);
        assert_eq!(pick(&trees, &[10, 0], &[1, 2], 32), 0);
        // No match worth it: the smaller tree.
        assert_eq!(pick(&trees, &[0, 0], &[7, 8], 32), 1);
    }
}
