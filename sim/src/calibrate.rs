//! `doppel sim calibrate MEASUREMENTS`: fit a profile's efficiency terms and host overheads to step
//! times measured on the real engine (`doppel exec profile` writes the measurement file).
//!
//! The fit keeps the base profile's hardware sheet and model shape, and chooses the efficiencies
//! (GEMM curve at the base's token grid, weight/KV bandwidth, attention compute, fixed per-step
//! times) that minimise the squared log error of the cost model over every measured step, by
//! Nelder-Mead from several starts (`crate::fit_roofline`). Scheduler CPU time is a least-squares line in batch entries.

use crate::cost::{BatchShape, RooflineCost};
use crate::error::SimError;
use crate::fit_split::{fit_decode, fit_launch, fit_shared_saving};
use crate::profile::Profile;
use serde::{Deserialize, Serialize};
use std::io::Read;

/// One measured step: its shape (as [`BatchShape`]) and how long it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepPoint {
    /// prefill, decode or mixed.
    pub mode: String,
    /// Tokens computed.
    pub tokens: usize,
    /// Extend entries.
    pub extend_reqs: usize,
    /// Decode entries.
    pub decode_reqs: usize,
    /// Rows that needed logits.
    pub logits: usize,
    /// Causal attention pairs of extend entries.
    pub attn_pairs: f64,
    /// KV tokens read by attention.
    pub kv_read_tokens: usize,
    /// Longest extend entry's context (prefix + extend); 0 in files from before it was kept.
    #[serde(default)]
    pub max_seq: usize,
    /// Extend tokens of the longest extend entry; 0 in files from before it was kept (then
    /// derived from the other fields: exact for the profile's even scenarios).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_seq_extend: usize,
    /// Longest decode entry's sequence; 0 in files from before it was kept.
    #[serde(default)]
    pub max_kv: usize,
    /// KV tokens of decode entries that another decode entry of the step also read (a shared
    /// cached prefix); 0 in files from before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shared_kv_tokens: usize,
    /// Measured time (ns), launch to results.
    pub ns: u64,
    /// Host time of the launch call (ns): from the start of the launch until it returned.
    #[serde(default)]
    pub host_ns: u64,
    /// Device time (ns) of the same step run behind a GPU stall, so every kernel was queued
    /// before the GPU reached it (CUDA events; absent where the backend does not measure it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ns: Option<u64>,
    /// Host time of the launch call while the device was busy (the stalled run). Kept as a
    /// measurement only: on the H100 it matched `host_ns` (median ratio 1.0), so the cost model
    /// has one launch rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_busy_ns: Option<u64>,
    /// The scenario run the step belongs to (its steps ran back to back after a rest, in file
    /// order); absent in files from before it was kept (then no sustained-load term is fitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u32>,
    /// When the step started, since its run's first step started (ns), in the run that gave
    /// `device_ns` (gaps between steps are idle GPU time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ns: Option<u64>,
}

impl StepPoint {
    /// The cost model's view of this step.
    pub fn shape(&self) -> BatchShape {
        BatchShape {
            tokens: self.tokens,
            extend_reqs: self.extend_reqs,
            decode_reqs: self.decode_reqs,
            logits: self.logits,
            attn_pairs: self.attn_pairs,
            kv_read_tokens: self.kv_read_tokens,
            is_decode: self.mode == "decode",
            max_seq: self.max_seq,
            max_seq_extend: self.longest_extend(),
            max_kv: self.max_kv,
            shared_kv_tokens: self.shared_kv_tokens,
        }
    }

    /// `max_seq_extend`, or where the file lacks it, from the other fields: a prefill without
    /// cached prefixes extends its whole longest prompt; one with prefixes is taken as even
    /// (every entry the same prefix); a mixed step's extend tokens are its tokens less one per
    /// decode entry.
    fn longest_extend(&self) -> usize {
        if self.max_seq_extend > 0 || self.extend_reqs == 0 {
            return self.max_seq_extend;
        }
        let extend_tokens = self.tokens.saturating_sub(self.decode_reqs).max(1);
        if self.mode == "mixed" || self.kv_read_tokens == 0 {
            return self.max_seq.min(extend_tokens);
        }
        let prefix = self.kv_read_tokens / self.extend_reqs;
        self.max_seq.saturating_sub(prefix).clamp(1, extend_tokens)
    }

