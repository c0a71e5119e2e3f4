//! The profile's sweep: what `doppel exec profile` measures (batch shapes, sustained runs) and
//! the scenarios of requests that produce those batches.

/// The sweep.
#[derive(Clone, Debug)]
pub struct ProfilePlan {
    /// Prompt lengths of prefill batches.
    pub prefill_lens: Vec<usize>,
    /// Requests per prefill batch.
    pub prefill_batches: Vec<usize>,
    /// Decode batch sizes.
    pub decode_batches: Vec<usize>,
    /// KV lengths of decode batches.
    pub decode_kv: Vec<usize>,
    /// Decode steps measured per (batch, KV length).
    pub decode_steps: usize,
    /// Mixed batches: (decode batch, prefill length) pairs run with mixed chunks on.
    pub mixed: Vec<(usize, usize)>,
    /// Prefix hits: (cached prefix, new suffix, batch): one request caches the prefix, then the
    /// batch extends it (radix cache on).
    pub prefix_hits: Vec<(usize, usize, usize)>,
    /// Chunked prefill: (prompt length, chunk size): each chunk attends to the ones before it.
    pub chunked: Vec<(usize, usize)>,
    /// Decode batches with ragged lengths: (batch, mean length), lengths spread evenly from a
    /// quarter to 1.75 times the mean.
    pub ragged_decode: Vec<(usize, usize)>,
    /// Prefill batches with ragged prompt lengths, spread the same way: (batch, mean length).
    pub ragged_prefill: Vec<(usize, usize)>,
    /// Decode batches of even lengths with fewer requests than their CUDA graph, which pads
    /// them with empty rows: (batch, length).
    pub padded_decode: Vec<(usize, usize)>,
    /// Decode batches over a shared cached prefix (one request computes it, then the batch hits
    /// it and decodes): (batch, shared prefix, own suffix).
    pub shared_decode: Vec<(usize, usize, usize)>,
    /// Timed repeats of the whole sweep (after one untimed warm-up pass).
    pub repeats: usize,
    /// Prefill token budget per step (larger prefill batches are skipped).
    pub max_prefill_tokens: usize,
    /// KV pool in tokens (decode shapes that do not fit are skipped).
    pub kv_capacity: usize,
    /// Prompt token seed.
    pub seed: u64,
    /// Sustained load: (requests, mean prompt length, chunk size): a burst of ragged prompts
    /// (spread as `ragged_prefill`'s) prefilled back to back in the overlap order, as serving
    /// runs them, after `cool_s` of rest, so the steps' device times show how the GPU slows as
    /// it heats toward its power cap (each step carries its start since the run's first).
    pub sustained: Vec<(usize, usize, usize)>,
    /// Decode runs: (batch, prompt length, decode steps): even requests prefilled together, then
    /// decoding back to back in the overlap order, as serving runs them, the KV growing by one
    /// token per step (each step's device time from its own events). The fixed-KV decode
    /// scenarios above (8 steps, plain and stalled) grew ~1.3x faster with the KV than three
    /// replays decoding 300 steps from 512 keys did (docs/fidelity.md, run 13); these runs
    /// measure the serving order itself, in the same table.
    pub decode_runs: Vec<(usize, usize, usize)>,
    /// Rest before each sustained run (s), so it starts on a rested GPU.
    pub cool_s: f64,
    /// Idle time after each scenario run, as a multiple of its wall time. A sweep run back to back
    /// held an H100 at its power cap (592 W, SM clock 1846 MHz on average) while the replays it
    /// calibrates for ran at 317-420 W and 1965-1978 MHz, so every step was measured slow.
    pub rest: f64,
}

