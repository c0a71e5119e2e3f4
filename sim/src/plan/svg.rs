//! The plan's chart: cost (GPUs) against the first target's latency, every setup a dot, the
//! frontier joined, the target's limit a dashed line.

use super::PlanResult;
use crate::sweep::{fmt_num, nice_max, xml, y_grid};
use std::fmt::Write;

/// The chart as an SVG document.
pub fn to_svg(r: &PlanResult) -> String {
    let (w, h) = (760.0, 460.0);
    let (left, right, top, bottom) = (90.0, 30.0, 50.0, 400.0);
    let Some(target) = r.targets.first() else {
        return String::new();
    };
    let ok: Vec<usize> = (0..r.runs.len())
        .filter(|&i| r.runs[i].error.is_none())
        .collect();
    let xmax = ok
        .iter()
        .map(|&i| r.runs[i].candidate.gpus())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    // Runs far above the limit would squash the rest: the axis stops at 4x the limit.
    let cap = 4.0 * target.limit_ms;
    let ymax = nice_max(
        ok.iter()
            .map(|&i| r.runs[i].values[0].min(cap))
            .fold(target.limit_ms * 1.2, f64::max),
    );
    let frame = Frame {
        w,
        left,
        right,
        top,
        bottom,
        xmax,
        ymax,
    };
    let x_of = |g: usize| frame.x(g);
    let y_of = |v: f64| frame.y(v);
    let mut s = crate::sweep::svg_open(w, h);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}: cost against {} ({} setups)</text>",
        w / 2.0,
        xml(&r.trace),
        target.label(),
        r.runs.len()
    );
    axes(&mut s, &frame, xmax as usize, &target.label());
    let ly = y_of(target.limit_ms);
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"#d62728\" stroke-dasharray=\"6 4\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\" text-anchor=\"end\">limit {} ms</text>",
        w - right,
        w - right,
        ly - 5.0,
        fmt_num(target.limit_ms)
    );
    for &i in &ok {
        let e = &r.runs[i];
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#bbb\"><title>{}</title></circle>",
            x_of(e.candidate.gpus()),
            y_of(e.values[0]),
            xml(&e.candidate.label())
        );
    }
    let mut front = r.frontier.clone();
    front.sort_by_key(|&i| (r.runs[i].candidate.gpus(), i));
    let pts: Vec<String> = front
        .iter()
        .map(|&i| {
            let e = &r.runs[i];
            format!("{:.1},{:.1}", x_of(e.candidate.gpus()), y_of(e.values[0]))
        })
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>",
        pts.join(" ")
    );
    if let Some(i) = r.chosen {
        let e = &r.runs[i];
        let (x, y) = (x_of(e.candidate.gpus()), y_of(e.values[0]));
        let _ = writeln!(
            s,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"6\" fill=\"none\" stroke=\"#2ca02c\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#2ca02c\">{}</text>",
            x + 9.0,
            y - 8.0,
            xml(&e.candidate.label())
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The plot area and its scales.
struct Frame {
    w: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    xmax: f64,
    ymax: f64,
}

impl Frame {
    fn x(&self, gpus: usize) -> f64 {
        self.left + (self.w - self.left - self.right) * gpus as f64 / (self.xmax + 1.0)
    }

    fn y(&self, v: f64) -> f64 {
        self.bottom - (self.bottom - self.top) * v.min(self.ymax) / self.ymax
    }
}

/// Grid lines, tick labels and axis titles.
fn axes(s: &mut String, f: &Frame, xmax: usize, label: &str) {
    let (w, left, right, top, bottom) = (f.w, f.left, f.right, f.top, f.bottom);
    let ymax = f.ymax;
    let y_of = |v: f64| f.y(v);
    let x_of = |g: usize| f.x(g);
    y_grid(s, (left, w - right), ymax, y_of);
    for g in 1..=xmax {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{g}</text>",
            x_of(g),
            bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"black\"/>",
        w - right
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">GPUs</text><text x=\"20\" y=\"{:.1}\" transform=\"rotate(-90 20 {:.1})\" text-anchor=\"middle\">{} (ms)</text>",
        (left + w - right) / 2.0,
        bottom + 36.0,
        (top + bottom) / 2.0,
        (top + bottom) / 2.0,
        label
    );
}
