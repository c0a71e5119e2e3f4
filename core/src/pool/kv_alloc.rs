//! KV slot allocator, token-granular (page_size 1) or paged, with SGLang's allocation rules.

use crate::ids::KvSlot;

/// Hands out KV slots page by page. Page 0 (slot 0 when page_size is 1) is the padding dummy and
/// is never handed out. Running short is a value (`false`), never a panic.
#[derive(Clone, Debug)]
pub struct KvAllocator {
    page_size: usize,
    num_pages: usize,
    free_pages: Vec<u32>,
    grouping: bool,
    pending: Vec<u32>,
}

impl KvAllocator {
    /// An allocator for `capacity_tokens` (rounded down to whole pages) in pages of `page_size`.
    pub fn new(capacity_tokens: usize, page_size: usize) -> Self {
        assert!(page_size > 0, "page_size validated by SchedulerConfig");
        let num_pages = capacity_tokens / page_size;
        KvAllocator {
            page_size,
            num_pages,
            // Popping from the end hands out page 1 first.
            free_pages: (1..=num_pages as u32).rev().collect(),
            grouping: false,
            pending: Vec::new(),
        }
    }

    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Usable capacity in tokens (excludes the dummy page).
    pub fn capacity(&self) -> usize {
        self.num_pages * self.page_size
    }

    /// Slots an executor's KV buffer must have (including the dummy page).
    pub fn total_slots(&self) -> usize {
        (self.num_pages + 1) * self.page_size
    }

    /// Free tokens (whole free pages; frees pending in an open group count once it closes).
    pub fn available_size(&self) -> usize {
        self.free_pages.len() * self.page_size
    }

    /// Tokens freed inside an open group, not yet allocatable.
    pub fn pending_size(&self) -> usize {
        self.pending.len() * self.page_size
    }

    /// Pages needed to grow a sequence from `prefix_len` to `prefix_len + n` tokens.
    pub fn pages_needed(&self, prefix_len: usize, n: usize) -> usize {
        if self.page_size == 1 {
            return n;
        }
        (prefix_len + n).div_ceil(self.page_size) - prefix_len.div_ceil(self.page_size)
    }

    /// Tokens that growing by `n` takes from the free pool (whole pages).
    pub fn tokens_needed(&self, prefix_len: usize, n: usize) -> usize {
        self.pages_needed(prefix_len, n) * self.page_size
    }

    /// Allocate slots for positions `prefix_len .. prefix_len + n` of a sequence whose last slot (at
    /// position `prefix_len - 1`) is `last_slot`: first the rest of that partial page, then whole
    /// pages. Appends the slots to `out`; returns false (changing nothing) when pages are short.
    pub fn alloc_extend(
        &mut self,
        prefix_len: usize,
        last_slot: Option<KvSlot>,
        n: usize,
        out: &mut Vec<KvSlot>,
    ) -> bool {
        let pages = self.pages_needed(prefix_len, n);
        if pages > self.free_pages.len() {
            return false;
        }
        let ps = self.page_size;
        if ps == 1 {
            // Token-granular: a page is a slot. Every slot is handed out token by token, so
            // this path avoids the page arithmetic (divisions) of the general one.
            let start = self.free_pages.len() - n;
            out.extend(self.free_pages[start..].iter().rev().map(|&p| KvSlot(p)));
            self.free_pages.truncate(start);
            return true;
        }
        let mut remaining = n;
        let in_page = prefix_len % ps;
        if in_page != 0 && remaining > 0 {
            let last = last_slot
                .expect("a partial last page implies a last slot")
                .0 as usize;
            debug_assert_eq!(
                last % ps,
                in_page - 1,
                "last slot must sit at the position before prefix_len"
            );
            let take = remaining.min(ps - in_page);
            out.extend((1..=take).map(|k| KvSlot((last + k) as u32)));
            remaining -= take;
        }
        for _ in 0..pages {
            let page = self.free_pages.pop().expect("checked above") as usize;
            let take = remaining.min(ps);
            out.extend((0..take).map(|k| KvSlot((page * ps + k) as u32)));
            remaining -= take;
        }
        debug_assert_eq!(remaining, 0);
        true
    }

