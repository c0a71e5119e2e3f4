use super::*;

fn slots(range: std::ops::Range<u32>) -> Vec<KvSlot> {
    range.map(KvSlot).collect()
}

#[test]
fn match_splits_a_node_partway_and_returns_its_slots() {
    let mut t = RadixCache::new(1, EvictionPolicy::Lru);
    assert_eq!(t.insert(None, &[1, 2, 3, 4], &slots(10..14), 0), 0);
    let mut out = Vec::new();
    let m = t.match_prefix(None, &[1, 2, 9], Some(&mut out));
    assert_eq!(m.len, 2);
    assert_eq!(out, slots(10..12));
    assert_eq!(t.num_nodes(), 3, "root, [1,2], [3,4]");
    // Inserting a longer sequence reports the cached part.
    assert_eq!(t.insert(None, &[1, 2, 3, 4, 5], &slots(20..25), 0), 4);
    t.check().unwrap();
}

#[test]
fn paged_match_is_page_aligned_and_distinguishes_pages_with_the_same_first_token() {
    let mut t = RadixCache::new(2, EvictionPolicy::Lru);
    t.insert(None, &[1, 2, 3, 4], &slots(10..14), 0);
    t.insert(None, &[1, 5, 6, 7], &slots(20..24), 0);
    let mut out = Vec::new();
    // Matches [1,2] then [3,?]: only whole pages count.
    assert_eq!(t.match_prefix(None, &[1, 2, 3, 9], Some(&mut out)).len, 2);
    assert_eq!(out, slots(10..12));
    assert_eq!(t.match_prefix(None, &[1, 5, 6, 7, 8], None).len, 4);
    t.check().unwrap();
}

#[test]
fn namespaces_never_share_nodes() {
    let mut t = RadixCache::new(1, EvictionPolicy::Lru);
    t.insert(Some(7), &[1, 2, 3], &slots(10..13), 0);
    assert_eq!(t.match_prefix(None, &[1, 2, 3], None).len, 0);
    assert_eq!(t.match_prefix(Some(8), &[1, 2, 3], None).len, 0);
    assert_eq!(t.match_prefix(Some(7), &[1, 2, 3], None).len, 3);
}

#[test]
fn locked_nodes_are_protected_and_never_evicted() {
    let mut alloc = KvAllocator::new(100, 1);
    let mut a = Vec::new();
    assert!(alloc.alloc_extend(0, None, 6, &mut a));
    let mut t = RadixCache::new(1, EvictionPolicy::Lru);
    t.insert(None, &[1, 2, 3], &a[..3], 0);
    t.insert(None, &[4, 5, 6], &a[3..], 0);
    let m = t.match_prefix(None, &[1, 2, 3], None);
    t.inc_lock_ref(m.node);
    assert_eq!((t.evictable_size(), t.protected_size()), (3, 3));
    assert_eq!(t.evict(100, &mut alloc), 3, "only the unlocked branch goes");
    assert_eq!(t.match_prefix(None, &[1, 2, 3], None).len, 3);
    t.dec_lock_ref(m.node);
    assert_eq!(t.evict(1, &mut alloc), 3);
    assert_eq!(alloc.available_size(), 100);
    t.check().unwrap();
}

fn evict_order(policy: EvictionPolicy) -> Vec<u32> {
    let mut alloc = KvAllocator::new(100, 1);
    let mut t = RadixCache::new(1, policy);
    let mut a = Vec::new();
    assert!(alloc.alloc_extend(0, None, 3, &mut a));
    // Created in order 1, 2, 3; accessed 3, 1 (so LRU order is 2, 3, 1); 1 is hit twice.
    for (i, k) in [1u32, 2, 3].iter().enumerate() {
        t.insert(None, &[*k], &a[i..i + 1], i64::from(*k == 2) * 5);
    }
    // Accessed 3 then 1; admissions hit 1 twice and 3 once.
    let n3 = t.match_prefix(None, &[3], None).node;
    t.record_hit(n3);
    let n1 = t.match_prefix(None, &[1], None).node;
    t.record_hit(n1);
    t.record_hit(n1);
    let mut order = Vec::new();
    while t.evictable_size() > 0 {
        let before: Vec<u32> = [1, 2, 3]
            .into_iter()
            .filter(|&k| t.match_prefix_peek(k))
            .collect();
        t.evict(1, &mut alloc);
        let after: Vec<u32> = [1, 2, 3]
            .into_iter()
            .filter(|&k| t.match_prefix_peek(k))
            .collect();
        order.extend(before.into_iter().filter(|k| !after.contains(k)));
    }
    order
}

impl RadixCache {
    /// Whether a one-token key is cached, without touching access times.
    fn match_prefix_peek(&self, k: u32) -> bool {
        self.find_child(ROOT, &[k]).is_some()
    }
}

#[test]
fn eviction_policies_pick_their_victims_in_order() {
    assert_eq!(evict_order(EvictionPolicy::Lru), vec![2, 3, 1]);
    assert_eq!(evict_order(EvictionPolicy::Mru), vec![1, 3, 2]);
    assert_eq!(evict_order(EvictionPolicy::Fifo), vec![1, 2, 3]);
    assert_eq!(evict_order(EvictionPolicy::Filo), vec![3, 2, 1]);
    // LFU: hits 1 -> 2, 3 -> 1, 2 -> 0.
    assert_eq!(evict_order(EvictionPolicy::Lfu), vec![2, 3, 1]);
    // Priority: 2 has priority 5, the others 0 (then LRU: 3 before 1).
    assert_eq!(evict_order(EvictionPolicy::Priority), vec![3, 1, 2]);
}

#[test]
fn lfu_counts_hits_so_a_hot_old_prefix_outlives_a_cold_recent_one() {
    let mut alloc = KvAllocator::new(100, 1);
    let mut t = RadixCache::new(1, EvictionPolicy::Lfu);
    let mut a = Vec::new();
    assert!(alloc.alloc_extend(0, None, 2, &mut a));
    t.insert(None, &[1], &a[..1], 0);
    for _ in 0..5 {
        let n = t.match_prefix(None, &[1], None).node;
        t.record_hit(n);
    }
    t.insert(None, &[2], &a[1..], 0);
    let n = t.match_prefix(None, &[2], None).node;
    t.record_hit(n);
    t.evict(1, &mut alloc);
    assert!(t.match_prefix_peek(1) && !t.match_prefix_peek(2));
}

#[test]
fn eviction_frees_exactly_what_it_reports_and_frees_parents_that_become_leaves() {
    let mut alloc = KvAllocator::new(100, 1);
    let mut a = Vec::new();
    assert!(alloc.alloc_extend(0, None, 8, &mut a));
    let mut t = RadixCache::new(1, EvictionPolicy::Lru);
    t.insert(None, &[1, 2, 3, 4], &a[..4], 0);
    t.insert(None, &[1, 2, 7, 8], &[a[0], a[1], a[4], a[5]], 0);
    alloc.free(&a[6..]);
    let before = alloc.available_size();
    let freed = t.evict(100, &mut alloc);
    assert_eq!(freed, 6);
    assert_eq!(alloc.available_size() - before, freed);
    assert_eq!(t.num_nodes(), 1);
    t.check().unwrap();
}
