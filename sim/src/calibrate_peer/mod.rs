//! `doppel sim calibrate --one-batch TABLE --serving RUN.json ...`: a profile for another
//! engine (SGLang, vLLM) from what can be measured from outside it: its bench_one_batch table
//! (host + device per step, serially) and serving runs (`doppel bench serve --json`, where the
//! overlap loop hides the host time).
//!
//! The base profile gives the model shape, the hardware sheet and the roofline efficiencies
//! (a base with a measured decode table is refused: the table would price every decode step).
//! Fitted: the host time per step (`engine.schedule_ns_per_step`), the decode
//! step's fixed device time (`efficiency.decode_step_ns`) and the prefill step's
//! (`prefill_step_ns`), the request path (`engine.http_ns`) and, where the table allows, the
//! KV read rate. For a host time H, the fixed device parts follow from the table (each
//! row: measured - H - the roofline's variable part; the median over rows); H is the value whose
//! profile replays the serving runs' median ITL best (squared log error, a grid of 50 us
//! refined to 5 us; where a light run leaves two values, the smaller). A per-request host term
//! is not separable from the device's per-request cost in these data and stays 0. A table with
//! rows of one batch size at two or more context lengths gives the KV read rate
//! (`efficiency.kv_bandwidth`, [`fit_kv_bandwidth`]), fitted first; otherwise the base's rate
//! stays.

use crate::cost::{BatchShape, RooflineCost};
use crate::driver::simulate_work;
use crate::error::SimError;
use crate::metrics::summarize;
use crate::profile::Profile;
use crate::trace::{ExplicitRequest, Trace, Workload};
use crate::workload::expand;
use crate::SimOptions;
use serde_json::Value;

mod kv_rate;
pub use kv_rate::fit_kv_bandwidth;

/// One bench_one_batch row (seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct OneBatchRow {
    /// Batch size.
    pub batch: usize,
    /// Prompt length.
    pub input_len: usize,
    /// Output length.
    pub output_len: usize,
    /// Prefill latency.
    pub prefill_s: f64,
    /// Median decode step latency.
    pub decode_s: f64,
}

impl OneBatchRow {
    /// The context of its median decode step: the prompt and half the output.
    pub fn median_kv_len(&self) -> usize {
        self.input_len + self.output_len / 2
    }
}

/// One serving run: its requests (send ms, prompt, output) and its median ITL and TTFT (ms).
#[derive(Clone, Debug, PartialEq)]
pub struct ServingRun {
    /// Where it came from.
    pub origin: String,
    /// The requests as the clients sent them.
    pub requests: Vec<(f64, usize, usize)>,
    /// Measured median ITL.
    pub median_itl_ms: f64,
    /// Measured median TTFT.
    pub median_ttft_ms: f64,
}

/// The file's text; gzipped files (the repository keeps reports compressed) are decompressed.
fn read_text(path: &str) -> Result<String, SimError> {
    crate::calibrate::read_text(path).map_err(|source| SimError::Io {
        path: path.to_string(),
        source,
    })
}

fn read_json(path: &str) -> Result<Value, SimError> {
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map_err(|e| SimError::invalid(path, "(file)", String::new(), &e.to_string()))
}

/// Rows of a bench_one_batch table: `doppel exec bench-one-batch --json`'s array (`*_ms`
/// fields) or SGLang bench_one_batch's result lines (`--result-filename`, JSON per line, in
/// seconds).
pub fn load_one_batch(path: &str) -> Result<Vec<OneBatchRow>, SimError> {
    let text = read_text(path)?;
    let values: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(a)) => a,
        _ => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|e| SimError::invalid(path, "(line)", String::new(), &e.to_string()))?,
    };
    let mut rows = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        let field = |k: &str| format!("[{i}].{k}");
        let int = |k: &str| {
            num(k)
                .filter(|x| *x >= 1.0)
                .map(|x| x as usize)
                .ok_or_else(|| {
                    SimError::invalid(
                        path,
                        &field(k),
                        format!("{:?}", v.get(k)),
                        "missing or below 1",
                    )
                })
        };
        let secs = |ms: &str, s: &str| {
            num(ms)
                .map(|x| x * 1e-3)
                .or_else(|| num(s))
                .filter(|x| *x > 0.0)
                .ok_or_else(|| {
                    SimError::invalid(
                        path,
                        &field(ms),
                        format!("{:?}", v.get(ms)),
                        &format!("give {ms} or {s} (> 0)"),
                    )
                })
        };
        rows.push(OneBatchRow {
            batch: int("batch_size")?,
            input_len: int("input_len")?,
            output_len: int("output_len")?,
            prefill_s: secs("prefill_latency_ms", "prefill_latency")?,
            decode_s: secs("median_decode_latency_ms", "median_decode_latency")?,
        });
    }
    if rows.is_empty() {
        return Err(SimError::invalid(
            path,
            "(rows)",
            "[]",
            "no bench_one_batch rows",
        ));
    }
    Ok(rows)
}

