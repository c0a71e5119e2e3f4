//! The cost model: how long a step takes on the virtual GPU, from the batch's real contents.

mod rows;
mod shape;

use crate::profile::Profile;
pub(crate) use rows::{decode_row_ns, nearest_row_value, points_of};
pub use shape::BatchShape;

/// How launching a step occupies the host, and how the GPU follows the launch (ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchCost {
    /// Host time of the launch call.
    pub host_ns: u64,
    /// From the start of the launch until the GPU can start the step.
    pub lead_ns: u64,
    /// The step ends no sooner than this long after the launch call returns.
    pub tail_ns: u64,
}

/// Prices steps and host work in integer nanoseconds.
pub trait CostModel {
    /// GPU time of one forward step.
    fn step_ns(&self, shape: &BatchShape) -> u64;
    /// Scheduler CPU time to form a step with `entries` requests.
    fn schedule_ns(&self, entries: usize) -> u64;
    /// Host-side launch of a step (default: free and instantaneous).
    fn launch_ns(&self, _shape: &BatchShape) -> LaunchCost {
        LaunchCost::default()
    }
    /// `step_ns` together with the compute-bound share of that device time, 0 to 1: what heats
    /// the GPU toward its power cap (`crate::heat`; default: none).
    fn step_ns_with_load(&self, shape: &BatchShape) -> (u64, f64) {
        (self.step_ns(shape), 0.0)
    }
    /// The sustained-load term: (slowdown at full heat, time constant ns); None: off.
    fn sustained(&self) -> Option<(f64, f64)> {
        None
    }
}

/// Roofline terms plus the profile's fitted efficiencies.
#[derive(Clone, Debug)]
pub struct RooflineCost {
    profile: Profile,
    tp: usize,
    // Precomputed per-step constants (hot path: one call per simulated step).
    weight_read_s: f64,
    gemm_flops_per_token: f64,
    lm_head_flops_per_row: f64,
    attn_flops_per_pair: f64,
    kv_bytes_per_token: f64,
    allreduce_bytes_per_token: f64,
    gemm_log_points: Vec<(f64, f64)>,
    /// Per `decode_table` row: its shared-KV saving and its measured KV points (resolved once,
    /// not per step).
    decode_rows: Vec<(f64, Vec<(f64, f64)>)>,
}

impl RooflineCost {
    /// A cost model for `profile` at tensor-parallel size `tp` (at least 1).
    pub fn new(profile: &Profile, tp: usize) -> RooflineCost {
        let tp = tp.max(1);
        let m = &profile.model;
        let tpf = tp as f64;
        let eff = &profile.efficiency;
        RooflineCost {
            weight_read_s: m.weight_read_bytes(tp)
                / (profile.hardware.hbm_bandwidth * eff.weight_bandwidth),
            gemm_flops_per_token: 2.0 * m.layers as f64 * m.layer_params() / tpf,
            lm_head_flops_per_row: 2.0 * m.lm_head_params() / tpf,
            // QK^T and PV: 2 matmuls x 2 FLOP per multiply-add, per head, per layer.
            attn_flops_per_pair: 4.0 * (m.heads as f64 / tpf) * m.head_dim as f64 * m.layers as f64,
            kv_bytes_per_token: m.kv_bytes_per_token(tp) as f64,
            allreduce_bytes_per_token: (m.hidden * m.dtype_bytes) as f64,
            gemm_log_points: eff.gemm.iter().map(|&(t, e)| (t.ln(), e)).collect(),
            decode_rows: profile
                .decode_table
                .iter()
                .map(|r| {
                    let points = points_of(&profile.decode_kv_points, r.0);
                    (Self::shared_saving(profile, r.0), points.to_vec())
                })
                .collect(),
            profile: profile.clone(),
            tp,
        }
    }

    /// The shared-KV saving of decode row `rows`: its listed one, else the nearest row's, else
    /// the profile's single one.
    fn shared_saving(profile: &Profile, rows: f64) -> f64 {
        nearest_row_value(&profile.decode_shared_savings, rows)
            .unwrap_or(profile.efficiency.decode_shared_kv_saving)
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// GEMM efficiency at `tokens` rows, interpolated linearly in log(tokens).
    pub fn gemm_efficiency(&self, tokens: usize) -> f64 {
        let x = (tokens.max(1) as f64).ln();
        let pts = &self.gemm_log_points;
        if x <= pts[0].0 {
            return pts[0].1;
        }
        for w in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if x <= x1 {
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
            }
        }
        pts[pts.len() - 1].1
    }

