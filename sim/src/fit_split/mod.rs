//! The parts of a calibration that need the host/device split of `doppel exec profile`
//! (`StepPoint::host_ns`, `StepPoint::device_ns`): the measured decode table and the launch
//! costs. Plain least squares over medians, so a few noisy repeats do not move the fit.

use crate::calibrate::{StepPoint, SubmitPoint};
use crate::cost::points_of;
use crate::profile::LaunchCosts;
use std::collections::BTreeMap;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Least squares `y = a + b x` (b clamped at 0, a at 0).
pub(crate) fn line(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.is_empty() {
        return (0.0, 0.0);
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let b = if sxx > 0.0 { (sxy / sxx).max(0.0) } else { 0.0 };
    ((my - b * mx).max(0.0), b)
}

/// Least squares `y = a + b x1 + c x2`, coefficients clamped at 0 (a dropped term is refitted
/// without it).
fn plane(points: &[(f64, f64, f64)]) -> (f64, f64, f64) {
    let solve = |use_b: bool, use_c: bool| -> Option<(f64, f64, f64)> {
        // Normal equations over the kept columns.
        let cols = |p: &(f64, f64, f64)| {
            let mut v = vec![1.0];
            if use_b {
                v.push(p.0);
            }
            if use_c {
                v.push(p.1);
            }
            v
        };
        let k = 1 + use_b as usize + use_c as usize;
        let mut m = vec![vec![0.0; k + 1]; k];
        for p in points {
            let x = cols(p);
            for i in 0..k {
                for j in 0..k {
                    m[i][j] += x[i] * x[j];
                }
                m[i][k] += x[i] * p.2;
            }
        }
        // Gaussian elimination with partial pivoting.
        for c in 0..k {
            let piv = (c..k).max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))?;
            if m[piv][c].abs() < 1e-12 {
                return None;
            }
            m.swap(c, piv);
            let pivot = m[c].clone();
            for (r, row) in m.iter_mut().enumerate() {
                if r != c {
                    let f = row[c] / pivot[c];
                    for (v, p) in row.iter_mut().zip(&pivot).skip(c) {
                        *v -= f * p;
                    }
                }
            }
        }
        let x: Vec<f64> = (0..k).map(|i| m[i][k] / m[i][i]).collect();
        let mut it = x.into_iter();
        let a = it.next().unwrap_or(0.0);
        let b = if use_b { it.next().unwrap_or(0.0) } else { 0.0 };
        let c = if use_c { it.next().unwrap_or(0.0) } else { 0.0 };
        Some((a, b, c))
    };
    let mean = points.iter().map(|p| p.2).sum::<f64>() / points.len().max(1) as f64;
    for (ub, uc) in [(true, true), (true, false), (false, true), (false, false)] {
        if let Some((a, b, c)) = solve(ub, uc) {
            if a >= 0.0 && b >= 0.0 && c >= 0.0 {
                return (a, b, c);
            }
        }
    }
    (mean.max(0.0), 0.0, 0.0)
}

/// Raggedness of a decode step among its own requests: batch x longest sequence - KV tokens read
/// (0 when even).
fn ragged(s: &StepPoint) -> f64 {
    (s.decode_reqs as f64 * s.max_kv as f64 - s.kv_read_tokens as f64).max(0.0)
}

/// Tokens of the rows a graph of `rows` pads a decode step with, each counted as long as the
/// step's longest sequence (see `Efficiency::decode_padding_share`).
fn padding(s: &StepPoint, rows: f64) -> f64 {
    (rows - s.decode_reqs as f64).max(0.0) * s.max_kv as f64
}

/// The decode steps a table fit uses: measured device time (a zero one is no measurement: the
/// fits divide by it), no shared prefix (those read part of their KV from L2:
/// `fit_shared_saving`).
fn plain_decodes(steps: &[StepPoint]) -> impl Iterator<Item = (&StepPoint, f64)> {
    steps
        .iter()
        .filter(|s| s.mode == "decode" && s.shared_kv_tokens == 0)
        .filter_map(|s| Some((s, s.device_ns? as f64)))
        .filter(|(_, d)| *d > 0.0)
}

