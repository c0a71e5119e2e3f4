//! `doppel sim sweep`: one trace, one parameter varied, a table and an SVG chart.

use crate::error::SimError;
use crate::metrics::Summary;
use crate::trace::{ArrivalPattern, Trace};
use crate::SimOptions;
use std::fmt::Write;

/// Parameters a sweep can vary.
pub const PARAMS: [&str; 11] = [
    "rate",
    "concurrency",
    "policy",
    "chunk",
    "tp",
    "kv",
    "page",
    "max-running",
    "overlap",
    "mixed",
    "mixed-step",
];

/// The runs of a sweep.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepResult {
    /// Trace name.
    pub trace: String,
    /// The parameter.
    pub param: String,
    /// (value, figures) per run, in the order given.
    pub points: Vec<(String, Summary)>,
}

fn parse<T: std::str::FromStr>(origin: &str, param: &str, value: &str) -> Result<T, SimError> {
    value.parse().map_err(|_| SimError::Invalid {
        file: origin.to_string(),
        field: format!("--param {param}"),
        value: value.to_string(),
        why: "not a valid value for this parameter".into(),
        line: None,
    })
}

/// Apply `param = value` to a trace; the result is re-validated like a file.
pub fn apply(trace: &Trace, origin: &str, param: &str, value: &str) -> Result<Trace, SimError> {
    let mut t = trace.clone();
    let e = &mut t.engine;
    match param {
        "rate" => {
            if value == "inf" {
                t.arrival.pattern = ArrivalPattern::Burst;
                t.arrival.rate = None;
            } else {
                if matches!(
                    t.arrival.pattern,
                    ArrivalPattern::Burst | ArrivalPattern::Concurrency
                ) {
                    t.arrival.pattern = ArrivalPattern::Poisson;
                }
                t.arrival.rate = Some(parse(origin, param, value)?);
            }
        }
        "concurrency" => t.arrival.max_concurrency = Some(parse(origin, param, value)?),
        "policy" => e.policy = value.to_string(),
        "chunk" => e.chunked_prefill_size = Some(parse(origin, param, value)?),
        "tp" => e.tp_size = parse(origin, param, value)?,
        "kv" => e.kv_capacity_tokens = Some(parse(origin, param, value)?),
        "page" => e.page_size = parse(origin, param, value)?,
        "max-running" => e.max_running_requests = Some(parse(origin, param, value)?),
        "overlap" => e.overlap = parse(origin, param, value)?,
        "mixed" => e.enable_mixed_chunk = parse(origin, param, value)?,
        // Thin mixed steps (docs/core.md) need mixing on; `off` leaves SGLang's budget.
        "mixed-step" => {
            e.enable_mixed_chunk = true;
            e.mixed_step_tokens = match value {
                "off" => None,
                v => Some(parse(origin, param, v)?),
            };
        }
        _ => {
            return Err(SimError::Invalid {
                file: origin.to_string(),
                field: "--param".into(),
                value: param.to_string(),
                why: format!("unknown parameter; known: {}", PARAMS.join(", ")),
                line: None,
            })
        }
    }
    // Round-trip through YAML so the changed trace passes the same checks as a file.
    let text = serde_yaml::to_string(&t).map_err(|e| SimError::yaml(origin, &e))?;
    Trace::parse(&text, &format!("{origin} with {param}={value}"))
}

/// Replay `path` once per value.
pub fn run(path: &str, param: &str, values: &[String]) -> Result<SweepResult, SimError> {
    let base = Trace::load(path)?;
    let mut points = Vec::with_capacity(values.len());
    for v in values {
        let t = apply(&base, path, param, v)?;
        let r = crate::replay(t, path, SimOptions::default())?;
        points.push((v.clone(), r.summary));
    }
    Ok(SweepResult {
        trace: base.name().to_string(),
        param: param.to_string(),
        points,
    })
}

