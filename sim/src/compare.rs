//! `doppel sim compare REAL.json SIM.json`: the error of each bench_serving metric of a simulated
//! run against a real one, and where their batch sequences part.
//!
//! Both files are replay reports (`doppel exec replay --json`, `doppel sim replay --json`); the
//! per-step batch sequence is the report's `steps` array, written by [`report_with_steps`].

use crate::backend::StepRecord;
use crate::driver::{Outcome, RealTiming};
use crate::error::SimError;
use crate::metrics::Summary;
use crate::trace::Trace;
use doppel_core::ForwardMode;
use serde_json::Value;
use std::fmt::Write;

/// The JSON report (`report::to_json`) plus a `steps` array: one
/// `{step, mode, batch, tokens, start_ns, end_ns}` object per executed step, and where the run
/// recorded them, the engine loop's iteration times (`iterations_ns`).
pub fn report_with_steps(trace: &Trace, o: &Outcome, m: &Summary) -> String {
    let base = crate::report::to_json(trace, o, m);
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&base) else {
        return base;
    };
    let steps: Vec<Value> = o.step_records.iter().map(step_json).collect();
    map.insert("steps".into(), Value::Array(steps));
    if !o.iterations.is_empty() {
        map.insert("iterations_ns".into(), o.iterations.clone().into());
    }
    // A map of plain values always serializes.
    serde_json::to_string_pretty(&Value::Object(map)).unwrap_or(base)
}

fn mode_name(m: ForwardMode) -> &'static str {
    match m {
        ForwardMode::Extend => "prefill",
        ForwardMode::Decode => "decode",
        ForwardMode::Mixed => "mixed",
    }
}

fn step_json(s: &StepRecord) -> Value {
    let mut v = serde_json::json!({
        "step": s.step,
        "mode": mode_name(s.mode),
        "batch": s.batch,
        "tokens": s.tokens,
        "kv_tokens": s.kv_tokens,
        "scheduled_ns": s.scheduled,
        "start_ns": s.start,
        "end_ns": s.end,
        "launched_ns": s.launched,
        "device_ns": s.device_ns,
    });
    if let (Some((ns, shape)), Value::Object(map)) = (&s.model, &mut v) {
        map.insert("model_device_ns".into(), (*ns).into());
        map.insert("extend_reqs".into(), shape.extend_reqs.into());
        map.insert("max_kv".into(), shape.max_kv.into());
        map.insert("max_seq".into(), shape.max_seq.into());
        map.insert("max_seq_extend".into(), shape.max_seq_extend.into());
        map.insert("shared_kv_tokens".into(), shape.shared_kv_tokens.into());
    }
    v
}

/// What identifies a step in the batch sequence: kind, requests, tokens computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSig {
    /// prefill, decode or mixed.
    pub mode: String,
    /// Requests in the batch.
    pub batch: u64,
    /// Tokens computed.
    pub tokens: u64,
}

impl std::fmt::Display for StepSig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} batch {} tokens {}",
            self.mode, self.batch, self.tokens
        )
    }
}

/// One metric of both runs.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    /// Label, as in the result table.
    pub name: String,
    /// The real run's value.
    pub real: f64,
    /// The simulated run's value.
    pub sim: f64,
    /// Fidelity target on |error| in percent, where the project has one.
    pub target_pct: Option<f64>,
}

impl MetricRow {
    /// (sim - real) / real in percent (0 when both are 0, infinite when only real is 0).
    pub fn error_pct(&self) -> f64 {
        if self.real == 0.0 {
            if self.sim == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (self.sim - self.real) / self.real * 100.0
        }
    }

    /// Within the target (true when there is none).
    pub fn ok(&self) -> bool {
        self.target_pct
            .map(|t| self.error_pct().abs() <= t)
            .unwrap_or(true)
    }
}