/// The fitted decode model: the table by graph batch size and the padding rows' share.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeFit {
    /// `(batch, fixed ns, ns per KV token read, ns per token of raggedness)` per graph row.
    pub table: Vec<(f64, f64, f64, f64)>,
    /// `Efficiency::decode_padding_share` (0 without padded measurements).
    pub padding_share: f64,
    /// `Profile::decode_kv_points`: each row's even, full batches by KV length (medians).
    pub points: Vec<(f64, Vec<(f64, f64)>)>,
}

/// KV lengths per request within this many tokens of each other are one measured point (a
/// scenario's steps grow by one token each).
const KV_POINT_TOKENS: f64 = 64.0;

/// The graph row a decode batch of `b` requests runs as.
fn row_of(table: &[(f64, f64, f64, f64)], b: usize) -> Option<(f64, f64, f64, f64)> {
    table.iter().find(|r| r.0 >= b as f64).copied()
}

/// Decode device times by batch size, from the steps' `device_ns`, in three passes: (1) the
/// fixed and per-KV-token terms of every batch measured at two or more KV lengths with even,
/// full batches; (2) the padding share, from even batches with fewer requests than their row
/// (a CUDA graph pads them up to it), so raggedness does not enter it; (3) each row's
/// raggedness rate from its ragged batches, full or padded (the padding's share taken off).
/// A batch size with fewer than 4 steps is a one-step transient (the decode after a mixed
/// scenario's prefill), not a measured shape, and stays out of (2) and (3).
pub fn fit_decode(steps: &[StepPoint]) -> DecodeFit {
    let decode: Vec<(&StepPoint, f64)> = plain_decodes(steps).collect();
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for (s, _) in &decode {
        *count.entry(s.decode_reqs).or_default() += 1;
    }
    let steady = |s: &StepPoint| count.get(&s.decode_reqs).copied().unwrap_or(0) >= 4;
    // Even within a token per request (lengths grow by one per step).
    let even = |s: &StepPoint| ragged(s) <= s.decode_reqs as f64;
    // batch -> KV tokens read -> device times, for even batches
    let mut by: BTreeMap<usize, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for &(s, d) in decode.iter().filter(|(s, _)| even(s)) {
        by.entry(s.decode_reqs)
            .or_default()
            .entry(s.kv_read_tokens)
            .or_default()
            .push(d);
    }
    // Rows: batches with a slope. A batch seen at one KV length only (a mixed scenario's
    // transient, or a padded scenario) cannot give one.
    let mut rows: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for (&batch, kvs) in &by {
        let pts: Vec<(f64, f64)> = kvs
            .iter()
            .map(|(&kv, ts)| (kv as f64, median(ts.clone())))
            .collect();
        let lo = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.0).fold(0.0, f64::max);
        if hi >= 2.0 * lo.max(1.0) {
            rows.insert(batch, line(&pts));
        }
    }
    let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let mut table: Vec<(f64, f64, f64, f64)> = rows
        .iter()
        .map(|(&b, &(a, slope))| (b as f64, a.round(), r3(slope), 0.0))
        .collect();
    // Each row's measured KV lengths: the steps of one length (within KV_POINT_TOKENS per
    // request) as one point, their median KV read and median time.
    let points: Vec<(f64, Vec<(f64, f64)>)> = rows
        .keys()
        .filter_map(|b| {
            let mut bins: BTreeMap<i64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
            for (&kv, ts) in &by[b] {
                let bin = (kv as f64 / *b as f64 / KV_POINT_TOKENS).round() as i64;
                let e = bins.entry(bin).or_default();
                e.0.extend(std::iter::repeat_n(kv as f64, ts.len()));
                e.1.extend(ts.iter().copied());
            }
            let pts: Vec<(f64, f64)> = bins
                .into_values()
                .map(|(kv, ts)| (median(kv).round(), median(ts).round()))
                .collect();
            (pts.len() >= 2).then_some((*b as f64, pts))
        })
        .collect();
    let base = |row: &(f64, f64, f64, f64), read: f64| {
        crate::cost::decode_row_ns((row.1, row.2), points_of(&points, row.0), read)
    };
    // Padding share: least squares of the relative residual against the padding's time at the
    // row's per-KV rate, over even padded batches.
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(s, d) in decode.iter().filter(|(s, _)| even(s) && steady(s)) {
        let Some(row) = row_of(&table, s.decode_reqs) else {
            continue;
        };
        let kv = s.kv_read_tokens as f64;
        // What the whole padding would cost at the row's rates there (a share of it lands
        // within the same segment of the row's points, so the share enters linearly).
        let x = (base(&row, kv + padding(s, row.0)) - base(&row, kv)) / d;
        if x > 0.0 {
            sxy += (d - base(&row, kv)) / d * x;
            sxx += x * x;
        }
    }
    let padding_share = if sxx > 0.0 {
        r3((sxy / sxx).clamp(0.0, 1.0))
    } else {
        0.0
    };
    // Raggedness rates: least squares through the origin of what the even fit and the padding
    // leave unexplained, per row.
    let mut uneven: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for &(s, d) in decode.iter().filter(|(s, _)| !even(s) && steady(s)) {
        let Some(row) = row_of(&table, s.decode_reqs) else {
            continue;
        };
        let pad = padding_share * padding(s, row.0);
        let x = ragged(s);
        let e = uneven.entry(row.0 as usize).or_default();
        e.0 += (d - base(&row, s.kv_read_tokens as f64 + pad)) * x;
        e.1 += x * x;
    }
    let measured: Vec<(f64, f64)> = uneven
        .iter()
        .filter(|(_, v)| v.1 > 0.0)
        .map(|(&b, v)| (b as f64, r3((v.0 / v.1).max(0.0))))
        .collect();
    // Rows without ragged measurements take the nearest measured row's rate.
    for r in &mut table {
        r.3 = measured
            .iter()
            .min_by(|x, y| (x.0 - r.0).abs().total_cmp(&(y.0 - r.0).abs()))
            .map_or(0.0, |x| x.1);
    }
    DecodeFit {
        table,
        padding_share,
        points,
    }
}