impl ProfilePlan {
    /// Shapes for a Qwen3-0.6B-sized model on one GPU.
    pub fn gpu_default() -> ProfilePlan {
        ProfilePlan {
            prefill_lens: vec![64, 256, 1024, 4096],
            prefill_batches: vec![1, 2, 4, 8, 16],
            // Every CUDA-graph batch size: a decode batch runs padded to one of them, so the
            // simulator's decode table is exact at each.
            decode_batches: doppel_exec::cuda::backend::graph_sizes(256),
            decode_kv: vec![128, 512, 2048],
            decode_steps: 8,
            // Up to 256 running rows: where mixed steps would run at 256 streams (docs/peers.md,
            // the simulator's case for them).
            mixed: vec![(16, 256), (64, 512), (128, 1024), (256, 1024)],
            // Batches of extends over cached prefixes, and single ones (a follow-up turn, a
            // question after a shared system prompt), which do not fill the GPU.
            prefix_hits: vec![
                (512, 64, 16),
                (1024, 128, 8),
                (2048, 128, 32),
                (4096, 256, 4),
                (256, 128, 1),
                (512, 128, 1),
                (1024, 128, 1),
                (1024, 256, 2),
                (2048, 64, 1),
                (4096, 128, 1),
            ],
            chunked: vec![(8192, 2048), (12288, 4096), (16384, 8192)],
            // Full graphs, and batches a graph pads (10 and 12 run as 16, 20 as 24, ...), which
            // real traces run most of the time.
            ragged_decode: [
                2, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 44, 48, 64, 72, 96, 104, 128, 144, 192, 256,
            ]
            .iter()
            .flat_map(|&b| [(b, 512), (b, 1024)])
            .collect(),
            ragged_prefill: vec![
                (2, 2048),
                (4, 1024),
                (8, 1024),
                (12, 680),
                (16, 512),
                (32, 256),
            ],
            padded_decode: vec![
                (10, 512),
                (12, 1024),
                (20, 512),
                (28, 1024),
                (44, 512),
                (72, 1024),
                (144, 512),
                // A burst's decode batches: 170-200 requests in graphs 192 and 224.
                (170, 1024),
                (200, 1024),
            ],
            // Shared system prompts: the KV of the prefix is read once per request, from L2
            // after the first.
            shared_decode: vec![
                (4, 1024, 128),
                (8, 1024, 128),
                (12, 1024, 128),
                (16, 1024, 128),
                (16, 2048, 64),
                (32, 512, 128),
                (64, 1024, 64),
                (128, 512, 64),
            ],
            // ~460k tokens in 8192-token steps (SGLang's chunk on an H100): ~1 s of prefill
            // without a pause, long enough for the power cap to settle (~150 ms).
            sustained: vec![(448, 1024, 8192)],
            // Graphs 1-32 from 512 to 896 keys (the replays' common decode shapes: ~1.2-2.5 ms a
            // step), 4-16 from 1536 to 1792 (multi-turn's long contexts), 64 and 128 from 1024
            // keys; graphs 24-64 from 256-384 keys (Poisson 80 req/s decodes around 430 keys,
            // where run 14's table had no points for them) and two padded batches (12 in graph
            // 16, 20 in graph 24), as serving's ragged batches pad: ~11 s a pass.
            decode_runs: vec![
                (1, 512, 384),
                (2, 512, 384),
                (4, 512, 384),
                (8, 512, 384),
                (16, 512, 384),
                (32, 512, 384),
                (4, 1536, 256),
                (8, 1536, 256),
                (16, 1536, 256),
                (64, 1024, 128),
                (128, 1024, 64),
                (24, 384, 256),
                (32, 256, 256),
                (48, 384, 128),
                (64, 384, 128),
                (12, 512, 256),
                (20, 384, 256),
            ],
            cool_s: 1.0,
            repeats: 2,
            max_prefill_tokens: 16384,
            // Room for every graph batch at every KV length (256 x 2057 tokens, 59 GB here).
            kv_capacity: 540_000,
            seed: 1,
            rest: 1.0,
        }
    }

