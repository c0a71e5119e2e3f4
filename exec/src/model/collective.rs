//! Collectives between the ranks of a tensor-parallel group: the seam where the CPU path uses
//! memory shared by threads and the CUDA path will use NCCL.

use std::sync::{Arc, Barrier, Mutex, MutexGuard};

/// The two collectives a sharded forward pass needs, called by every rank in the same order.
pub trait Collective {
    /// Replace `buf` by the element-wise sum of every rank's `buf`.
    fn all_reduce(&self, buf: &mut [f32]);
    /// Rank 0 gets, in `out`, each of the `rows` rows of every rank's `part` side by side in rank
    /// order (a row of rank r is `part.len() / rows` wide); other ranks leave `out` untouched.
    fn gather_cols(&self, part: &[f32], rows: usize, out: &mut Vec<f32>);
}

/// A group of one: nothing to exchange.
pub struct Solo;

impl Collective for Solo {
    fn all_reduce(&self, _buf: &mut [f32]) {}

    fn gather_cols(&self, part: &[f32], _rows: usize, out: &mut Vec<f32>) {
        out.extend_from_slice(part);
    }
}

/// Buffers shared by the threads of one group.
struct Shared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

/// One rank's handle on an in-memory group of threads. Sums run in rank order 0, 1, .. on
/// every rank, so results are deterministic and identical on all ranks.
pub struct ThreadGroup {
    shared: Arc<Shared>,
    rank: usize,
}

impl ThreadGroup {
    /// Handles for ranks 0..size, one per worker thread.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![Vec::new(); size]),
            barrier: Barrier::new(size),
        });
        (0..size)
            .map(|rank| ThreadGroup {
                shared: shared.clone(),
                rank,
            })
            .collect()
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Vec<f32>>> {
        // A poisoned lock means another rank panicked mid-copy; the data is plain floats.
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, data: &[f32]) {
        {
            let mut s = self.slots();
            s[self.rank].clear();
            s[self.rank].extend_from_slice(data);
        }
        self.shared.barrier.wait();
    }
}

impl Collective for ThreadGroup {
    fn all_reduce(&self, buf: &mut [f32]) {
        self.publish(buf);
        {
            let s = self.slots();
            buf.copy_from_slice(&s[0]);
            for part in &s[1..] {
                for (b, p) in buf.iter_mut().zip(part) {
                    *b += p;
                }
            }
        }
        // Nobody publishes the next collective's data before everyone has read this one's.
        self.shared.barrier.wait();
    }

    fn gather_cols(&self, part: &[f32], rows: usize, out: &mut Vec<f32>) {
        self.publish(part);
        if self.rank == 0 && rows > 0 {
            let s = self.slots();
            for t in 0..rows {
                for p in s.iter() {
                    let w = p.len() / rows;
                    out.extend_from_slice(&p[t * w..(t + 1) * w]);
                }
            }
        }
        self.shared.barrier.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(size: usize, f: impl Fn(usize, &ThreadGroup) -> Vec<f32> + Sync) -> Vec<Vec<f32>> {
        let groups = ThreadGroup::new(size);
        std::thread::scope(|s| {
            let hs: Vec<_> = groups
                .iter()
                .enumerate()
                .map(|(r, g)| {
                    let f = &f;
                    s.spawn(move || f(r, g))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_gives_every_rank_the_same_rank_ordered_sum() {
        let out = run(3, |r, g| {
            let mut b = vec![r as f32, 1.0, 0.1 * r as f32];
            g.all_reduce(&mut b);
            g.all_reduce(&mut b); // twice: the second sees the first's result on every rank
            b
        });
        let once = [3.0f32, 3.0, (0.0 + 0.1) + 0.2];
        let twice: Vec<f32> = once.iter().map(|v| (v + v) + v).collect();
        assert!(out.iter().all(|b| *b == twice), "{out:?}");
    }

    #[test]
    fn gather_cols_puts_rank_parts_side_by_side_on_rank_0() {
        let out = run(2, |r, g| {
            // rank 0: 2 rows of width 2; rank 1: 2 rows of width 1.
            let part: Vec<f32> = if r == 0 {
                vec![1.0, 2.0, 3.0, 4.0]
            } else {
                vec![9.0, 8.0]
            };
            let mut o = Vec::new();
            g.gather_cols(&part, 2, &mut o);
            o
        });
        assert_eq!(out[0], vec![1.0, 2.0, 9.0, 3.0, 4.0, 8.0]);
        assert!(out[1].is_empty());
    }
}
