//! Latency targets: `ttft_p99<500ms,itl_p99<50ms`.

use crate::error::SimError;
use crate::metrics::{Dist, Summary};

/// Which latency a target bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Latency {
    /// Time to first token.
    Ttft,
    /// Inter-token latency.
    Itl,
    /// Time per output token.
    Tpot,
    /// End-to-end latency.
    E2e,
}

/// Which statistic of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    /// Mean.
    Mean,
    /// Median.
    Median,
    /// 90th percentile.
    P90,
    /// 95th percentile.
    P95,
    /// 99th percentile.
    P99,
    /// Maximum.
    Max,
}

/// One target: `latency_stat < limit`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Target {
    /// The latency.
    pub latency: Latency,
    /// Its statistic.
    pub stat: Stat,
    /// The bound in milliseconds (strict).
    pub limit_ms: f64,
}

impl Target {
    /// The target as written (`ttft_p99`).
    pub fn label(&self) -> String {
        let l = match self.latency {
            Latency::Ttft => "ttft",
            Latency::Itl => "itl",
            Latency::Tpot => "tpot",
            Latency::E2e => "e2e",
        };
        let s = match self.stat {
            Stat::Mean => "mean",
            Stat::Median => "median",
            Stat::P90 => "p90",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::Max => "max",
        };
        format!("{l}_{s}")
    }

    /// The measured value (ms) in a run's figures.
    pub fn value(&self, m: &Summary) -> f64 {
        let d: &Dist = match self.latency {
            Latency::Ttft => &m.ttft_ms,
            Latency::Itl => &m.itl_ms,
            Latency::Tpot => &m.tpot_ms,
            Latency::E2e => &m.e2e_ms,
        };
        match self.stat {
            Stat::Mean => d.mean,
            Stat::Median => d.median,
            Stat::P90 => d.p90,
            Stat::P95 => d.p95,
            Stat::P99 => d.p99,
            Stat::Max => d.max,
        }
    }
}

fn bad(text: &str, why: String) -> SimError {
    SimError::Invalid {
        file: "command line".into(),
        field: "--slo".into(),
        value: text.to_string(),
        why,
        line: None,
    }
}

/// Parse `name<limit` clauses separated by commas; a limit ends in `ms` or `s`.
pub fn parse(text: &str) -> Result<Vec<Target>, SimError> {
    let mut out = Vec::new();
    for clause in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (name, limit) = clause
            .split_once('<')
            .ok_or_else(|| bad(text, format!("`{clause}` is not of the form metric<limit")))?;
        let (lat, stat) = name.trim().split_once('_').ok_or_else(|| {
            bad(
                text,
                format!("`{name}`: expected LATENCY_STAT such as ttft_p99"),
            )
        })?;
        let latency = match lat {
            "ttft" => Latency::Ttft,
            "itl" => Latency::Itl,
            "tpot" => Latency::Tpot,
            "e2e" => Latency::E2e,
            _ => {
                return Err(bad(
                    text,
                    format!("`{lat}`: latency is ttft, itl, tpot or e2e"),
                ))
            }
        };
        let stat = match stat {
            "mean" => Stat::Mean,
            "median" | "p50" => Stat::Median,
            "p90" => Stat::P90,
            "p95" => Stat::P95,
            "p99" => Stat::P99,
            "max" => Stat::Max,
            _ => {
                return Err(bad(
                    text,
                    format!("`{stat}`: statistic is mean, median, p90, p95, p99 or max"),
                ))
            }
        };
        let limit = limit.trim();
        let (num, scale) = if let Some(v) = limit.strip_suffix("ms") {
            (v, 1.0)
        } else if let Some(v) = limit.strip_suffix('s') {
            (v, 1e3)
        } else {
            return Err(bad(text, format!("`{limit}`: a limit ends in ms or s")));
        };
        let v: f64 = num
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| bad(text, format!("`{limit}`: not a positive number")))?;
        out.push(Target {
            latency,
            stat,
            limit_ms: v * scale,
        });
    }
    if out.is_empty() {
        return Err(bad(text, "no target given".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_and_names_what_is_wrong() {
        let t = parse("ttft_p99<500ms, itl_p99<0.05s").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].latency, t[0].stat, t[0].limit_ms),
            (Latency::Ttft, Stat::P99, 500.0)
        );
        assert_eq!((t[1].label(), t[1].limit_ms), ("itl_p99".to_string(), 50.0));
        for (text, needle) in [
            ("ttft_p99>5ms", "metric<limit"),
            ("foo_p99<5ms", "`foo`"),
            ("ttft_p42<5ms", "`p42`"),
            ("ttft_p99<5", "ms or s"),
            ("ttft_p99<-1ms", "positive"),
            ("", "no target"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