    /// Small shapes for the CPU backend.
    pub fn cpu_default() -> ProfilePlan {
        ProfilePlan {
            prefill_lens: vec![16, 64, 256],
            prefill_batches: vec![1, 4],
            decode_batches: vec![1, 4, 16],
            decode_kv: vec![32, 256],
            decode_steps: 4,
            mixed: vec![(4, 64)],
            prefix_hits: vec![(64, 16, 4)],
            chunked: vec![(256, 64)],
            ragged_decode: vec![(4, 64)],
            ragged_prefill: vec![(4, 64)],
            padded_decode: vec![(3, 32)],
            shared_decode: vec![(4, 64, 16)],
            sustained: vec![(8, 64, 128)],
            decode_runs: vec![(4, 32, 16)],
            cool_s: 0.0,
            repeats: 1,
            max_prefill_tokens: 4096,
            kv_capacity: 16_384,
            seed: 1,
            rest: 0.0,
        }
    }

    /// Largest request (prompt + output) in the sweep.
    pub fn longest(&self) -> usize {
        let p = self.prefill_lens.iter().max().copied().unwrap_or(1) + 1;
        let d = self.decode_kv.iter().max().copied().unwrap_or(1) + self.decode_steps + 1;
        let m = self.mixed.iter().map(|&(_, l)| l + 2).max().unwrap_or(1)
            + self.decode_kv.first().copied().unwrap_or(1)
            + 4 * self.decode_steps;
        let h = self
            .prefix_hits
            .iter()
            .map(|&(a, b, _)| a + b + 3)
            .max()
            .unwrap_or(1);
        let c = self.chunked.iter().map(|&(l, _)| l + 2).max().unwrap_or(1);
        let s = self
            .padded_decode
            .iter()
            .map(|&(_, l)| l)
            .chain(self.shared_decode.iter().map(|&(_, a, b)| a + b))
            .max()
            .unwrap_or(1)
            + self.decode_steps
            + 1;
        let r = self
            .ragged_decode
            .iter()
            .chain(&self.ragged_prefill)
            .map(|&(_, mean)| spread(2, mean)[1] + self.decode_steps + 1)
            .max()
            .unwrap_or(1);
        let v = self
            .decode_runs
            .iter()
            .map(|&(_, len, steps)| len + steps + 2)
            .max()
            .unwrap_or(1);
        let u = self
            .sustained
            .iter()
            .map(|&(n, mean, _)| spread(n, mean).last().copied().unwrap_or(1) + 2)
            .max()
            .unwrap_or(1);
        p.max(d).max(m).max(h).max(c).max(r).max(s).max(u).max(v)
    }
}

/// One batch of requests run to completion: (prompt length, output length, submitted after step).
pub(super) struct Scenario {
    pub(super) mixed: bool,
    /// Run in the overlap order, once per pass, without a stall (a sustained run, a decode run).
    pub(super) overlap: bool,
    /// Rest `cool_s` before it (a sustained run starts on a rested GPU).
    pub(super) cool: bool,
    /// Chunked prefill size (None: off).
    pub(super) chunk: Option<usize>,
    /// Radix cache on (prefix hits).
    pub(super) cache: bool,
    /// (prompt length, max new tokens, submit once this many steps ran, leading tokens taken
    /// from the scenario's shared prefix).
    pub(super) reqs: Vec<(usize, usize, usize, usize)>,
}

impl Scenario {
    fn plain(reqs: Vec<(usize, usize, usize, usize)>) -> Scenario {
        Scenario {
            mixed: false,
            overlap: false,
            cool: false,
            chunk: None,
            cache: false,
            reqs,
        }
    }
}

/// `n` lengths spread evenly from a quarter to 1.75 times `mean` (mean `mean`).
fn spread(n: usize, mean: usize) -> Vec<usize> {
    let lo = mean as f64 / 4.0;
    let step = if n > 1 {
        1.5 * mean as f64 / (n - 1) as f64
    } else {
        0.0
    };
    (0..n)
        .map(|i| ((lo + step * i as f64).round() as usize).max(1))
        .collect()
}

