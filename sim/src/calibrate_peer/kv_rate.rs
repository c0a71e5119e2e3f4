//! The peer's KV read rate from its one-batch table. Rows of one batch size at two or more
//! context lengths (prompt + half the output) differ in their decode steps only by the KV those
//! steps read, so the slope of decode time over KV tokens read is the peer's own per-token
//! cost; without such rows the base profile's generic rate stays. At serving loads (hundreds of
//! rows of 1,000+ keys) the KV read is most of a decode step, which the 128-token tables cannot
//! see (docs/fidelity.md, "`h100-80g/qwen3-0.6b/sglang` and `.../vllm`").

use super::OneBatchRow;
use crate::error::SimError;
use crate::profile::Profile;
use std::collections::BTreeMap;

/// `efficiency.kv_bandwidth` (the share of the sheet's HBM bandwidth) that the table's decode
/// rows imply: the pooled within-batch least-squares slope of decode seconds over KV tokens
/// read per step (batch x [`OneBatchRow::median_kv_len`]). `None` when no batch size has rows
/// at two different context lengths.
pub fn fit_kv_bandwidth(p: &Profile, rows: &[OneBatchRow]) -> Result<Option<f64>, SimError> {
    let mut by_batch: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        let kv = (r.batch * r.median_kv_len()) as f64;
        by_batch.entry(r.batch).or_default().push((kv, r.decode_s));
    }
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for pts in by_batch.values() {
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        for &(x, y) in pts {
            sxy += (x - mx) * (y - my);
            sxx += (x - mx) * (x - mx);
        }
    }
    if sxx == 0.0 {
        return Ok(None);
    }
    let per_token_s = sxy / sxx;
    let bytes = p.model.kv_bytes_per_token(1) as f64;
    let share = bytes / (per_token_s * p.hardware.hbm_bandwidth);
    if !(per_token_s > 0.0 && share <= 1.0) {
        return Err(SimError::invalid(
            "one-batch table",
            "median_decode_latency",
            format!("{:.3} ns per KV token read", per_token_s * 1e9),
            &format!(
                "rows at longer prompts must decode slower, and no faster than the sheet's HBM \
                 bandwidth allows ({:.3} ns for {bytes} bytes)",
                bytes / p.hardware.hbm_bandwidth * 1e9
            ),
        ));
    }
    Ok(Some(share))
}