/// The share of the per-KV-token time saved on KV tokens that another request of the same
/// decode batch also reads: least squares through the origin, over the decode steps with shared
/// prefixes, of what `table` leaves unexplained against the time those tokens cost at the row's
/// rate. Returns the fit over all such steps (`Efficiency::decode_shared_kv_saving`) and one per
/// row that has them (`Profile::decode_shared_savings`); 0 and none without such steps.
pub fn fit_shared_saving(
    steps: &[StepPoint],
    table: &[(f64, f64, f64, f64)],
    points: &[(f64, Vec<(f64, f64)>)],
    padding_share: f64,
) -> (f64, Vec<(f64, f64)>) {
    // row -> (sum x y, sum x x); row 0 collects every step.
    let mut sums: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for s in steps
        .iter()
        .filter(|s| s.mode == "decode" && s.shared_kv_tokens > 0)
    {
        let (Some(d), Some(row)) = (
            s.device_ns,
            table.iter().find(|r| r.0 >= s.decode_reqs as f64),
        ) else {
            continue;
        };
        let kv = s.kv_read_tokens as f64 + padding_share * padding(s, row.0);
        let even = crate::cost::decode_row_ns((row.1, row.2), points_of(points, row.0), kv);
        let unexplained = d as f64 - (even + row.3 * ragged(s));
        let x = row.2 * s.shared_kv_tokens as f64;
        for key in [0, row.0 as usize] {
            let e = sums.entry(key).or_default();
            e.0 -= unexplained * x;
            e.1 += x * x;
        }
    }
    let saving = |(sxy, sxx): (f64, f64)| {
        if sxx > 0.0 {
            ((sxy / sxx).clamp(0.0, 1.0) * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    };
    let all = sums.remove(&0).map_or(0.0, saving);
    let rows = sums
        .into_iter()
        .filter(|(_, v)| v.1 > 0.0)
        .map(|(b, v)| (b as f64, saving(v)))
        .collect();
    (all, rows)
}

/// Submission cost `(ns, ns per prompt token)`: least squares through each prompt length's
/// median (the first submissions of a run pay one-time allocations).
pub fn fit_submit(points: &[SubmitPoint]) -> (f64, f64) {
    let mut by: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for p in points {
        by.entry(p.prompt_len).or_default().push(p.ns as f64);
    }
    let pts: Vec<(f64, f64)> = by
        .into_iter()
        .map(|(len, v)| (len as f64, median(v)))
        .collect();
    line(&pts)
}

/// Launch costs from the steps' `host_ns`, `device_ns` and plain spans; `graph_max` is the
/// largest decode batch replayed from a CUDA graph. None without host/device measurements.
pub fn fit_launch(steps: &[StepPoint], graph_max: usize) -> Option<LaunchCosts> {
    let split: Vec<&StepPoint> = steps
        .iter()
        .filter(|s| s.host_ns > 0 && s.device_ns.is_some())
        .collect();
    if split.is_empty() {
        return None;
    }
    let is_graph = |s: &StepPoint| s.mode == "decode" && s.decode_reqs <= graph_max;
    let mut graph: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    // (requests, tokens) -> host times: a launch now and then takes several times its usual
    // time (the host was descheduled), so the fit goes through each shape's median.
    let mut eager: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for s in &split {
        let reqs = s.extend_reqs + s.decode_reqs;
        if is_graph(s) {
            graph.entry(reqs).or_default().push(s.host_ns as f64);
        } else {
            eager
                .entry((reqs, s.tokens))
                .or_default()
                .push(s.host_ns as f64);
        }
    }
    let graph_pts: Vec<(f64, f64)> = graph
        .into_iter()
        .map(|(r, v)| (r as f64, median(v)))
        .collect();
    let (graph_ns, graph_per_req_ns) = line(&graph_pts);
    let eager: Vec<(f64, f64, f64)> = eager
        .into_iter()
        .map(|((r, t), v)| (r as f64, t as f64, median(v)))
        .collect();
    let (eager_ns, eager_per_req_ns, eager_per_token_ns) = plane(&eager);
    // Plain spans: a step the device bounds takes lead + device (+ the result download); one
    // the host bounds ends a tail after its launch returns.
    let margin = 100_000.0;
    let lead: Vec<f64> = split
        .iter()
        .filter_map(|s| {
            let d = s.device_ns? as f64;
            (d > s.host_ns as f64 + margin).then_some(s.ns as f64 - d)
        })
        .collect();
    let tail: Vec<f64> = split
        .iter()
        .filter_map(|s| {
            let d = s.device_ns? as f64;
            (s.host_ns as f64 > d + margin).then_some(s.ns as f64 - s.host_ns as f64)
        })
        .collect();
    Some(LaunchCosts {
        graph_ns: graph_ns.round(),
        graph_per_req_ns: (graph_per_req_ns * 10.0).round() / 10.0,
        eager_ns: eager_ns.round(),
        eager_per_req_ns: (eager_per_req_ns * 10.0).round() / 10.0,
        eager_per_token_ns: (eager_per_token_ns * 1000.0).round() / 1000.0,
        lead_ns: median(lead).max(0.0).round(),
        tail_ns: median(tail).max(0.0).round(),
    })
}

#[cfg(test)]
mod tests;