/// The comparison of two reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Metric rows.
    pub rows: Vec<MetricRow>,
    /// Steps of the real run (None when its report has no `steps`).
    pub real_steps: Option<usize>,
    /// Steps of the simulated run.
    pub sim_steps: Option<usize>,
    /// Steps equal at the same index.
    pub same_steps: usize,
    /// First index where the sequences differ: (index, real step, sim step); None if identical.
    pub first_difference: Option<(usize, Option<StepSig>, Option<StepSig>)>,
}

impl Comparison {
    /// Steps equal at the same index over the longer sequence (1 when both are empty).
    pub fn same_fraction(&self) -> f64 {
        let n = self
            .real_steps
            .unwrap_or(0)
            .max(self.sim_steps.unwrap_or(0));
        if n == 0 {
            1.0
        } else {
            self.same_steps as f64 / n as f64
        }
    }
}

fn bad(file: &str, field: &str, why: &str) -> SimError {
    SimError::Invalid {
        file: file.to_string(),
        field: field.to_string(),
        value: "-".into(),
        why: why.to_string(),
        line: None,
    }
}

/// Read a replay report.
pub fn load_report(path: &str) -> Result<Value, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
        path: path.to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| SimError::Yaml {
        file: path.to_string(),
        line: e.line(),
        column: e.column(),
        message: format!("not a JSON report: {e}"),
    })
}

fn number(v: &Value, file: &str, path: &[&str]) -> Result<f64, SimError> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .ok_or_else(|| bad(file, &path.join("."), "missing from the report"))?;
    }
    cur.as_f64()
        .ok_or_else(|| bad(file, &path.join("."), "not a number"))
}

