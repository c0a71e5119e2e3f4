//! Constraints for a backend whose tokens mean nothing (the simulator): [`Synthesized`] wraps it
//! and redraws each constrained request's token among those its grammar allows, so a simulated
//! server still answers schema-valid JSON.

use super::{mask_words, TokenMatcher};
use doppel_core::{Backend, Plan, RequestId, StepResult, TimeNs, TokenId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// `inner` with constrained tokens drawn uniformly (seeded by request and output index) from
/// the grammar's mask of width `vocab`.
pub struct Synthesized<B> {
    /// The wrapped backend.
    pub inner: B,
    vocab: usize,
    matchers: HashMap<RequestId, TokenMatcher>,
    mask: Vec<u32>,
}

impl<B> Synthesized<B> {
    /// Wrap `inner`, whose tokens are below `vocab`.
    pub fn new(inner: B, vocab: usize) -> Synthesized<B> {
        Synthesized {
            inner,
            vocab,
            matchers: HashMap::new(),
            mask: vec![0; mask_words(vocab)],
        }
    }

    fn draw(&mut self, id: RequestId, index: usize) -> Option<TokenId> {
        let m = self.matchers.get_mut(&id)?;
        m.fill_mask(&mut self.mask);
        let allowed: u32 = self.mask.iter().map(|w| w.count_ones()).sum();
        if allowed == 0 {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(id.0);
        rng.set_stream(index as u64);
        let mut k = rng.gen_range(0..allowed);
        for (w, &bits) in self.mask.iter().enumerate() {
            let n = bits.count_ones();
            if k < n {
                let mut b = bits;
                for _ in 0..k {
                    b &= b - 1;
                }
                return Some((w * 32) as TokenId + b.trailing_zeros());
            }
            k -= n;
        }
        None
    }
}

impl<B: Backend> Backend for Synthesized<B> {
    type Error = B::Error;

    fn launch(&mut self, plan: &Plan, now: TimeNs) -> Result<(), Self::Error> {
        for id in &plan.released {
            self.matchers.remove(id);
        }
        for e in &plan.entries {
            if let (Some(h), false) = (&e.sampling.constraint, self.matchers.contains_key(&e.id)) {
                if let Some(m) = TokenMatcher::open(h) {
                    self.matchers.insert(e.id, m);
                }
            }
        }
        self.inner.launch(plan, now)
    }

    fn collect(&mut self, plan: &Plan, out: &mut StepResult) -> Result<(), Self::Error> {
        self.inner.collect(plan, out)?;
        for (i, e) in plan.entries.iter().enumerate() {
            if !e.need_logits || e.sampling.constraint.is_none() || i >= out.tokens.len() {
                continue;
            }
            let index = e.seq_len() - e.prompt_len.min(e.seq_len());
            if let Some(t) = self.draw(e.id, index) {
                out.tokens[i] = t.min(self.vocab as TokenId - 1);
                if let Some(m) = self.matchers.get_mut(&e.id) {
                    let _ = m.advance(index, out.tokens[i]);
                }
            }
        }
        Ok(())
    }

    fn set_tuning(&mut self, on: bool) {
        self.inner.set_tuning(on);
    }
}
