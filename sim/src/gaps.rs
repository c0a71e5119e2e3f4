//! Inter-token gaps in bounded memory: exact values, stored as sorted (value, count) runs.
//!
//! Gaps repeat (every request in a decode batch sees the same step), so the runs grow with the
//! number of steps, not of tokens; new gaps go to a fixed buffer that is merged when full, so
//! recording a token never allocates. The buffer holds runs too: the tokens of one step arrive
//! one after another with the same gap, so a step adds a run or a few, not a value per token,
//! and merging sorts that much less.

/// A multiset of gaps in nanoseconds with exact percentiles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gaps {
    buf: Vec<(u64, u64)>,
    runs: Vec<(u64, u64)>,
    count: u64,
    sum: u128,
}

const BUF: usize = 1 << 13;

impl Gaps {
    /// An empty set.
    pub fn new() -> Gaps {
        Gaps {
            buf: Vec::with_capacity(BUF),
            ..Default::default()
        }
    }

    /// Record one gap.
    pub fn push(&mut self, g: u64) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(BUF);
        }
        self.count += 1;
        self.sum += g as u128;
        match self.buf.last_mut() {
            Some((v, c)) if *v == g => *c += 1,
            _ => {
                self.buf.push((g, 1));
                if self.buf.len() == BUF {
                    self.flush();
                }
            }
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.buf.sort_unstable();
        let mut merged = Vec::with_capacity(self.runs.len() + 64);
        let mut a = self.runs.iter().copied().peekable();
        let mut b = self.buf.iter().copied().peekable();
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&x), Some(&y)) if x.0 <= y.0 => {
                    a.next();
                    x
                }
                (_, Some(&y)) => {
                    b.next();
                    y
                }
                (Some(&x), None) => {
                    a.next();
                    x
                }
                (None, None) => break,
            };
            match merged.last_mut() {
                Some((v, c)) if *v == next.0 => *c += next.1,
                _ => merged.push(next),
            }
        }
        self.runs = merged;
        self.buf.clear();
    }

    /// Add every gap of `other` (several replicas' clients, merged into one set).
    pub fn absorb(&mut self, other: &Gaps) {
        let mut other = other.clone();
        other.flush();
        self.flush();
        let mut merged = Vec::with_capacity(self.runs.len() + other.runs.len());
        let (mut a, mut b) = (self.runs.iter().peekable(), other.runs.iter().peekable());
        while let Some(&next) = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
            (_, Some(_)) => b.next(),
            _ => a.next(),
        } {
            match merged.last_mut() {
                Some((v, c)) if *v == next.0 => *c += next.1,
                _ => merged.push(next),
            }
        }
        self.runs = merged;
        self.count += other.count;
        self.sum += other.sum;
    }

    /// Number of gaps.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean gap (ns).
    pub fn mean(&mut self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    fn nth(&self, k: u64) -> u64 {
        let mut seen = 0;
        for &(v, c) in &self.runs {
            seen += c;
            if k < seen {
                return v;
            }
        }
        self.runs.last().map(|r| r.0).unwrap_or(0)
    }

    /// Percentile with linear interpolation between closest ranks (numpy's default), in ns.
    pub fn percentile(&mut self, p: f64) -> f64 {
        self.flush();
        if self.count == 0 {
            return 0.0;
        }
        let rank = p / 100.0 * (self.count - 1) as f64;
        let (lo, hi) = (rank.floor() as u64, rank.ceil() as u64);
        let (a, b) = (self.nth(lo) as f64, self.nth(hi) as f64);
        a + (b - a) * (rank - lo as f64)
    }

    /// Largest gap (ns).
    pub fn max(&mut self) -> u64 {
        self.flush();
        self.runs.last().map(|r| r.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::percentile;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_sorting_everything() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut g = Gaps::new();
        let mut all = Vec::new();
        // More than one buffer's worth, with many repeats.
        for _ in 0..(3 * BUF + 123) {
            let v = rng.gen_range(0..5000u64) * 1000;
            g.push(v);
            all.push(v as f64);
        }
        all.sort_by(f64::total_cmp);
        for p in [0.0, 50.0, 90.0, 95.0, 99.0, 100.0] {
            assert_eq!(g.percentile(p), percentile(&all, p), "p{p}");
        }
        assert_eq!(g.max() as f64, *all.last().unwrap());
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        assert!((g.mean() - mean).abs() < 1e-6);
        assert_eq!(g.count(), all.len() as u64);
        assert!(g.runs.len() <= 5000);
    }

    #[test]
    fn runs_of_equal_gaps_count_every_gap() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut g = Gaps::new();
        let mut all = Vec::new();
        while all.len() < 2 * BUF * 40 {
            let v = rng.gen_range(0..300u64);
            for _ in 0..rng.gen_range(1..80) {
                g.push(v);
                all.push(v as f64);
            }
        }
        all.sort_by(f64::total_cmp);
        for p in [0.0, 10.0, 50.0, 99.0, 100.0] {
            assert_eq!(g.percentile(p), percentile(&all, p), "p{p}");
        }
        assert_eq!(g.count(), all.len() as u64);
    }

    #[test]
    fn empty_is_zero() {
        let mut g = Gaps::default();
        assert_eq!((g.percentile(50.0), g.max(), g.mean()), (0.0, 0, 0.0));
        g.push(7);
        assert_eq!((g.percentile(99.0), g.max()), (7.0, 7));
    }

    #[test]
    fn absorbing_two_sets_equals_pushing_both_into_one() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (mut a, mut b, mut both) = (Gaps::new(), Gaps::new(), Gaps::new());
        for k in 0..(BUF + 77) {
            let v = rng.gen_range(0..3000u64) * 10;
            if k % 3 == 0 {
                a.push(v)
            } else {
                b.push(v)
            }
            both.push(v);
        }
        a.absorb(&b);
        assert_eq!(a.count(), both.count());
        for p in [0.0, 50.0, 99.0, 100.0] {
            assert_eq!(a.percentile(p), both.percentile(p), "p{p}");
        }
        assert_eq!(a.mean(), both.mean());
    }
}