    /// Whether `s` is a decode step replayed from a CUDA graph.
    fn is_graph(&self, s: &BatchShape) -> bool {
        s.is_decode && s.decode_reqs <= self.profile.engine.cuda_graph_max_bs
    }

    /// Decode device time from the measured table: the smallest listed batch at or above the
    /// step's (graphs pad to their sizes); beyond the table the fixed part is extrapolated from
    /// the last two rows and the per-KV rate is the last row's.
    fn decode_table_seconds(&self, s: &BatchShape) -> Option<f64> {
        let t = &self.profile.decode_table;
        let last = t.last()?;
        let b = s.decode_reqs.max(1) as f64;
        let kv = s.kv_read_tokens as f64;
        // (rows the step runs with, fixed, per KV token, per token of raggedness), and the row's
        // index where it is a listed one.
        let at_row = t.iter().position(|r| r.0 >= b);
        let row = match at_row.map(|i| t[i]) {
            Some(r) => (r.0, r.1, r.2, r.3),
            None if t.len() >= 2 => {
                let prev = t[t.len() - 2];
                let f = (b - prev.0) / (last.0 - prev.0);
                let at = |x: f64, y: f64| (x + f * (y - x)).max(0.0);
                // A KV token costs its read at any batch once the GPU is full: extrapolating the
                // two rows' small slope difference (56.1 and 54.7 ns at 224 and 256 rows on the
                // H100) priced it at 21 ns at 1024 rows, under half the last measured row's
                // (docs/fidelity.md, side-by-side workloads).
                (b, at(prev.1, last.1), last.2, last.3)
            }
            None => (b, last.1 * b / last.0, last.2, last.3),
        };
        // Ragged lengths: the excess of the longest request over an even spread. A graph's
        // split-KV attention runs a grid fixed by its row count and waits for the longest
        // sequence, so each padding row costs a share of a request as long as the longest, at
        // the per-KV rate (measured: a padded batch runs between its KV read and its full row).
        let (rows, row) = (row.0, (row.1, row.2, row.3));
        let eff = &self.profile.efficiency;
        let ragged = (b * s.max_kv as f64 - kv).max(0.0);
        let padding = eff.decode_padding_share * (rows - b).max(0.0) * s.max_kv as f64;
        // A KV token another request of the batch reads too comes from L2 after the first read.
        // Past the table the row is extrapolated: no measured points of its own.
        let (saving, points) = match at_row {
            Some(i) => (self.decode_rows[i].0, &self.decode_rows[i].1[..]),
            None => (Self::shared_saving(&self.profile, rows), &[][..]),
        };
        let read = kv - saving * s.shared_kv_tokens as f64 + padding;
        Some((decode_row_ns((row.0, row.1), points, read) + row.2 * ragged) * 1e-9)
    }

    /// The longest extend entry's serial attention work, in keys (x query rows where
    /// `attention_seq_rows` is fitted): an entry with few rows gets few blocks, each running
    /// through the whole context, and on the H100 such an extend ran at a fixed rate per (row,
    /// key) whether it had 64 or 128 rows, ~12x the cost of a large prefill's pair (single
    /// extends over a long cached prefix: a follow-up turn, a question after a shared system
    /// prompt). Past `attention_seq_rows` rows the blocks fill the GPU and the term falls off
    /// as 1 / rows (a 2048-token chunk over its prefix costs what its FLOPs say).
    fn serial_attention_keys(&self, s: &BatchShape) -> f64 {
        let cap = self.profile.efficiency.attention_seq_rows;
        let rows = if cap > 0.0 {
            let r = s.max_seq_extend.max(1) as f64;
            r.min(cap * cap / r)
        } else {
            1.0
        };
        s.max_seq as f64 * rows
    }

    /// The longest extend entry's attention on its own (`Efficiency::attention_grid_ns`): per
    /// layer and per (query row, key) pair of it, falling as 1 / rows past
    /// `attention_grid_rows` (its blocks then run side by side).
    fn grid_attention_seconds(&self, s: &BatchShape) -> f64 {
        let eff = &self.profile.efficiency;
        if eff.attention_grid_ns <= 0.0 || s.max_seq_extend == 0 {
            return 0.0;
        }
        let rows = s.max_seq_extend as f64;
        // Its causal pairs: each row sees the cached prefix and the rows up to its own.
        let pairs = rows * (s.max_seq as f64 - (rows - 1.0) / 2.0);
        let share = if eff.attention_grid_rows > 0.0 {
            (eff.attention_grid_rows / rows).min(1.0)
        } else {
            1.0
        };
        pairs * share * self.profile.model.layers as f64 * eff.attention_grid_ns * 1e-9
    }