    /// A point of `shape` measured at `ns` (no host or device split).
    pub fn of(shape: &BatchShape, mode: &str, ns: u64) -> StepPoint {
        StepPoint {
            mode: mode.to_string(),
            tokens: shape.tokens,
            extend_reqs: shape.extend_reqs,
            decode_reqs: shape.decode_reqs,
            logits: shape.logits,
            attn_pairs: shape.attn_pairs,
            kv_read_tokens: shape.kv_read_tokens,
            max_seq: shape.max_seq,
            max_seq_extend: shape.max_seq_extend,
            max_kv: shape.max_kv,
            shared_kv_tokens: shape.shared_kv_tokens,
            ns,
            host_ns: 0,
            device_ns: None,
            host_busy_ns: None,
            run: None,
            run_ns: None,
        }
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// Scheduler CPU time of one step with `entries` requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulePoint {
    /// Requests in the step.
    pub entries: usize,
    /// Scheduler time (form the plan + apply the results), ns.
    pub ns: u64,
}

/// Host time of handing one request to the scheduler on the engine's thread (in-process: building
/// its prompt and `Scheduler::submit`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitPoint {
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Host time, ns.
    pub ns: u64,
}

/// Client-path costs outside the engine loop (ns). `doppel exec profile` measures the engine
/// in-process, where there is no HTTP, tokenization or streaming: all zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostOverheads {
    /// HTTP handling per request.
    pub http_ns: f64,
    /// Tokenization, fixed part.
    pub tokenize_ns: f64,
    /// Tokenization per prompt token.
    pub tokenize_ns_per_token: f64,
    /// Detokenize and stream one chunk.
    pub stream_ns: f64,
}

/// A measurement file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    /// The device, in words.
    pub device: String,
    /// The checkpoint measured.
    pub model: String,
    /// Model shape: layers, hidden, heads, kv_heads, head_dim, intermediate, vocab.
    pub shape: [usize; 7],
    /// How the numbers were taken (command line, repeats).
    pub method: String,
    /// Step times.
    pub steps: Vec<StepPoint>,
    /// Scheduler times.
    pub schedule: Vec<SchedulePoint>,
    /// Submission times per request; empty in files from before they were measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submit: Vec<SubmitPoint>,
    /// Client-path costs the fitted profile gets.
    #[serde(default)]
    pub host: HostOverheads,
}

impl Measurements {
    /// Read a measurement file (JSON, or gzip-compressed JSON: a profile run's steps are
    /// megabytes of text, and the repository keeps them compressed).
    pub fn load(path: &str) -> Result<Measurements, SimError> {
        let text = read_text(path).map_err(|source| SimError::Io {
            path: path.to_string(),
            source,
        })?;
        let m: Measurements = serde_json::from_str(&text).map_err(|e| SimError::Yaml {
            file: path.to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        if m.steps.is_empty() {
            return Err(SimError::invalid(
                path,
                "steps",
                "[]",
                "no measured steps to fit",
            ));
        }
        for (i, s) in m.steps.iter().enumerate() {
            if s.ns == 0 || s.tokens == 0 || !(s.attn_pairs.is_finite() && s.attn_pairs >= 0.0) {
                return Err(SimError::invalid(
                    path,
                    &format!("steps[{i}]"),
                    format!("{s:?}"),
                    "needs ns > 0, tokens > 0 and attn_pairs >= 0",
                ));
            }
            if !matches!(s.mode.as_str(), "prefill" | "decode" | "mixed") {
                return Err(SimError::invalid(
                    path,
                    &format!("steps[{i}].mode"),
                    &s.mode,
                    "expected prefill, decode or mixed",
                ));
            }
        }
        Ok(m)
    }
}

/// A text file, decompressed when it starts with gzip's magic bytes.
pub(crate) fn read_text(path: &str) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return String::from_utf8(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text)?;
    Ok(text)
}

/// The fitted profile and how well it fits.
#[derive(Clone, Debug)]
pub struct Fit {
    /// The profile.
    pub profile: Profile,
    /// Per step: (measured ns, predicted ns).
    pub residuals: Vec<(u64, u64)>,
    /// Mode of each step (prefill, decode, mixed), parallel to `residuals`.
    pub modes: Vec<String>,
}

impl Fit {
    /// Mean and largest |relative error| over the measured steps.
    pub fn errors(&self) -> (f64, f64) {
        let errs: Vec<f64> = self
            .residuals
            .iter()
            .map(|&(m, p)| (p as f64 - m as f64).abs() / m as f64)
            .collect();
        let mean = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
        (mean, errs.iter().copied().fold(0.0, f64::max))
    }

