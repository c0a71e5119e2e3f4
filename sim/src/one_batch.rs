//! `doppel sim one-batch`: SGLang's bench_one_batch from the cost model alone (no scheduler).
//!
//! bench_one_batch synchronises every step, so a step costs its host work (forming the batch,
//! launching, sampling) plus its device time, one after the other
//! ([`RooflineCost::serial_step_seconds`]); a server with the overlap loop hides the host part.

use crate::cost::{BatchShape, RooflineCost};
use std::fmt::Write;

/// One batch size's figures, in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct OneBatchRow {
    /// Batch size.
    pub batch: usize,
    /// Prefill latency.
    pub prefill_s: f64,
    /// Median decode step latency.
    pub decode_median_s: f64,
    /// Prefill + every decode step.
    pub total_s: f64,
    /// Every decode step's latency.
    pub decode_s: Vec<f64>,
    /// The median decode step's device share (what the overlap loop leaves of a step).
    pub decode_device_median_s: f64,
}

impl OneBatchRow {
    /// Prefill tokens per second.
    pub fn prefill_tps(&self, input_len: usize) -> f64 {
        (self.batch * input_len) as f64 / self.prefill_s
    }
    /// Decode tokens per second at the median step.
    pub fn decode_tps(&self) -> f64 {
        self.batch as f64 / self.decode_median_s
    }
    /// Total tokens (input + output) per second.
    pub fn total_tps(&self, input_len: usize, output_len: usize) -> f64 {
        (self.batch * (input_len + output_len)) as f64 / self.total_s
    }
}

/// Prefill of `batch` prompts, then output_len - 1 decode steps (the prefill yields the first token).
pub fn run(cost: &RooflineCost, batch: usize, input_len: usize, output_len: usize) -> OneBatchRow {
    let prefill_s = cost.serial_step_seconds(&BatchShape::prefill(batch, input_len));
    let shapes: Vec<BatchShape> = (0..output_len.saturating_sub(1))
        .map(|i| BatchShape::decode(batch, input_len + i + 1))
        .collect();
    let decode_s: Vec<f64> = shapes.iter().map(|s| cost.serial_step_seconds(s)).collect();
    let mut sorted = decode_s.clone();
    sorted.sort_by(f64::total_cmp);
    let decode_median_s = median(&sorted);
    let mut device: Vec<f64> = shapes.iter().map(|s| cost.step_seconds(s)).collect();
    device.sort_by(f64::total_cmp);
    let total_s = prefill_s + decode_s.iter().sum::<f64>();
    OneBatchRow {
        batch,
        prefill_s,
        decode_median_s,
        total_s,
        decode_s,
        decode_device_median_s: median(&device),
    }
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// bench_one_batch's log lines for one batch size, then (for several) a summary table.
pub fn format(rows: &[OneBatchRow], input_len: usize, output_len: usize) -> String {
    let mut s = String::new();
    for r in rows {
        let _ = writeln!(
            s,
            "Prefill. latency: {:6.5} s, throughput: {:9.2} token/s",
            r.prefill_s,
            r.prefill_tps(input_len)
        );
        for (i, d) in r.decode_s.iter().take(5).enumerate() {
            let _ = writeln!(
                s,
                "Decode {i}. Batch size: {}, latency: {:6.5} s, throughput: {:9.2} token/s",
                r.batch,
                d,
                r.batch as f64 / d
            );
        }
        if output_len > 1 {
            let _ = writeln!(
                s,
                "Decode.  median latency: {:6.5} s, median throughput: {:9.2} token/s",
                r.decode_median_s,
                r.decode_tps()
            );
        }
        let _ = writeln!(
            s,
            "Total. latency: {:6.3} s, throughput: {:9.2} token/s",
            r.total_s,
            r.total_tps(input_len, output_len)
        );
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "| batch | prefill latency (s) | prefill tok/s | decode median (ms) | of it device (ms) | decode tok/s | total latency (s) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.4} | {:.0} | {:.2} | {:.2} | {:.0} | {:.3} |",
            r.batch,
            r.prefill_s,
            r.prefill_tps(input_len),
            r.decode_median_s * 1e3,
            r.decode_device_median_s * 1e3,
            r.decode_tps(),
            r.total_s
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    #[test]
    fn total_is_prefill_plus_decode_steps() {
        let c = RooflineCost::new(&Profile::load("a100-80g/qwen3-0.6b/sglang").unwrap(), 1);
        let r = run(&c, 4, 128, 64);
        assert_eq!(r.decode_s.len(), 63);
        let sum: f64 = r.prefill_s + r.decode_s.iter().sum::<f64>();
        assert!((r.total_s - sum).abs() < 1e-12);
        // Serial: each step is its host time plus its device time.
        let host = c.host_seconds(&BatchShape::decode(4, 160));
        assert!(host > 0.0);
        assert!((r.decode_median_s - r.decode_device_median_s - host).abs() < 1e-6);
        let text = format(&[r], 128, 64);
        assert!(text.contains("Decode.  median latency:"), "{text}");
        assert!(text.contains("| 4 |"), "{text}");
    }
}