    /// Free the pages of `slots`. Every run of slots must start at a page boundary (requests free
    /// page-aligned position ranges), so a page is freed when its first slot is seen.
    pub fn free(&mut self, slots: &[KvSlot]) {
        let ps = self.page_size;
        let mut last_page = usize::MAX;
        for s in slots {
            // Token-granular pools (the common case) free every slot: no division.
            let page = if ps == 1 {
                s.0 as usize
            } else {
                s.0 as usize / ps
            };
            if page == last_page {
                continue;
            }
            debug_assert_eq!(
                s.0 as usize % ps,
                0,
                "freeing a page from its middle: slot {}",
                s.0
            );
            debug_assert!(page != 0, "freeing the dummy page");
            if self.grouping {
                self.pending.push(page as u32);
            } else {
                self.free_pages.push(page as u32);
            }
            last_page = page;
        }
    }

    /// Start batching frees (SGLang's free_group_begin): they become allocatable at `free_group_end`.
    pub fn free_group_begin(&mut self) {
        self.grouping = true;
    }

    /// Release the batched frees.
    pub fn free_group_end(&mut self) {
        self.grouping = false;
        self.free_pages.append(&mut self.pending);
    }

    /// Which pages are free (indexed by page; frees pending in an open group count), built from
    /// the free lists for invariant checks (O(pool size)): kept as a map it would be written at
    /// every allocation and free. A page listed twice (freed twice), the dummy page or a page
    /// past the pool is an error.
    pub fn free_page_map(&self) -> Result<Vec<bool>, String> {
        let mut free = vec![false; self.num_pages + 1];
        for &p in self.free_pages.iter().chain(&self.pending) {
            let p = p as usize;
            if p == 0 || p > self.num_pages {
                return Err(format!(
                    "free list holds page {p} of 1..={}",
                    self.num_pages
                ));
            }
            if std::mem::replace(&mut free[p], true) {
                return Err(format!("page {p} is on the free list twice (freed twice)"));
            }
        }
        Ok(free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_page_map_marks_listed_and_pending_pages_and_catches_a_double_free() {
        let mut a = KvAllocator::new(8, 2);
        let mut out = Vec::new();
        assert!(a.alloc_extend(0, None, 6, &mut out));
        assert_eq!(
            a.free_page_map().unwrap(),
            [false, false, false, false, true]
        );
        a.free_group_begin();
        a.free(&out[..2]);
        assert_eq!(
            a.free_page_map().unwrap(),
            [false, true, false, false, true]
        );
        a.free_group_end();
        a.free(&out[..2]);
        let err = a.free_page_map().unwrap_err();
        assert!(err.contains("page 1") && err.contains("twice"), "{err}");
    }

    #[test]
    fn token_allocator_skips_dummy_slot_and_fails_as_a_value() {
        let mut a = KvAllocator::new(4, 1);
        let mut out = Vec::new();
        assert!(a.alloc_extend(0, None, 3, &mut out));
        assert_eq!(out, vec![KvSlot(1), KvSlot(2), KvSlot(3)]);
        assert!(!a.alloc_extend(3, Some(KvSlot(3)), 2, &mut out));
        assert_eq!(out.len(), 3, "failed allocation changes nothing");
        assert_eq!(a.available_size(), 1);
        a.free(&out[..2]);
        assert_eq!(a.available_size(), 3);
    }

    #[test]
    fn paged_extend_fills_partial_page_then_whole_pages() {
        let mut a = KvAllocator::new(64, 4);
        let mut out = Vec::new();
        assert!(a.alloc_extend(0, None, 6, &mut out)); // pages 1, 2
        assert_eq!(
            out.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![4, 5, 6, 7, 8, 9]
        );
        let mut more = Vec::new();
        assert_eq!(a.pages_needed(6, 5), 1);
        assert!(a.alloc_extend(6, Some(KvSlot(9)), 5, &mut more));
        assert_eq!(
            more.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![10, 11, 12, 13, 14]
        );
        // Decode inside a page takes no new page; at a boundary it takes one.
        assert_eq!(a.pages_needed(10, 1), 0);
        assert_eq!(a.pages_needed(12, 1), 1);
    }

    #[test]
    fn free_group_defers_reuse_until_end() {
        let mut a = KvAllocator::new(8, 2);
        let mut out = Vec::new();
        assert!(a.alloc_extend(0, None, 8, &mut out));
        a.free_group_begin();
        a.free(&out[..4]);
        assert_eq!((a.available_size(), a.pending_size()), (0, 4));
        let mut o2 = Vec::new();
        assert!(!a.alloc_extend(0, None, 2, &mut o2));
        a.free_group_end();
        assert!(a.alloc_extend(0, None, 2, &mut o2));
    }
}