    /// Per mode: (mode, steps, mean |relative error|, mean signed relative error).
    pub fn errors_by_mode(&self) -> Vec<(String, usize, f64, f64)> {
        ["prefill", "decode", "mixed"]
            .iter()
            .filter_map(|mode| {
                let e: Vec<f64> = self
                    .residuals
                    .iter()
                    .zip(&self.modes)
                    .filter(|(_, m)| m.as_str() == *mode)
                    .map(|(&(m, p), _)| (p as f64 - m as f64) / m as f64)
                    .collect();
                (!e.is_empty()).then(|| {
                    let n = e.len() as f64;
                    (
                        mode.to_string(),
                        e.len(),
                        e.iter().map(|v| v.abs()).sum::<f64>() / n,
                        e.iter().sum::<f64>() / n,
                    )
                })
            })
            .collect()
    }
}

/// Least-squares line ns = a + b * entries (b = 0 with fewer than two distinct entry counts).
pub fn fit_schedule(points: &[SchedulePoint]) -> (f64, f64) {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.entries as f64, p.ns as f64))
        .collect();
    crate::fit_split::line(&pts)
}

/// The device-time terms (decode table, roofline efficiencies, padding and shared-KV terms) and
/// launch costs fitted to `steps`, on `base`'s hardware and model.
fn fit_device(base: &Profile, steps: &[StepPoint]) -> Profile {
    // With the host/device split (`exec profile` with CUDA events), the cost model prices
    // device time, decode steps come from a measured table, and launches get their own costs.
    let decode = fit_decode(steps);
    let table = decode.table;
    let device_s = |p: &StepPoint| p.device_ns.unwrap_or(p.ns) as f64 * 1e-9;
    // With device times, a step without one (its stalled run could not give a clean figure)
    // would feed a whole span (host launch included) into the device fit: leave it out.
    let split = steps.iter().any(|p| p.device_ns.is_some());
    let mut shapes: Vec<(BatchShape, f64)> = steps
        .iter()
        .filter(|p| table.is_empty() || p.mode != "decode")
        .filter(|p| !split || p.device_ns.is_some())
        .map(|p| (p.shape(), device_s(p)))
        .collect();
    if shapes.is_empty() {
        shapes = steps.iter().map(|p| (p.shape(), device_s(p))).collect();
    }
    let mut profile = crate::fit_roofline::fit_roofline(base, shapes);
    let e = &mut profile.efficiency;
    e.decode_padding_share = decode.padding_share;
    let (saving, per_row) =
        fit_shared_saving(steps, &table, &decode.points, e.decode_padding_share);
    e.decode_shared_kv_saving = saving;
    profile.decode_shared_savings = per_row;
    profile.decode_table = table;
    profile.decode_kv_points = decode.points;
    profile.launch = fit_launch(steps, base.engine.cuda_graph_max_bs);
    profile
}

