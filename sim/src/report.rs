//! Machine-readable outputs: the JSON report and the Chrome trace (Perfetto-loadable) timeline.

use crate::driver::{Outcome, ReqRecord};
use crate::metrics::Summary;
use doppel_core::ForwardMode;
use serde::Serialize;
use std::fmt::Write;

#[derive(Serialize)]
struct ConfigJson<'a> {
    trace: &'a str,
    profile: &'a str,
    seed: u64,
    policy: &'a str,
    page_size: usize,
    chunked_prefill_size: Option<usize>,
    max_prefill_tokens: usize,
    kv_capacity_tokens: usize,
    overlap: bool,
    tp_size: usize,
}

#[derive(Serialize)]
struct RequestJson {
    id: usize,
    #[serde(flatten)]
    record: ReqRecord,
    ttft_ms: f64,
    e2e_ms: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    config: ConfigJson<'a>,
    summary: &'a Summary,
    refused: Vec<(usize, &'a str)>,
    requests: Vec<RequestJson>,
}

/// The JSON report: configuration, every figure, refusals and per-request records.
pub fn to_json(trace: &crate::trace::Trace, o: &Outcome, m: &Summary) -> String {
    let cfg = o.config.clone().unwrap_or_default();
    let report = Report {
        config: ConfigJson {
            trace: trace.name(),
            profile: &trace.profile,
            seed: trace.seed,
            policy: &trace.engine.policy,
            page_size: cfg.page_size,
            chunked_prefill_size: cfg.chunked_prefill_size,
            max_prefill_tokens: cfg.max_prefill_tokens,
            kv_capacity_tokens: cfg.capacity_tokens(),
            overlap: o.overlap,
            tp_size: trace.engine.tp_size,
        },
        summary: m,
        refused: o.refused.iter().map(|(i, e)| (*i, e.as_str())).collect(),
        requests: o
            .records
            .iter()
            .enumerate()
            .map(|(id, r)| RequestJson {
                id,
                record: *r,
                ttft_ms: r.first.saturating_sub(r.send) as f64 * 1e-6,
                e2e_ms: r.finish.saturating_sub(r.send) as f64 * 1e-6,
            })
            .collect(),
    };
    // Serializing plain structs of numbers and strings cannot fail.
    serde_json::to_string_pretty(&report).unwrap_or_default()
}

fn us(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

/// A Chrome trace: GPU steps on one track, each request (queued, prefill to first token, decode)
/// on reusable lanes of a second process.
pub fn to_chrome_trace(o: &Outcome) -> String {
    let mut s = String::with_capacity(128 * (o.step_records.len() + 2 * o.records.len()) + 256);
    s.push_str("{\"traceEvents\":[\n");
    s.push_str(
        "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"args\":{\"name\":\"virtual GPU\"}},\n",
    );
    s.push_str(
        "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":2,\"args\":{\"name\":\"requests\"}}",
    );
    for st in &o.step_records {
        let name = match st.mode {
            ForwardMode::Extend => "prefill",
            ForwardMode::Decode => "decode",
            ForwardMode::Mixed => "mixed",
        };
        let _ = write!(
            s,
            ",\n{{\"name\":\"{name}\",\"ph\":\"X\",\"pid\":1,\"tid\":1,\"ts\":{},\"dur\":{},\"args\":{{\"step\":{},\"batch\":{},\"tokens\":{}}}}}",
            us(st.start),
            us(st.end - st.start),
            st.step,
            st.batch,
            st.tokens
        );
    }
    // Lanes: the first lane free at the request's send time (requests sorted by send time).
    let mut order: Vec<usize> = (0..o.records.len()).collect();
    order.sort_by_key(|&i| (o.records[i].send, i));
    let mut lanes: Vec<u64> = Vec::new();
    for i in order {
        let r = &o.records[i];
        if r.finish == 0 && r.first == 0 {
            continue;
        }
        let lane = match lanes.iter().position(|&free| free <= r.send) {
            Some(l) => l,
            None => {
                lanes.push(0);
                lanes.len() - 1
            }
        };
        lanes[lane] = r.finish + 1;
        let first = if r.first > 0 { r.first } else { r.finish };
        let _ = write!(
            s,
            ",\n{{\"name\":\"req {i} ttft\",\"ph\":\"X\",\"pid\":2,\"tid\":{lane},\"ts\":{},\"dur\":{},\"args\":{{\"prompt\":{},\"cached\":{},\"status\":\"{:?}\"}}}}",
            us(r.send),
            us(first - r.send),
            r.prompt_len,
            r.cached_tokens,
            r.status
        );
        if r.finish > first {
            let _ = write!(
                s,
                ",\n{{\"name\":\"req {i} decode\",\"ph\":\"X\",\"pid\":2,\"tid\":{lane},\"ts\":{},\"dur\":{},\"args\":{{\"output\":{},\"retractions\":{}}}}}",
                us(first),
                us(r.finish - first),
                r.output_tokens,
                r.retractions
            );
        }
    }
    s.push_str("\n],\"displayTimeUnit\":\"ms\"}\n");
    s
}