fn steps(v: &Value, file: &str) -> Result<Option<Vec<StepSig>>, SimError> {
    let Some(arr) = v.get("steps") else {
        return Ok(None);
    };
    let arr = arr
        .as_array()
        .ok_or_else(|| bad(file, "steps", "not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, s)| {
            let field = |k: &str| format!("steps[{i}].{k}");
            Ok(StepSig {
                mode: s
                    .get("mode")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(file, &field("mode"), "missing or not a string"))?
                    .to_string(),
                batch: s
                    .get("batch")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(file, &field("batch"), "missing or not an integer"))?,
                tokens: s
                    .get("tokens")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(file, &field("tokens"), "missing or not an integer"))?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The step records and loop iteration times of a report with times (`doppel exec replay
/// --json`), for `doppel sim replay --timing-from`. Reports from before the iterations were
/// recorded (the stored fidelity runs) have none.
pub fn real_timing(v: &Value, file: &str) -> Result<RealTiming, SimError> {
    let iterations = match v.get("iterations_ns") {
        None => None,
        Some(arr) => Some(
            arr.as_array()
                .ok_or_else(|| bad(file, "iterations_ns", "not an array"))?
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    t.as_u64()
                        .ok_or_else(|| bad(file, &format!("iterations_ns[{i}]"), "not an integer"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(RealTiming {
        steps: step_records(v, file)?,
        iterations,
    })
}

fn step_records(v: &Value, file: &str) -> Result<Vec<StepRecord>, SimError> {
    let arr = v
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(file, "steps", "missing or not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, s)| {
            let int = |k: &str| {
                s.get(k).and_then(Value::as_u64).ok_or_else(|| {
                    bad(
                        file,
                        &format!("steps[{i}].{k}"),
                        "missing or not an integer (a report from an older doppel?)",
                    )
                })
            };
            let mode = match s.get("mode").and_then(Value::as_str) {
                Some("prefill") => ForwardMode::Extend,
                Some("decode") => ForwardMode::Decode,
                Some("mixed") => ForwardMode::Mixed,
                _ => {
                    return Err(bad(
                        file,
                        &format!("steps[{i}].mode"),
                        "expected prefill, decode or mixed",
                    ))
                }
            };
            Ok(StepRecord {
                step: int("step")?,
                start: int("start_ns")?,
                end: int("end_ns")?,
                scheduled: int("scheduled_ns")?,
                launched: int("launched_ns")?,
                device_ns: s.get("device_ns").and_then(Value::as_u64),
                mode,
                batch: int("batch")? as u32,
                tokens: int("tokens")? as u32,
                kv_tokens: int("kv_tokens")?,
                model: None,
            })
        })
        .collect()
}

/// Compare two parsed reports (`real_file`/`sim_file` name them in errors).
pub fn compare(
    real: &Value,
    real_file: &str,
    sim: &Value,
    sim_file: &str,
) -> Result<Comparison, SimError> {
    let mut rows = Vec::new();
    let dists: [(&str, &str, [Option<f64>; 3]); 4] = [
        ("TTFT", "ttft_ms", [None, Some(5.0), None]),
        ("ITL", "itl_ms", [None, Some(3.0), None]),
        ("TPOT", "tpot_ms", [None, Some(3.0), None]),
        ("E2E", "e2e_ms", [None, None, None]),
    ];
    for (label, key, targets) in dists {
        for (stat, target) in ["mean", "median", "p99"].into_iter().zip(targets) {
            rows.push(MetricRow {
                name: format!("{stat} {label} (ms)"),
                real: number(real, real_file, &["summary", key, stat])?,
                sim: number(sim, sim_file, &["summary", key, stat])?,
                target_pct: target,
            });
        }
    }
    for (label, key, target) in [
        (
            "Output token throughput (tok/s)",
            "output_throughput",
            Some(3.0),
        ),
        ("Request throughput (req/s)", "request_throughput", None),
        ("Total token throughput (tok/s)", "total_throughput", None),
        ("Benchmark duration (s)", "duration_s", None),
    ] {
        rows.push(MetricRow {
            name: label.into(),
            real: number(real, real_file, &["summary", key])?,
            sim: number(sim, sim_file, &["summary", key])?,
            target_pct: target,
        });
    }
    let rs = steps(real, real_file)?;
    let ss = steps(sim, sim_file)?;
    let (mut same, mut first) = (0usize, None);
    if let (Some(a), Some(b)) = (&rs, &ss) {
        for i in 0..a.len().max(b.len()) {
            let (x, y) = (a.get(i), b.get(i));
            if x.is_some() && x == y {
                same += 1;
            } else if first.is_none() {
                first = Some((i, x.cloned(), y.cloned()));
            }
        }
    }
    Ok(Comparison {
        rows,
        real_steps: rs.as_ref().map(Vec::len),
        sim_steps: ss.as_ref().map(Vec::len),
        same_steps: same,
        first_difference: first,
    })
}

/// The printed comparison: one row per metric, then the batch sequences.
pub fn format(c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<34} {:>12} {:>12} {:>9}  target",
        "metric", "real", "sim", "error"
    );
    for r in &c.rows {
        let target = match r.target_pct {
            Some(t) => format!(
                "{:<6} {}",
                format!("±{t}%"),
                if r.ok() { "ok" } else { "MISS" }
            ),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<34} {:>12.3} {:>12.3} {:>+8.2}%  {}",
            r.name,
            r.real,
            r.sim,
            r.error_pct(),
            target
        );
    }
    match (c.real_steps, c.sim_steps) {
        (Some(a), Some(b)) => {
            let pct = c.same_fraction() * 100.0;
            let _ = writeln!(
                s,
                "batch sequence: {a} real steps, {b} simulated; {} identical at the same index ({pct:.1}%, target 95%: {})",
                c.same_steps,
                if pct >= 95.0 { "ok" } else { "MISS" }
            );
            match &c.first_difference {
                None => {
                    let _ = writeln!(s, "batch sequences are identical");
                }
                Some((i, x, y)) => {
                    let show = |v: &Option<StepSig>| {
                        v.as_ref()
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "(none)".into())
                    };
                    let _ = writeln!(
                        s,
                        "first difference at step {i}: real {} | sim {}",
                        show(x),
                        show(y)
                    );
                }
            }
        }
        _ => {
            let _ = writeln!(
                s,
                "batch sequence: not compared (a report has no `steps`; write both with --json from `doppel exec replay` / `doppel sim replay`)"
            );
        }
    }
    s
}