/// Fit `base` to `m`; the result is named `name`. `origin` names the measurement file.
pub fn calibrate(
    base: &Profile,
    m: &Measurements,
    name: &str,
    origin: &str,
) -> Result<Fit, SimError> {
    let s = &base.model;
    let want = [
        s.layers,
        s.hidden,
        s.heads,
        s.kv_heads,
        s.head_dim,
        s.intermediate,
        s.vocab,
    ];
    if m.shape != want {
        return Err(SimError::invalid(
            origin,
            "shape",
            format!("{:?}", m.shape),
            &format!(
                "the base profile {} has model shape {want:?} (layers, hidden, heads, kv_heads, head_dim, intermediate, vocab)",
                base.name
            ),
        ));
    }
    let first = fit_device(base, &m.steps);
    // Steps of a run slow down as the GPU heats toward its power cap: fit that from the runs,
    // then fit the rest to the steps as a rested GPU would have run them.
    let runs = crate::heat::measured_runs(&m.steps, &RooflineCost::new(&first, 1));
    let fit_runs: Vec<_> = runs.iter().map(|r| r.1.clone()).collect();
    let (slowdown, tau) = crate::heat::fit_sustained(&fit_runs);
    let mut heat = vec![1.0; m.steps.len()];
    for (idx, run) in &runs {
        let levels = crate::heat::run_levels(&run.steps, tau);
        for ((&i, h), s) in idx.iter().zip(levels).zip(&run.steps) {
            heat[i] = crate::heat::factor(slowdown, h, s.load);
        }
    }
    let mut profile = if slowdown > 0.0 {
        let rested: Vec<StepPoint> = m
            .steps
            .iter()
            .zip(&heat)
            .map(|(p, f)| {
                let mut p = p.clone();
                let rest = |ns: u64| ((ns as f64 / f).round() as u64).max(1);
                match p.device_ns {
                    Some(d) => p.device_ns = Some(rest(d)),
                    None => p.ns = rest(p.ns),
                }
                p
            })
            .collect();
        fit_device(base, &rested)
    } else {
        first
    };
    profile.efficiency.sustained_slowdown = slowdown;
    profile.efficiency.sustained_tau_ns = tau;
    let (a, b) = fit_schedule(&m.schedule);
    if !m.schedule.is_empty() {
        profile.engine.schedule_ns_per_step = a.round();
        profile.engine.schedule_ns_per_req = b.round();
    }
    if !m.submit.is_empty() {
        let (a, b) = crate::fit_split::fit_submit(&m.submit);
        profile.engine.submit_ns = a.round();
        profile.engine.submit_ns_per_token = (b * 1000.0).round() / 1000.0;
    }
    let h = &m.host;
    for (field, v) in [
        ("host.http_ns", h.http_ns),
        ("host.tokenize_ns", h.tokenize_ns),
        ("host.tokenize_ns_per_token", h.tokenize_ns_per_token),
        ("host.stream_ns", h.stream_ns),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(SimError::invalid(
                origin,
                field,
                v.to_string(),
                "must be a non-negative number",
            ));
        }
    }
    profile.engine.http_ns = h.http_ns;
    profile.engine.tokenize_ns = h.tokenize_ns;
    profile.engine.tokenize_ns_per_token = h.tokenize_ns_per_token;
    profile.engine.stream_ns = h.stream_ns;
    profile.name = name.to_string();
    profile.calibrated = true;
    profile.source = format!(
        "fitted by `doppel sim calibrate` to {} steps measured on {} ({}) from {origin}; base {}",
        m.steps.len(),
        m.device,
        m.model,
        base.name
    );
    let cost = RooflineCost::new(&profile, 1);
    let residuals = m
        .steps
        .iter()
        .zip(&heat)
        .map(|(p, f)| {
            use crate::cost::CostModel;
            let model = (cost.step_ns(&p.shape()) as f64 * f).round() as u64;
            (p.device_ns.unwrap_or(p.ns), model)
        })
        .collect();
    let modes = m.steps.iter().map(|p| p.mode.clone()).collect();
    Ok(Fit {
        profile,
        residuals,
        modes,
    })
}

/// The fitted profile as YAML, with a header comment.
pub fn to_yaml(fit: &Fit) -> Result<String, SimError> {
    let body = serde_yaml::to_string(&fit.profile).map_err(|e| SimError::Yaml {
        file: fit.profile.name.clone(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    let (mean, max) = fit.errors();
    Ok(format!(
        "# Fitted by `doppel sim calibrate`: mean |error| {:.2}%, max {:.2}% over {} measured steps.\n{body}",
        mean * 100.0,
        max * 100.0,
        fit.residuals.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_extend_is_derived_where_a_file_lacks_it() {
        // 4 requests of 128 tokens over a 1024-token prefix each.
        let mut p = StepPoint::of(&BatchShape::prefill(4, 128), "prefill", 1);
        p.kv_read_tokens = 4 * 1024;
        p.max_seq = 1152;
        p.max_seq_extend = 0;
        assert_eq!(p.shape().max_seq_extend, 128);
        // Fresh prompts: the longest prompt is all extend.
        let mut q = StepPoint::of(&BatchShape::prefill(2, 300), "prefill", 1);
        q.max_seq_extend = 0;
        assert_eq!(q.shape().max_seq_extend, 300);
        // A mixed step: at most its tokens less one per decode entry.
        let mut m = q.clone();
        m.mode = "mixed".into();
        m.decode_reqs = 8;
        m.tokens = 308;
        m.kv_read_tokens = 8 * 500;
        assert_eq!(m.shape().max_seq_extend, 300);
        // Kept where the file has it.
        let mut k = p.clone();
        k.max_seq_extend = 64;
        assert_eq!(k.shape().max_seq_extend, 64);
        // A decode step has none.
        let d = StepPoint::of(&BatchShape::decode(4, 100), "decode", 1);
        assert_eq!(d.shape().max_seq_extend, 0);
    }
}
