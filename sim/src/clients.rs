//! Client-side bookkeeping shared by the simulator's driver and the real engine's replay: who is
//! ready to send, the concurrency cap, multi-turn follow-ups, and each request's record.

use crate::driver::{Outcome, ReqRecord, Status};
use crate::workload::{Expanded, Start};
use doppel_core::{FinishInfo, FinishReason, TimeNs};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// The clients of one run. Sends come out as `(time, request index)` pairs appended to the
/// caller's buffer; the caller models the path to the server (HTTP, tokenization) itself.
pub struct Clients {
    ready: BinaryHeap<Reverse<(TimeNs, usize)>>,
    followers: Vec<Vec<(usize, TimeNs)>>,
    blocked: VecDeque<usize>,
    in_flight: usize,
    cap: usize,
    last_token_at: Vec<TimeNs>,
    settled: usize,
}

impl Clients {
    /// Clients for `work`; fills `out.records` with one pending record per request.
    pub fn new(work: &Expanded, out: &mut Outcome) -> Clients {
        let n = work.requests.len();
        out.records = work
            .requests
            .iter()
            .map(|r| ReqRecord {
                send: 0,
                first: 0,
                finish: 0,
                prompt_len: r.prompt_len as u32,
                output_tokens: 0,
                cached_tokens: 0,
                retractions: 0,
                status: Status::Pending,
            })
            .collect();
        let mut ready = BinaryHeap::with_capacity(n);
        let mut followers: Vec<Vec<(usize, TimeNs)>> = vec![Vec::new(); n];
        for (i, r) in work.requests.iter().enumerate() {
            match r.start {
                Start::At(t) => ready.push(Reverse((t, i))),
                Start::After { prev, think_ns } => followers[prev].push((i, think_ns)),
            }
        }
        Clients {
            ready,
            followers,
            blocked: VecDeque::new(),
            in_flight: 0,
            cap: work.max_concurrency.unwrap_or(usize::MAX),
            last_token_at: vec![0; n],
            settled: 0,
        }
    }

    /// Whether request `i` has a follow-up turn.
    pub fn has_followers(&self, i: usize) -> bool {
        !self.followers[i].is_empty()
    }

    /// Earliest time a client wants to send (None when nobody is waiting to).
    pub fn next_ready(&self) -> Option<TimeNs> {
        self.ready.peek().map(|Reverse((t, _))| *t)
    }

    /// Requests finished, refused or aborted so far.
    pub fn settled(&self) -> usize {
        self.settled
    }

    /// Send every request due by `now`, up to the concurrency cap; the rest wait for a slot.
    pub fn send_due(&mut self, now: TimeNs, out: &mut Outcome, sent: &mut Vec<(TimeNs, usize)>) {
        while let Some(&Reverse((t, i))) = self.ready.peek() {
            if t > now {
                break;
            }
            self.ready.pop();
            if self.in_flight < self.cap {
                self.in_flight += 1;
                out.records[i].send = t;
                sent.push((t, i));
            } else {
                self.blocked.push_back(i);
            }
        }
    }

    /// Request `i` was refused at `t`: record it, free its slot, and let the conversation go on
    /// (a follow-up turn is longer and will likely be refused too, which the report then lists).
    pub fn refused(
        &mut self,
        i: usize,
        t: TimeNs,
        why: String,
        out: &mut Outcome,
        sent: &mut Vec<(TimeNs, usize)>,
    ) {
        out.records[i].status = Status::Refused;
        out.records[i].finish = t;
        out.refused.push((i, why));
        self.settle(i, t, out, sent);
    }

    /// Output token `index` of request `i` reached its client at `seen`.
    pub fn token(&mut self, i: usize, index: usize, seen: TimeNs, out: &mut Outcome) {
        let rec = &mut out.records[i];
        if index == 0 || rec.output_tokens == 0 {
            rec.first = seen;
        } else {
            out.itls.push(seen.saturating_sub(self.last_token_at[i]));
        }
        self.last_token_at[i] = seen;
        rec.output_tokens += 1;
        let sec = (seen / 1_000_000_000) as usize;
        if out.tokens_per_sec.len() <= sec {
            out.tokens_per_sec.resize(sec + 1, 0);
        }
        out.tokens_per_sec[sec] += 1;
    }

    /// Request `i` ended and its client saw it at `seen`.
    pub fn finished(
        &mut self,
        info: &FinishInfo,
        seen: TimeNs,
        out: &mut Outcome,
        sent: &mut Vec<(TimeNs, usize)>,
    ) {
        let i = info.id.0 as usize;
        let rec = &mut out.records[i];
        rec.finish = seen.max(self.last_token_at[i]);
        rec.cached_tokens = info.cached_tokens as u32;
        rec.retractions = info.retractions;
        rec.status = match info.reason {
            FinishReason::Abort(_) => Status::Aborted,
            _ => Status::Done,
        };
        let done = rec.finish;
        self.settle(i, done, out, sent);
    }

    /// Free `i`'s slot at `t`: the next blocked request goes, follow-up turns get scheduled.
    fn settle(&mut self, i: usize, t: TimeNs, out: &mut Outcome, sent: &mut Vec<(TimeNs, usize)>) {
        self.settled += 1;
        self.in_flight -= 1;
        if let Some(b) = self.blocked.pop_front() {
            self.in_flight += 1;
            out.records[b].send = t;
            sent.push((t, b));
        }
        for &(f, think) in &self.followers[i] {
            self.ready.push(Reverse((t + think, f)));
        }
    }
}

/// A timestamp as SGLang's log prints it.
pub fn fmt_time(ns: TimeNs) -> String {
    format!("[{:>10.6}s]", ns as f64 * 1e-9)
}
