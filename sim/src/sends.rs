//! Replaying a benchmark at the times its client really sent (`sim replay --sends-from`).
//!
//! A burst of a thousand requests is not sent at one instant: the bench client opens a
//! connection per request, and on the H100 side-by-side runs the last of 1,024 left 110-180 ms
//! after the first (docs/fidelity.md). The server saw that spread, and TTFT is measured from
//! each request's own send. For an open-loop trace (no concurrency cap, no follow-up turns:
//! the send times do not depend on the server) the report's send times can stand in for the
//! schedule.

use crate::error::SimError;
use crate::trace::Trace;
use crate::workload::{Expanded, Start};
use doppel_core::TimeNs;
use serde_json::Value;

/// Every request's send time (ns from the run's start) in a report, by request id.
pub fn load_sends(report: &Value, file: &str) -> Result<Vec<TimeNs>, SimError> {
    let list = report
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| SimError::invalid(file, "requests", "-", "missing from the report"))?;
    let mut sends = vec![None; list.len()];
    for (k, r) in list.iter().enumerate() {
        let id = r.get("id").and_then(Value::as_u64).map(|i| i as usize);
        let send = r.get("send").and_then(Value::as_u64);
        match (id, send) {
            (Some(i), Some(t)) if i < sends.len() && sends[i].is_none() => sends[i] = Some(t),
            _ => {
                return Err(SimError::invalid(
                    file,
                    &format!("requests[{k}]"),
                    format!("id {id:?}, send {send:?}"),
                    "needs a unique id below the request count and a send time",
                ))
            }
        }
    }
    Ok(sends.into_iter().flatten().collect())
}

/// Give `work`'s requests the send times `sends` (by request index). Refused where the
/// schedule depends on the server: a concurrency cap or follow-up turns.
pub fn apply_sends(
    trace: &Trace,
    work: &mut Expanded,
    sends: &[TimeNs],
    file: &str,
) -> Result<(), SimError> {
    if let Some(c) = trace.arrival.max_concurrency {
        return Err(SimError::invalid(
            file,
            "arrival.max_concurrency",
            c.to_string(),
            "a capped run's sends follow the server's completions: replay its schedule instead",
        ));
    }
    if sends.len() != work.requests.len() {
        return Err(SimError::invalid(
            file,
            "requests",
            sends.len().to_string(),
            &format!("the trace has {} requests", work.requests.len()),
        ));
    }
    for (i, (r, &t)) in work.requests.iter_mut().zip(sends).enumerate() {
        match r.start {
            Start::At(_) => r.start = Start::At(t),
            Start::After { .. } => {
                return Err(SimError::invalid(
                    file,
                    &format!("requests[{i}]"),
                    t.to_string(),
                    "a follow-up turn is sent after its reply, not at a fixed time",
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::expand;

    fn trace(arrival: &str) -> Trace {
        let text = format!("profile: a100-80g/qwen3-0.6b/sglang\nworkload: {{kind: random, num_requests: 3, input_len: 64, output_len: 8}}\narrival: {arrival}\n");
        Trace::parse(&text, "t.yaml").unwrap()
    }

    #[test]
    fn sends_replace_the_schedule_by_id_and_capped_runs_are_refused() {
        let report: Value = serde_json::from_str(
            r#"{"requests": [{"id": 1, "send": 500}, {"id": 0, "send": 100}, {"id": 2, "send": 900}]}"#,
        )
        .unwrap();
        let sends = load_sends(&report, "r.json").unwrap();
        assert_eq!(sends, vec![100, 500, 900]);
        let t = trace("{pattern: burst}");
        let mut w = expand(&t, 1000);
        apply_sends(&t, &mut w, &sends, "r.json").unwrap();
        let starts: Vec<Start> = w.requests.iter().map(|r| r.start).collect();
        assert_eq!(starts, vec![Start::At(100), Start::At(500), Start::At(900)]);
        let e = apply_sends(&t, &mut w, &sends[..2], "r.json").unwrap_err();
        assert!(e.to_string().contains("3 requests"), "{e}");
        let capped = trace("{pattern: burst, max_concurrency: 2}");
        let e = apply_sends(&capped, &mut w, &sends, "r.json").unwrap_err();
        assert!(e.to_string().contains("max_concurrency"), "{e}");
        let dup: Value =
            serde_json::from_str(r#"{"requests": [{"id": 0, "send": 1}, {"id": 0, "send": 2}]}"#)
                .unwrap();
        let e = load_sends(&dup, "d.json").unwrap_err();
        assert!(e.to_string().contains("requests[1]"), "{e}");
    }
}