    /// Compute-bound share of a step that takes `step_s` seconds (`step_seconds`), 0 to 1.
    pub fn load_at(&self, s: &BatchShape, step_s: f64) -> f64 {
        if step_s > 0.0 {
            (self.compute_seconds(s) / step_s).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Whole nanoseconds of device time (at least 1) for `seconds`.
    fn ns(seconds: f64) -> u64 {
        (seconds * 1e9).round().max(1.0) as u64
    }

    /// Seconds of compute-bound work in a prefill or mixed step (GEMMs at their fitted
    /// efficiency, attention FLOPs); 0 for a decode step, which reads memory more than it
    /// computes (a burst's decode steps ran at full clock after its prefills had hit the cap).
    fn compute_seconds(&self, s: &BatchShape) -> f64 {
        if s.is_decode {
            return 0.0;
        }
        let hw = &self.profile.hardware;
        let flops = self.gemm_flops_per_token * s.tokens as f64
            + self.lm_head_flops_per_row * s.logits as f64;
        flops / (hw.bf16_flops * self.gemm_efficiency(s.tokens))
            + s.attn_pairs * self.attn_flops_per_pair
                / (hw.bf16_flops * self.profile.efficiency.attention_compute)
    }

    /// Host seconds of a step taken alone: the scheduler's time to form it plus its launch
    /// call (`EngineOverheads::schedule_ns_*`, the profile's `launch` section).
    pub fn host_seconds(&self, s: &BatchShape) -> f64 {
        let l = self.launch_ns(s);
        (self.schedule_ns(s.extend_reqs + s.decode_reqs) + l.host_ns) as f64 * 1e-9
    }

    /// Seconds of a step timed serially, as bench_one_batch times one (host work, then the
    /// device, synchronised): the scheduler's time, then the later of the GPU's end (`lead` +
    /// device) and the launch's return + `tail`. The serving loop hides the host part behind
    /// the previous step instead (`crate::backend`), which is why a profile keeps them apart.
    pub fn serial_step_seconds(&self, s: &BatchShape) -> f64 {
        let l = self.launch_ns(s);
        let schedule = self.schedule_ns(s.extend_reqs + s.decode_reqs) as f64 * 1e-9;
        let device = l.lead_ns as f64 * 1e-9 + self.step_seconds(s);
        schedule + device.max((l.host_ns + l.tail_ns) as f64 * 1e-9)
    }

    /// Seconds of GPU time, unrounded.
    pub fn step_seconds(&self, s: &BatchShape) -> f64 {
        if s.is_decode {
            if let Some(t) = self.decode_table_seconds(s) {
                return t;
            }
        }
        let hw = &self.profile.hardware;
        let eff = &self.profile.efficiency;
        let m = &self.profile.model;
        // Linear layers: weight-bandwidth bound at small batches, compute bound at large ones.
        let flops = self.gemm_flops_per_token * s.tokens as f64
            + self.lm_head_flops_per_row * s.logits as f64;
        let gemm_s = flops / (hw.bf16_flops * self.gemm_efficiency(s.tokens));
        let linear_s = gemm_s.max(self.weight_read_s);
        // Attention: prefill is quadratic compute, decode is KV-read bound; a prefill's
        // attention lasts at least as long as the longest sequence's blocks take.
        let attn_flops_s =
            s.attn_pairs * self.attn_flops_per_pair / (hw.bf16_flops * eff.attention_compute);
        let attn_s = attn_flops_s.max(self.grid_attention_seconds(s))
            + self.serial_attention_keys(s) * m.layers as f64 * eff.attention_seq_ns * 1e-9
            + s.kv_read_tokens as f64 * self.kv_bytes_per_token
                / (hw.hbm_bandwidth * eff.kv_bandwidth);
        // TP: two ring all-reduces of the activations per layer.
        let comm_s = if self.tp > 1 {
            let ic = &hw.interconnect;
            let bytes = self.allreduce_bytes_per_token * s.tokens as f64;
            let ring = 2.0 * (self.tp as f64 - 1.0) / self.tp as f64 * bytes / ic.bandwidth;
            2.0 * m.layers as f64 * (ring + ic.latency_ns * 1e-9)
        } else {
            0.0
        };
        let kernels = m.layers as f64 * eff.kernels_per_layer;
        let fixed_s = if s.is_decode {
            if self.is_graph(s) {
                eff.decode_step_ns * 1e-9
            } else {
                // Too large for a captured graph: every kernel is launched eagerly.
                (eff.decode_step_ns + kernels * (hw.kernel_launch_ns - hw.graph_kernel_ns).max(0.0))
                    * 1e-9
            }
        } else {
            (eff.prefill_step_ns + eff.prefill_per_req_ns * (s.extend_reqs + s.decode_reqs) as f64)
                * 1e-9
        };
        fixed_s + linear_s + attn_s + comm_s
    }
}

impl CostModel for RooflineCost {
    fn step_ns(&self, shape: &BatchShape) -> u64 {
        Self::ns(self.step_seconds(shape))
    }

    fn schedule_ns(&self, entries: usize) -> u64 {
        let e = &self.profile.engine;
        (e.schedule_ns_per_step + e.schedule_ns_per_req * entries as f64).round() as u64
    }

    fn launch_ns(&self, s: &BatchShape) -> LaunchCost {
        let Some(l) = &self.profile.launch else {
            return LaunchCost::default();
        };
        let reqs = (s.extend_reqs + s.decode_reqs) as f64;
        let host = if self.is_graph(s) {
            l.graph_ns + l.graph_per_req_ns * reqs
        } else {
            l.eager_ns + l.eager_per_req_ns * reqs + l.eager_per_token_ns * s.tokens as f64
        };
        LaunchCost {
            host_ns: host.round() as u64,
            lead_ns: l.lead_ns.round() as u64,
            tail_ns: l.tail_ns.round() as u64,
        }
    }

    fn step_ns_with_load(&self, s: &BatchShape) -> (u64, f64) {
        let t = self.step_seconds(s);
        (Self::ns(t), self.load_at(s, t))
    }

    fn sustained(&self) -> Option<(f64, f64)> {
        let e = &self.profile.efficiency;
        (e.sustained_slowdown > 0.0 && e.sustained_tau_ns > 0.0)
            .then_some((e.sustained_slowdown, e.sustained_tau_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a100() -> RooflineCost {
        RooflineCost::new(&Profile::load("a100-80g/qwen3-0.6b/sglang").unwrap(), 1)
    }

    #[test]
    fn decode_cost_grows_with_batch_and_kv() {
        let c = a100();
        let t1 = c.step_ns(&BatchShape::decode(1, 160));
        let t64 = c.step_ns(&BatchShape::decode(64, 160));
        let t64_long = c.step_ns(&BatchShape::decode(64, 4096));
        assert!(t1 < t64 && t64 < t64_long, "{t1} {t64} {t64_long}");
    }

    #[test]
    fn a_padded_decode_batch_costs_its_graph_row_with_a_share_of_each_padding_row() {
        let mut p = Profile::load("h100-80g/qwen3-0.6b/doppel").unwrap();
        p.decode_table = vec![(8.0, 1e6, 50.0, 20.0), (16.0, 1.2e6, 48.0, 25.0)];
        // Lines only: the shipped profile's measured points belong to its own rows.
        p.decode_kv_points.clear();
        p.efficiency.decode_padding_share = 0.4;
        let c = RooflineCost::new(&p, 1);
        // 9 requests of 512 tokens run as graph 16: 7 padding rows, each 0.4 of a 512-token
        // request at the per-KV rate.
        let want = 1.2e6 + 48.0 * 9.0 * 512.0 + 0.4 * 48.0 * 7.0 * 512.0;
        let got = c.step_seconds(&BatchShape::decode(9, 512)) * 1e9;
        assert!((got - want).abs() < 1e-3, "{got} {want}");
        // A full graph with even lengths has none.
        let full = c.step_seconds(&BatchShape::decode(16, 512)) * 1e9;
        assert!(
            (full - (1.2e6 + 48.0 * 16.0 * 512.0)).abs() < 1e-3,
            "{full}"
        );
    }

    #[test]
    fn past_the_table_the_fixed_part_is_extrapolated_and_a_kv_token_costs_the_last_rows_rate() {
        let mut p = Profile::load("h100-80g/qwen3-0.6b/doppel").unwrap();
        p.decode_table = vec![(8.0, 1e6, 50.0, 0.0), (16.0, 1.2e6, 48.0, 0.0)];
        p.decode_kv_points.clear();
        let c = RooflineCost::new(&p, 1);
        // 64 rows: the fixed part 1e6 + 7 x 0.2e6 (0.2 ms per 8 rows), the last row's 48 ns per
        // KV token (extrapolated, the slope would have fallen to 36).
        let want = 2.4e6 + 48.0 * 64.0 * 512.0;
        let got = c.step_seconds(&BatchShape::decode(64, 512)) * 1e9;
        assert!((got - want).abs() < 1e-3, "{got} {want}");
    }

    #[test]
    fn shared_kv_tokens_save_their_row_s_share_else_the_nearest_row_s_else_the_global_one() {
        let mut p = Profile::load("h100-80g/qwen3-0.6b/doppel").unwrap();
        p.decode_table = vec![(4.0, 1e6, 50.0, 0.0), (16.0, 1.2e6, 48.0, 0.0)];
        p.decode_kv_points.clear();
        p.efficiency.decode_padding_share = 0.0;
        p.efficiency.decode_shared_kv_saving = 0.3;
        // The shipped profile's per-row savings belong to its own rows.
        p.decode_shared_savings.clear();
        let shared = |b: usize| {
            let mut s = BatchShape::decode(b, 1100);
            s.shared_kv_tokens = (b - 1) * 1024;
            s
        };
        let price = |p: &Profile, b: usize| RooflineCost::new(p, 1).step_seconds(&shared(b)) * 1e9;
        let want = |fixed: f64, slope: f64, b: usize, saving: f64| {
            fixed + slope * ((b * 1100) as f64 - saving * ((b - 1) * 1024) as f64)
        };
        // No per-row list: the one saving (as profiles fitted before it price).
        assert!((price(&p, 16) - want(1.2e6, 48.0, 16, 0.3)).abs() < 1e-3);
        // Row 4 listed only: row 16 takes it as the nearest.
        p.decode_shared_savings = vec![(4.0, 0.1)];
        assert!((price(&p, 4) - want(1e6, 50.0, 4, 0.1)).abs() < 1e-3);
        assert!((price(&p, 16) - want(1.2e6, 48.0, 16, 0.1)).abs() < 1e-3);
        p.decode_shared_savings = vec![(4.0, 0.1), (16.0, 0.5)];
        assert!((price(&p, 16) - want(1.2e6, 48.0, 16, 0.5)).abs() < 1e-3);
        assert_eq!(
            nearest_row_value(&[(8.0, 0.1), (24.0, 0.5)], 16.0),
            Some(0.1)
        );
        assert_eq!(nearest_row_value(&[], 16.0), None);
        // Out of range: the profile names the field.
        p.decode_shared_savings = vec![(4.0, 1.5)];
        let text = serde_yaml::to_string(&p).unwrap();
        let e = Profile::parse(&text, "x.yaml").unwrap_err().to_string();
        assert!(e.contains("decode_shared_savings[0]"), "{e}");
    }

    #[test]
    fn the_serial_extend_term_goes_with_rows_up_to_its_cap_then_falls_off() {
        let mut p = Profile::load("h100-80g/qwen3-0.6b/doppel").unwrap();
        p.efficiency.attention_seq_ns = 0.5;
        p.efficiency.attention_seq_rows = 128.0;
        let c = RooflineCost::new(&p, 1);
        // One extend of `rows` tokens over a 4096-token cached prefix.
        let extend = |rows: usize| BatchShape {
            tokens: rows,
            extend_reqs: 1,
            logits: 1,
            attn_pairs: rows as f64 * (4096.0 + (rows as f64 + 1.0) / 2.0),
            kv_read_tokens: 4096,
            max_seq: 4096 + rows,
            max_seq_extend: rows,
            ..Default::default()
        };
        let layers = p.model.layers as f64;
        let serial = |rows: usize| {
            let s = extend(rows);
            c.serial_attention_keys(&s) * layers * 0.5e-9
        };
        assert!((serial(64) - 4160.0 * 64.0 * layers * 0.5e-9).abs() < 1e-12);
        assert!((serial(128) - 4224.0 * 128.0 * layers * 0.5e-9).abs() < 1e-12);
        // Past the cap: 128^2 / 2048 = 8 rows' worth.
        assert!((serial(2048) - 6144.0 * 8.0 * layers * 0.5e-9).abs() < 1e-12);
        // The step time carries the term.
        let t64 = c.step_seconds(&extend(64));
        p.efficiency.attention_seq_ns = 0.0;
        let plain = RooflineCost::new(&p, 1).step_seconds(&extend(64));
        assert!((t64 - plain - serial(64)).abs() < 1e-12, "{t64} {plain}");
        // Without a cap the term is per key only.
        p.efficiency.attention_seq_ns = 0.5;
        p.efficiency.attention_seq_rows = 0.0;
        let c = RooflineCost::new(&p, 1);
        assert_eq!(c.serial_attention_keys(&extend(64)), 4160.0);
    }

    #[test]
    fn one_sequence_s_attention_is_floored_by_its_grid_term() {
        let mut p = Profile::load("h100-80g/qwen3-0.6b/doppel").unwrap();
        p.efficiency.attention_seq_ns = 0.0;
        p.efficiency.attention_grid_ns = 0.4;
        p.efficiency.attention_grid_rows = 256.0;
        let c = RooflineCost::new(&p, 1);
        let layers = p.model.layers as f64;
        let extend = |n: usize, rows: usize, prefix: usize| BatchShape {
            tokens: n * rows,
            extend_reqs: n,
            logits: n,
            attn_pairs: n as f64 * rows as f64 * (prefix as f64 + (rows as f64 + 1.0) / 2.0),
            kv_read_tokens: n * prefix,
            max_seq: prefix + rows,
            max_seq_extend: rows,
            ..Default::default()
        };
        // 128 rows over 4096 keys: every pair at the full rate.
        let pairs = 128.0 * (4224.0 - 127.0 / 2.0);
        assert!(
            (c.grid_attention_seconds(&extend(1, 128, 4096)) - pairs * layers * 0.4e-9).abs()
                < 1e-12
        );
        // 1024 fresh rows: past the cap the rate falls as 1 / rows.
        let pairs = 1024.0 * 1025.0 / 2.0;
        let want = pairs * 256.0 / 1024.0 * layers * 0.4e-9;
        assert!((c.grid_attention_seconds(&extend(1, 1024, 0)) - want).abs() < 1e-12);
        // It is a floor under the FLOP term, not added to it: a large batch's FLOPs win.
        let big = extend(64, 512, 0);
        let t = c.step_seconds(&big);
        p.efficiency.attention_grid_ns = 0.0;
        let off = RooflineCost::new(&p, 1);
        assert_eq!(t, off.step_seconds(&big));
        assert!(c.step_seconds(&extend(1, 128, 4096)) > off.step_seconds(&extend(1, 128, 4096)));
    }

    #[test]
    fn prefill_attention_is_quadratic() {
        let c = a100();
        let short = c.step_seconds(&BatchShape::prefill(1, 4096));
        let long = c.step_seconds(&BatchShape::prefill(1, 32768));
        // 8x the tokens costs clearly more than 8x once attention dominates.
        assert!(
            long > 8.0 * (short - c.profile().efficiency.prefill_step_ns * 1e-9),
            "{short} {long}"
        );
    }

    #[test]
    fn tp_splits_work_but_adds_communication() {
        let p = Profile::load("h100-80g/llama-3-8b/sglang").unwrap();
        let tp1 = RooflineCost::new(&p, 1).step_seconds(&BatchShape::prefill(8, 2048));
        let tp2 = RooflineCost::new(&p, 2).step_seconds(&BatchShape::prefill(8, 2048));
        assert!(tp2 < tp1, "{tp1} {tp2}");
        let mut pcie = p.clone();
        pcie.hardware.interconnect.bandwidth = 16e9;
        let tp2_pcie = RooflineCost::new(&pcie, 2).step_seconds(&BatchShape::prefill(8, 2048));
        assert!(tp2_pcie > tp2);
    }

    #[test]
    fn gemm_efficiency_interpolates_and_clamps() {
        let c = a100();
        let pts = c.profile().efficiency.gemm.clone();
        assert_eq!(c.gemm_efficiency(1), pts[0].1);
        assert_eq!(c.gemm_efficiency(10_000_000), pts[pts.len() - 1].1);
        let mid = c.gemm_efficiency(((pts[0].0 * pts[1].0).sqrt()) as usize);
        assert!(mid > pts[0].1.min(pts[1].1) - 1e-9 && mid < pts[0].1.max(pts[1].1) + 1e-9);
    }
}
