//! Semantic checks of a parsed trace: each error names the field, the value and, where it can be
//! found, the line.

use super::{ArrivalPattern, ExplicitRequest, Trace, Workload};
use crate::error::SimError;
use doppel_core::{EvictionPolicy, Policy};

/// Where a dotted field sits in the YAML text: the line of its last component found (best effort).
fn find_line(text: &str, field: &str) -> Option<usize> {
    field
        .split('.')
        .rev()
        .map(|k| k.split('[').next().unwrap_or(k))
        .find_map(|k| crate::error::locate(text, k))
        .map(|(l, _)| l)
}

impl Trace {
    pub(super) fn validate(&self, text: &str, origin: &str) -> Result<(), SimError> {
        let bad = |field: &str, value: String, why: &str| SimError::Invalid {
            file: origin.to_string(),
            field: field.to_string(),
            value,
            why: why.to_string(),
            line: find_line(text, field),
        };
        if self.vocab == Some(0) {
            return Err(bad("vocab", "0".into(), "must be at least 1"));
        }
        let e = &self.engine;
        if Policy::parse(&e.policy).is_none() {
            let known: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
            return Err(bad(
                "engine.policy",
                e.policy.clone(),
                &format!("unknown policy; known: {}", known.join(", ")),
            ));
        }
        if EvictionPolicy::parse(&e.eviction).is_none() {
            let known: Vec<_> = EvictionPolicy::ALL.iter().map(|p| p.name()).collect();
            return Err(bad(
                "engine.eviction",
                e.eviction.clone(),
                &format!("unknown eviction policy; known: {}", known.join(", ")),
            ));
        }
        if let Some(c) = e.chunked_prefill_size {
            if c == 0 || c < -1 {
                return Err(bad(
                    "engine.chunked_prefill_size",
                    c.to_string(),
                    "must be a positive chunk size or -1 (no chunking)",
                ));
            }
        }
        if e.tp_size == 0 || !e.tp_size.is_power_of_two() {
            return Err(bad(
                "engine.tp_size",
                e.tp_size.to_string(),
                "must be a power of two (1, 2, 4, 8)",
            ));
        }
        if let Some(f) = e.mem_fraction_static {
            if !(f > 0.0 && f <= 1.0) {
                return Err(bad(
                    "engine.mem_fraction_static",
                    f.to_string(),
                    "must be in (0, 1]",
                ));
            }
        }
        if e.kv_capacity_tokens == Some(0) {
            return Err(bad(
                "engine.kv_capacity_tokens",
                "0".into(),
                "must be at least 1",
            ));
        }
        let rate_needed = |rate: Option<f64>| -> Result<f64, SimError> {
            match rate {
                Some(r) if r.is_finite() && r > 0.0 => Ok(r),
                Some(r) => Err(bad(
                    "arrival.rate",
                    r.to_string(),
                    "must be a positive number of requests per second",
                )),
                None => Err(bad(
                    "arrival.rate",
                    "(missing)".into(),
                    "poisson and gamma arrivals need a rate",
                )),
            }
        };
        match self.arrival.pattern {
            ArrivalPattern::Burst => {}
            ArrivalPattern::Poisson => {
                rate_needed(self.arrival.rate)?;
            }
            ArrivalPattern::Gamma => {
                rate_needed(self.arrival.rate)?;
                match self.arrival.burstiness {
                    Some(b) if b.is_finite() && b > 0.0 => {}
                    Some(b) => {
                        return Err(bad("arrival.burstiness", b.to_string(), "must be positive"))
                    }
                    None => {
                        return Err(bad(
                            "arrival.burstiness",
                            "(missing)".into(),
                            "gamma arrivals need a burstiness",
                        ))
                    }
                }
            }
            ArrivalPattern::Concurrency => {
                if self.arrival.max_concurrency.is_none() {
                    return Err(bad(
                        "arrival.max_concurrency",
                        "(missing)".into(),
                        "the concurrency pattern needs max_concurrency",
                    ));
                }
            }
        }
        if self.arrival.max_concurrency == Some(0) {
            return Err(bad(
                "arrival.max_concurrency",
                "0".into(),
                "must be at least 1",
            ));
        }
        let positive = |field: &str, v: usize| -> Result<(), SimError> {
            if v == 0 {
                Err(bad(field, "0".into(), "must be at least 1"))
            } else {
                Ok(())
            }
        };
        let ratio = |field: &str, r: f64| -> Result<(), SimError> {
            if (0.0..=1.0).contains(&r) {
                Ok(())
            } else {
                Err(bad(field, r.to_string(), "must be in [0, 1]"))
            }
        };
        match &self.workload {
            Workload::Requests { requests, page_len } => {
                if requests.is_empty() {
                    return Err(bad(
                        "workload.requests",
                        "[]".into(),
                        "needs at least one request",
                    ));
                }
                for (i, r) in requests.iter().enumerate() {
                    let f = |name: &str| format!("workload.requests[{i}].{name}");
                    if !(r.arrival_ms.is_finite() && r.arrival_ms >= 0.0) {
                        return Err(bad(
                            &f("arrival_ms"),
                            r.arrival_ms.to_string(),
                            "must be a non-negative time",
                        ));
                    }
                    let len = match (&r.prompt, r.prompt_len) {
                        (Some(p), None) => p.len(),
                        (None, Some(l)) => l,
                        _ => {
                            return Err(bad(
                                &f("prompt"),
                                "(prompt and prompt_len)".into(),
                                "give exactly one of prompt and prompt_len",
                            ));
                        }
                    };
                    positive(&f("prompt_len"), len)?;
                    positive(&f("output_len"), r.output_len)?;
                    match (r.prefix_group, r.prefix_len) {
                        (Some(_), Some(p)) if p <= len && r.prompt.is_none() => {}
                        (Some(_), Some(p)) if r.prompt.is_some() => {
                            return Err(bad(&f("prefix_group"), p.to_string(), "prefix groups apply to prompt_len requests, not explicit token lists"));
                        }
                        (Some(_), Some(p)) => {
                            return Err(bad(
                                &f("prefix_len"),
                                p.to_string(),
                                &format!("longer than prompt_len {len}"),
                            ));
                        }
                        (None, None) => {}
                        _ => {
                            return Err(bad(
                                &f("prefix_group"),
                                "(one of two)".into(),
                                "prefix_group and prefix_len go together",
                            ))
                        }
                    }
                    check_pages(r, *page_len, len, &f)
                        .map_err(|(field, value, why)| bad(&field, value, &why))?;
                }
            }
            Workload::Random {
                num_requests,
                input_len,
                output_len,
                range_ratio,
            } => {
                positive("workload.num_requests", *num_requests)?;
                positive("workload.input_len", *input_len)?;
                positive("workload.output_len", *output_len)?;
                ratio("workload.range_ratio", *range_ratio)?;
            }
            Workload::SharedPrefix {
                num_groups,
                prompts_per_group,
                system_prompt_len,
                question_len,
                output_len,
            } => {
                positive("workload.num_groups", *num_groups)?;
                positive("workload.prompts_per_group", *prompts_per_group)?;
                positive("workload.system_prompt_len", *system_prompt_len)?;
                positive("workload.question_len", *question_len)?;
                positive("workload.output_len", *output_len)?;
            }
            Workload::MultiTurn {
                num_sessions,
                turns,
                first_prompt_len,
                turn_prompt_len,
                output_len,
                think_time_ms,
            } => {
                positive("workload.num_sessions", *num_sessions)?;
                positive("workload.turns", *turns)?;
                positive("workload.first_prompt_len", *first_prompt_len)?;
                positive("workload.turn_prompt_len", *turn_prompt_len)?;
                positive("workload.output_len", *output_len)?;
                if !(think_time_ms.is_finite() && *think_time_ms >= 0.0) {
                    return Err(bad(
                        "workload.think_time_ms",
                        think_time_ms.to_string(),
                        "must be a non-negative time",
                    ));
                }
            }
            Workload::LongContext {
                num_requests,
                input_len,
                output_len,
                range_ratio,
                short_fraction,
                short_input_len,
            } => {
                positive("workload.num_requests", *num_requests)?;
                positive("workload.input_len", *input_len)?;
                positive("workload.output_len", *output_len)?;
                ratio("workload.range_ratio", *range_ratio)?;
                ratio("workload.short_fraction", *short_fraction)?;
                if *short_fraction > 0.0 {
                    positive("workload.short_input_len", *short_input_len)?;
                }
            }
        }
        Ok(())
    }
}

/// A request's hashed pages: they need the workload's page length, a prompt_len request without
/// a prefix group, and must fit in the prompt.
fn check_pages(
    r: &ExplicitRequest,
    page_len: Option<usize>,
    len: usize,
    f: &dyn Fn(&str) -> String,
) -> Result<(), (String, String, String)> {
    let Some(pages) = &r.pages else {
        return Ok(());
    };
    let Some(page) = page_len.filter(|&p| p > 0) else {
        return Err((
            "workload.page_len".into(),
            format!("{page_len:?}"),
            format!(
                "{} has pages: give the page length (at least 1)",
                f("pages")
            ),
        ));
    };
    if r.prompt.is_some() || r.prefix_group.is_some() {
        return Err((
            f("pages"),
            format!("{} hashes", pages.len()),
            "pages describe a prompt_len request without prefix_group".into(),
        ));
    }
    if pages.len() * page > len {
        return Err((
            f("pages"),
            format!("{} hashes", pages.len()),
            format!(
                "{} pages of {page} tokens exceed prompt_len {len}",
                pages.len()
            ),
        ));
    }
    Ok(())
}
