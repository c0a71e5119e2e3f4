//! Per-step batch statistics and SGLang-style batch log lines (pure formatting).

use crate::plan::ForwardMode;

/// Figures of one step, as SGLang's scheduler logs them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Kind of pass.
    pub mode: ForwardMode,
    /// Requests in the batch (extend + decode entries).
    pub batch_size: usize,
    /// Requests admitted to prefill in this step (including a continued chunk).
    pub new_seqs: usize,
    /// Tokens computed for prefill entries.
    pub new_tokens: usize,
    /// Prefix tokens of prefill entries found in the cache.
    pub cached_tokens: usize,
    /// Decode entries.
    pub decode_reqs: usize,
    /// Running requests before this step's new ones join.
    pub running_reqs: usize,
    /// Requests left waiting.
    pub queue_reqs: usize,
    /// KV tokens in use (capacity - free - evictable).
    pub used_tokens: usize,
    /// KV pool capacity in tokens.
    pub capacity_tokens: usize,
    /// Requests retracted while forming this step.
    pub retracted: usize,
    /// Tokens evicted from the radix cache while forming this step.
    pub evicted_tokens: usize,
    /// Whether a chunked request is still unfinished after this step.
    pub has_chunked: bool,
    /// Sum over entries of the KV length attended (for cost models).
    pub kv_tokens: usize,
    /// new_token_ratio after this step was formed.
    pub new_token_ratio: f64,
}

impl StepStats {
    /// Fraction of the KV pool in use.
    pub fn token_usage(&self) -> f64 {
        if self.capacity_tokens == 0 {
            0.0
        } else {
            self.used_tokens as f64 / self.capacity_tokens as f64
        }
    }
}

/// SGLang's "Prefill batch." line for a step.
pub fn format_prefill_log(s: &StepStats) -> String {
    format!(
        "Prefill batch. #new-seq: {}, #new-token: {}, #cached-token: {}, token usage: {:.2}, #running-req: {}, #queue-req: {}",
        s.new_seqs,
        s.new_tokens,
        s.cached_tokens,
        s.token_usage(),
        s.running_reqs,
        s.queue_reqs
    )
}

/// SGLang's "Decode batch." line (logged every 40 decode steps) for a step.
pub fn format_decode_log(s: &StepStats, cuda_graph: bool, gen_throughput: f64) -> String {
    format!(
        "Decode batch. #running-req: {}, #token: {}, token usage: {:.2}, cuda graph: {}, gen throughput (token/s): {:.2}, #queue-req: {}",
        s.decode_reqs,
        s.used_tokens,
        s.token_usage(),
        cuda_graph,
        gen_throughput,
        s.queue_reqs
    )
}

/// SGLang logs a decode line every this many decode steps.
pub const DECODE_LOG_INTERVAL: u64 = 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_line_matches_sglang_format() {
        let s = StepStats {
            new_seqs: 2,
            new_tokens: 256,
            cached_tokens: 32,
            used_tokens: 250,
            capacity_tokens: 1000,
            running_reqs: 3,
            queue_reqs: 4,
            ..Default::default()
        };
        assert_eq!(
            format_prefill_log(&s),
            "Prefill batch. #new-seq: 2, #new-token: 256, #cached-token: 32, token usage: 0.25, #running-req: 3, #queue-req: 4"
        );
    }

    #[test]
    fn decode_line_matches_sglang_format() {
        let s = StepStats {
            decode_reqs: 64,
            used_tokens: 9000,
            capacity_tokens: 10000,
            queue_reqs: 0,
            ..Default::default()
        };
        assert_eq!(
            format_decode_log(&s, true, 15756.0),
            "Decode batch. #running-req: 64, #token: 9000, token usage: 0.90, cuda graph: true, gen throughput (token/s): 15756.00, #queue-req: 0"
        );
    }
}