/// A serving run from `doppel bench serve --json` (or any replay report).
pub fn load_serving(path: &str) -> Result<ServingRun, SimError> {
    let v = read_json(path)?;
    // The summary's median of `metric`, which must be > 0.
    let median = |metric: &str| {
        v.pointer(&format!("/summary/{metric}/median"))
            .and_then(Value::as_f64)
            .filter(|x| *x > 0.0)
            .ok_or_else(|| {
                let field = format!("summary.{metric}.median");
                SimError::invalid(path, &field, String::new(), "missing or not > 0")
            })
    };
    let (median_itl_ms, median_ttft_ms) = (median("itl_ms")?, median("ttft_ms")?);
    let list = v
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| SimError::invalid(path, "requests", String::new(), "missing"))?;
    let mut requests = Vec::new();
    for r in list {
        let get = |k: &str| r.get(k).and_then(Value::as_u64);
        if r.get("status").and_then(Value::as_str) != Some("done") {
            continue;
        }
        if let (Some(send), Some(p), Some(o)) =
            (get("send"), get("prompt_len"), get("output_tokens"))
        {
            if p > 0 && o > 0 {
                requests.push((send as f64 * 1e-6, p as usize, o as usize));
            }
        }
    }
    if requests.is_empty() {
        return Err(SimError::invalid(
            path,
            "requests",
            "[]",
            "no finished request",
        ));
    }
    Ok(ServingRun {
        origin: path.to_string(),
        requests,
        median_itl_ms,
        median_ttft_ms,
    })
}

/// Which of a table's rows time one prefill step.
#[derive(Clone, Copy, Debug)]
pub enum PrefillRows<'a> {
    /// Every row (SGLang's bench_one_batch prefills the whole batch in one step).
    All,
    /// Only these batch sizes: a tool that hands its engine the requests one by one (vLLM's
    /// `LLM.generate`) can split a batch's prefill over steps.
    Batches(&'a [usize]),
}

impl PrefillRows<'_> {
    fn has(&self, batch: usize) -> bool {
        match self {
            PrefillRows::All => true,
            PrefillRows::Batches(b) => b.contains(&batch),
        }
    }
}