/// One line per value.
pub fn format_table(r: &SweepResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "sweep of {} over {}", r.trace, r.param);
    let _ = writeln!(
        s,
        "{:>12} {:>10} {:>12} {:>12} {:>11} {:>11} {:>10} {:>10} {:>8}",
        r.param,
        "req/s",
        "out tok/s",
        "total tok/s",
        "mean TTFT",
        "mean E2E",
        "med ITL",
        "hit rate",
        "retract"
    );
    for (v, m) in &r.points {
        let _ = writeln!(
            s,
            "{:>12} {:>10.2} {:>12.2} {:>12.2} {:>11.2} {:>11.2} {:>10.2} {:>9.1}% {:>8}",
            v,
            m.request_throughput,
            m.output_throughput,
            m.total_throughput,
            m.ttft_ms.mean,
            m.e2e_ms.mean,
            m.itl_ms.median,
            m.cache_hit_rate * 100.0,
            m.retractions
        );
    }
    s
}

/// Every run's figures.
pub fn to_json(r: &SweepResult) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default()
}

pub(crate) fn nice_max(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if x <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Two panels against the parameter: output throughput, and mean TTFT / E2E latency.
pub fn to_svg(r: &SweepResult) -> String {
    let (w, h) = (760.0, 560.0);
    let (left, right) = (90.0, 30.0);
    let panels = [
        (
            "Output token throughput (tok/s)",
            vec![("output tok/s", "#1f77b4")],
        ),
        (
            "Latency (ms)",
            vec![("mean E2E", "#d62728"), ("mean TTFT", "#2ca02c")],
        ),
    ];
    let value = |m: &Summary, series: &str| match series {
        "output tok/s" => m.output_throughput,
        "mean E2E" => m.e2e_ms.mean,
        _ => m.ttft_ms.mean,
    };
    let n = r.points.len().max(1);
    let x_of = |i: usize| {
        if n == 1 {
            left + (w - left - right) / 2.0
        } else {
            left + (w - left - right) * i as f64 / (n - 1) as f64
        }
    };
    let mut s = svg_open(w, h);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">{}: sweep of {}</text>",
        w / 2.0,
        xml(&r.trace),
        xml(&r.param)
    );
    for (p, (title, series)) in panels.iter().enumerate() {
        let top = 45.0 + p as f64 * 250.0;
        let bottom = top + 190.0;
        let ymax = nice_max(
            r.points
                .iter()
                .flat_map(|(_, m)| series.iter().map(move |(name, _)| value(m, name)))
                .fold(0.0, f64::max),
        );
        let y_of = |v: f64| bottom - (bottom - top) * v / ymax;
        let _ = writeln!(
            s,
            "<text x=\"{left}\" y=\"{}\" font-size=\"13\">{title}</text>",
            top - 8.0
        );
        y_grid(&mut s, (left, w - right), ymax, y_of);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"black\"/>",
            w - right
        );
        for (i, (v, _)) in r.points.iter().enumerate() {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x_of(i),
                bottom + 16.0,
                xml(v)
            );
        }
        for (k, (name, color)) in series.iter().enumerate() {
            let pts: Vec<String> = r
                .points
                .iter()
                .enumerate()
                .map(|(i, (_, m))| format!("{:.1},{:.1}", x_of(i), y_of(value(m, name))))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                pts.join(" ")
            );
            for pt in &pts {
                let (x, y) = pt.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    s,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>"
                );
            }
            let lx = w - right - 150.0;
            let ly = top + 12.0 + 16.0 * k as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{lx}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{:.1}\">{name}</text>",
                ly - 4.0,
                lx + 18.0,
                ly
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            (left + w - right) / 2.0,
            bottom + 34.0,
            xml(&r.param)
        );
    }
    s.push_str("</svg>\n");
    s
}

pub(crate) fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

/// Five horizontal grid lines from 0 to `ymax` across `x0..x1`, each labelled at its left;
/// `y_of` maps a value to its pixel row.
pub(crate) fn y_grid(s: &mut String, (x0, x1): (f64, f64), ymax: f64, y_of: impl Fn(f64) -> f64) {
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let y = y_of(v);
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
}

/// An SVG document's opening tag and white background, `w` x `h` pixels.
pub(crate) fn svg_open(w: f64, h: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    s
}

pub(crate) fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