/// The scenarios of a sweep, in the order they run.
pub(super) fn scenarios(p: &ProfilePlan) -> Vec<Scenario> {
    let mut out = Vec::new();
    for &len in &p.prefill_lens {
        for &b in &p.prefill_batches {
            if b * len <= p.max_prefill_tokens && b * (len + 1) <= p.kv_capacity {
                out.push(Scenario::plain(vec![(len, 1, 0, 0); b]));
            }
        }
    }
    for &b in &p.decode_batches {
        for &kv in &p.decode_kv {
            if b * (kv + p.decode_steps + 1) <= p.kv_capacity {
                out.push(Scenario::plain(vec![(kv, p.decode_steps + 1, 0, 0); b]));
            }
        }
    }
    let kv0 = p.decode_kv.first().copied().unwrap_or(32);
    for &(b, len) in &p.mixed {
        if b * (kv0 + 4 * p.decode_steps) + len + 2 <= p.kv_capacity {
            // A decode batch is running when a new prompt arrives: with mixed chunks on, its
            // prefill carries the running decodes in one step.
            let mut reqs = vec![(kv0, 4 * p.decode_steps, 0, 0); b];
            reqs.push((
                len,
                2,
                2 + b.div_ceil(p.max_prefill_tokens / kv0.max(1)).max(1),
                0,
            ));
            out.push(Scenario {
                mixed: true,
                ..Scenario::plain(reqs)
            });
        }
    }
    for &(prefix, suffix, b) in &p.prefix_hits {
        let len = prefix + suffix;
        if prefix > 0 && b * len <= p.max_prefill_tokens && (b + 1) * (len + 2) <= p.kv_capacity {
            let mut reqs = vec![(prefix, 1, 0, prefix)];
            reqs.extend(vec![(len, 1, 2, prefix); b]);
            out.push(Scenario {
                cache: true,
                ..Scenario::plain(reqs)
            });
        }
    }
    for &(b, mean) in &p.ragged_decode {
        let lens = spread(b, mean);
        if lens.iter().map(|l| l + p.decode_steps + 1).sum::<usize>() <= p.kv_capacity {
            let reqs = lens
                .iter()
                .map(|&l| (l, p.decode_steps + 1, 0, 0))
                .collect();
            out.push(Scenario::plain(reqs));
        }
    }
    for &(b, len) in &p.padded_decode {
        if b * (len + p.decode_steps + 1) <= p.kv_capacity {
            out.push(Scenario::plain(vec![(len, p.decode_steps + 1, 0, 0); b]));
        }
    }
    for &(b, prefix, suffix) in &p.shared_decode {
        let len = prefix + suffix;
        let fits = b * suffix <= p.max_prefill_tokens
            && prefix + b * (suffix + p.decode_steps + 1) + 2 <= p.kv_capacity;
        if prefix > 0 && fits {
            let mut reqs = vec![(prefix, 1, 0, prefix)];
            reqs.extend(vec![(len, p.decode_steps + 1, 2, prefix); b]);
            out.push(Scenario {
                cache: true,
                ..Scenario::plain(reqs)
            });
        }
    }
    for &(b, mean) in &p.ragged_prefill {
        let lens = spread(b, mean);
        let total: usize = lens.iter().sum();
        if total <= p.max_prefill_tokens && total + 2 * b <= p.kv_capacity {
            out.push(Scenario::plain(
                lens.iter().map(|&l| (l, 1, 0, 0)).collect(),
            ));
        }
    }
    for &(len, chunk) in &p.chunked {
        if chunk > 0 && len + 2 <= p.kv_capacity {
            out.push(Scenario {
                chunk: Some(chunk),
                ..Scenario::plain(vec![(len, 1, 0, 0)])
            });
        }
    }
    for &(n, mean, chunk) in &p.sustained {
        let lens = spread(n, mean);
        if chunk > 0 && lens.iter().map(|l| l + 2).sum::<usize>() <= p.kv_capacity {
            out.push(Scenario {
                overlap: true,
                cool: true,
                chunk: Some(chunk),
                ..Scenario::plain(lens.iter().map(|&l| (l, 1, 0, 0)).collect())
            });
        }
    }
    for &(b, len, steps) in &p.decode_runs {
        // Prompts past the prefill budget are prefilled over several steps, then all decode.
        if b > 0 && len > 0 && steps > 0 && b * (len + steps + 2) <= p.kv_capacity {
            out.push(Scenario {
                overlap: true,
                ..Scenario::plain(vec![(len, steps + 1, 0, 0); b])
            });
        }
    }
    out
}