/// The profile with host time `host_ns` and the fixed device parts the table then implies.
fn with_host(base: &Profile, rows: &[OneBatchRow], prefill: PrefillRows, host_ns: f64) -> Profile {
    let mut p = base.clone();
    p.engine.schedule_ns_per_step = host_ns;
    p.engine.schedule_ns_per_req = 0.0;
    p.launch = None;
    p.efficiency.decode_step_ns = 0.0;
    p.efficiency.prefill_step_ns = 0.0;
    let zero = RooflineCost::new(&p, 1);
    let mut dec: Vec<f64> = rows
        .iter()
        .map(|r| {
            let s = BatchShape::decode(r.batch, r.median_kv_len());
            r.decode_s * 1e9 - host_ns - zero.step_seconds(&s) * 1e9
        })
        .collect();
    let mut pre: Vec<f64> = rows
        .iter()
        .filter(|r| prefill.has(r.batch))
        .map(|r| {
            let s = BatchShape::prefill(r.batch, r.input_len);
            r.prefill_s * 1e9 - host_ns - zero.step_seconds(&s) * 1e9
        })
        .collect();
    p.efficiency.decode_step_ns = median(&mut dec).max(0.0).round();
    p.efficiency.prefill_step_ns = median(&mut pre).max(0.0).round();
    p
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median ITL and TTFT `p` gives one serving run, replayed open-loop at its send times.
pub fn replay(p: &Profile, run: &ServingRun) -> Result<Medians, SimError> {
    let requests = run
        .requests
        .iter()
        .map(|&(ms, prompt, out)| ExplicitRequest {
            arrival_ms: ms,
            prompt: None,
            prompt_len: Some(prompt),
            prefix_group: None,
            prefix_len: None,
            pages: None,
            output_len: out,
            ignore_eos: true,
        })
        .collect();
    // A valid one-request trace, then the run's requests (validated below by the replay).
    let text =
        "profile: x\nworkload: {kind: requests, requests: [{prompt_len: 1, output_len: 1}]}\n";
    let mut t = Trace::parse(text, &run.origin)?;
    t.profile = p.name.clone();
    t.workload = Workload::Requests {
        page_len: None,
        requests,
    };
    let work = expand(&t, p.model.vocab);
    let o = simulate_work(&t, p, work, &run.origin, SimOptions::default())?;
    let s = summarize(&o, None, None);
    Ok(Medians {
        itl_ms: s.itl_ms.median,
        ttft_ms: s.ttft_ms.median,
    })
}

/// A replay's median ITL and TTFT.
#[derive(Clone, Copy, Debug)]
pub struct Medians {
    /// Median inter-token latency.
    pub itl_ms: f64,
    /// Median time to first token.
    pub ttft_ms: f64,
}

/// Fit `base` to a peer's table and serving runs; the profile and its host time's error.
pub fn fit(
    base: &Profile,
    rows: &[OneBatchRow],
    prefill: PrefillRows,
    runs: &[ServingRun],
    name: &str,
    source: &str,
) -> Result<Profile, SimError> {
    if runs.is_empty() {
        return Err(SimError::invalid(
            "command line",
            "--serving",
            String::new(),
            "the host/device split needs at least one serving run",
        ));
    }
    if !base.decode_table.is_empty() {
        return Err(SimError::invalid(
            "command line",
            "--base",
            base.name.clone(),
            "has a measured decode table, which would price every decode step and hide the \
             fitted decode parts: use a roofline base",
        ));
    }
    let mut base = base.clone();
    let kv_fitted = fit_kv_bandwidth(&base, rows)?;
    if let Some(share) = kv_fitted {
        base.efficiency.kv_bandwidth = share;
    }
    let base = &base;
    if !rows.iter().any(|r| prefill.has(r.batch)) {
        return Err(SimError::invalid(
            "command line",
            "--prefill-batch",
            format!("{prefill:?}"),
            "no row of the table has that batch size",
        ));
    }
    let top = rows
        .iter()
        .map(|r| r.decode_s * 1e9)
        .fold(f64::INFINITY, f64::min);
    let score = |h: f64| -> Result<f64, SimError> {
        let p = with_host(base, rows, prefill, h);
        let mut e = 0.0;
        for r in runs {
            e += (replay(&p, r)?.itl_ms / r.median_itl_ms).ln().powi(2);
        }
        Ok(e)
    };
    let scored = |grid: Vec<f64>| -> Result<Vec<(f64, f64)>, SimError> {
        grid.into_iter().map(|h| score(h).map(|e| (h, e))).collect()
    };
    let coarse = scored(
        (0..)
            .map(|k| k as f64 * 50e3)
            .take_while(|h| *h < top)
            .collect(),
    )?;
    // Every local minimum of the coarse grid, refined to 5 us.
    let mut minima: Vec<(f64, f64)> = Vec::new();
    for (i, &(h, e)) in coarse.iter().enumerate() {
        let left = i.checked_sub(1).map_or(f64::INFINITY, |j| coarse[j].1);
        let right = coarse.get(i + 1).map_or(f64::INFINITY, |x| x.1);
        if e <= left && e <= right {
            let fine = scored(
                (-10..=10)
                    .map(|k| h + k as f64 * 5e3)
                    .filter(|x| *x >= 0.0 && *x < top)
                    .collect(),
            )?;
            if let Some(&m) = fine.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
                minima.push(m);
            }
        }
    }
    // The overlap loop's step is the longer of host and device, so a light run cannot tell a
    // host time H from table - H: of the minima within 0.5 % of the best ITL, take the
    // smallest (the host hidden behind the device, as a GPU-bound server runs).
    let best = minima.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
    let tie = best + 0.005f64.powi(2) * runs.len() as f64;
    let fine = minima.iter().find(|x| x.1 <= tie).map_or(0.0, |x| x.0);
    let mut p = with_host(base, rows, prefill, fine);
    fit_request_path(&mut p, runs)?;
    p.name = name.to_string();
    p.calibrated = true;
    p.source = match kv_fitted {
        Some(_) => format!("{source}; KV read rate from the table's rows at two prompt lengths"),
        None => source.to_string(),
    };
    Ok(p)
}

/// Sets the request path (`engine.http_ns`) so the least loaded run (the lowest measured median
/// TTFT) has its median TTFT when each of its first requests is replayed alone: at light load
/// TTFT is the request path plus one prefill, and a peer's path (API server, tokenizer and
/// detokenizer processes and their hand-overs) is what the one-batch table does not see. Alone,
/// because a profile whose decode is slower than the peer's would otherwise overlap a request
/// with the one before it and put that wait into the path. Alone, TTFT moves one for one with
/// the path; the second round only absorbs the replay's rounding of arrivals to whole ns.
fn fit_request_path(p: &mut Profile, runs: &[ServingRun]) -> Result<(), SimError> {
    let Some(light) = runs
        .iter()
        .min_by(|a, b| a.median_ttft_ms.total_cmp(&b.median_ttft_ms))
    else {
        return Ok(());
    };
    const GAP_MS: f64 = 1e5;
    let alone = ServingRun {
        origin: light.origin.clone(),
        requests: (light.requests.iter().take(64).enumerate())
            .map(|(i, &(_, prompt, out))| (i as f64 * GAP_MS, prompt, out))
            .collect(),
        ..*light
    };
    for _ in 0..2 {
        let sim = replay(p, &alone)?.ttft_ms;
        p.engine.http_ns = (p.engine.http_ns + (light.median_ttft_ms - sim) * 1e6).max(0.0);
    }
    Ok(())
}

/// The fitted profile as YAML, headed by where it came from.
pub fn profile_yaml(p: &Profile) -> Result<String, SimError> {
    let body = serde_yaml::to_string(p).map_err(|e| SimError::Yaml {
        file: p.name.clone(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    Ok(format!(
        "# Fitted by `doppel sim calibrate --one-batch ... --serving ...` (docs/fidelity.md).\n{body}"
    ))
}

#[cfg(test)]
mod tests;
