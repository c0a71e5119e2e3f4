//! A profile's checks on load: every field in its range, every table increasing; an error
//! names the file, the field and the value.

use super::Profile;
use crate::error::SimError;

/// The file being checked, for the errors.
struct Check<'a>(&'a str);

impl Check<'_> {
    fn bad(&self, field: &str, value: String, why: &str) -> SimError {
        SimError::Invalid {
            file: self.0.to_string(),
            field: field.to_string(),
            value,
            why: why.to_string(),
            line: None,
        }
    }

    fn at_least_one(&self, fields: &[(&str, usize)]) -> Result<(), SimError> {
        match fields.iter().find(|f| f.1 == 0) {
            Some((field, _)) => Err(self.bad(field, "0".into(), "must be at least 1")),
            None => Ok(()),
        }
    }

    fn positive(&self, fields: &[(&str, f64)]) -> Result<(), SimError> {
        match fields.iter().find(|f| !(f.1.is_finite() && f.1 > 0.0)) {
            Some((field, v)) => Err(self.bad(field, v.to_string(), "must be a positive number")),
            None => Ok(()),
        }
    }

    fn non_negative(&self, fields: &[(&str, f64)]) -> Result<(), SimError> {
        match fields.iter().find(|f| !(f.1.is_finite() && f.1 >= 0.0)) {
            Some((field, v)) => {
                Err(self.bad(field, v.to_string(), "must be a non-negative number"))
            }
            None => Ok(()),
        }
    }
}

impl Profile {
    pub(super) fn validate(&self, origin: &str) -> Result<(), SimError> {
        let c = Check(origin);
        let m = &self.model;
        c.at_least_one(&[
            ("model.layers", m.layers),
            ("model.hidden", m.hidden),
            ("model.heads", m.heads),
            ("model.kv_heads", m.kv_heads),
            ("model.head_dim", m.head_dim),
            ("model.intermediate", m.intermediate),
            ("model.vocab", m.vocab),
            ("model.dtype_bytes", m.dtype_bytes),
            ("model.context_len", m.context_len),
        ])?;
        let (h, e) = (&self.hardware, &self.efficiency);
        c.positive(&[
            ("hardware.memory_mib", h.memory_mib),
            ("hardware.bf16_flops", h.bf16_flops),
            ("hardware.hbm_bandwidth", h.hbm_bandwidth),
            ("hardware.interconnect.bandwidth", h.interconnect.bandwidth),
            ("efficiency.weight_bandwidth", e.weight_bandwidth),
            ("efficiency.kv_bandwidth", e.kv_bandwidth),
            ("efficiency.attention_compute", e.attention_compute),
        ])?;
        self.check_gemm(&c)?;
        self.check_times(&c)?;
        self.check_shares(&c)?;
        if let Some(l) = &self.launch {
            c.non_negative(&[
                ("launch.graph_ns", l.graph_ns),
                ("launch.graph_per_req_ns", l.graph_per_req_ns),
                ("launch.eager_ns", l.eager_ns),
                ("launch.eager_per_req_ns", l.eager_per_req_ns),
                ("launch.eager_per_token_ns", l.eager_per_token_ns),
                ("launch.lead_ns", l.lead_ns),
                ("launch.tail_ns", l.tail_ns),
            ])?;
        }
        self.check_decode_tables(&c)
    }

    /// The GEMM efficiency curve: (tokens >= 1 increasing, efficiency in (0, 1]).
    fn check_gemm(&self, c: &Check) -> Result<(), SimError> {
        let gemm = &self.efficiency.gemm;
        if gemm.is_empty() {
            return Err(c.bad(
                "efficiency.gemm",
                "[]".into(),
                "needs at least one (tokens, efficiency) point",
            ));
        }
        for (i, w) in gemm.iter().enumerate() {
            if !(w.0 >= 1.0 && w.1 > 0.0 && w.1 <= 1.0) {
                return Err(c.bad(
                    &format!("efficiency.gemm[{i}]"),
                    format!("{:?}", w),
                    "needs tokens >= 1 and efficiency in (0, 1]",
                ));
            }
            if i > 0 && gemm[i - 1].0 >= w.0 {
                return Err(c.bad(
                    &format!("efficiency.gemm[{i}]"),
                    format!("{:?}", w),
                    "token counts must increase",
                ));
            }
        }
        Ok(())
    }

    /// Times and counts that may be 0.
    fn check_times(&self, c: &Check) -> Result<(), SimError> {
        let (h, g, e) = (&self.hardware, &self.engine, &self.efficiency);
        c.non_negative(&[
            ("hardware.runtime_reserved_mib", h.runtime_reserved_mib),
            ("hardware.kernel_launch_ns", h.kernel_launch_ns),
            ("hardware.graph_kernel_ns", h.graph_kernel_ns),
            (
                "hardware.interconnect.latency_ns",
                h.interconnect.latency_ns,
            ),
            ("engine.schedule_ns_per_step", g.schedule_ns_per_step),
            ("engine.schedule_ns_per_req", g.schedule_ns_per_req),
            ("engine.http_ns", g.http_ns),
            ("engine.tokenize_ns", g.tokenize_ns),
            ("engine.tokenize_ns_per_token", g.tokenize_ns_per_token),
            ("engine.stream_ns", g.stream_ns),
            ("engine.submit_ns", g.submit_ns),
            ("engine.submit_ns_per_token", g.submit_ns_per_token),
            ("efficiency.decode_step_ns", e.decode_step_ns),
            ("efficiency.prefill_step_ns", e.prefill_step_ns),
            ("efficiency.prefill_per_req_ns", e.prefill_per_req_ns),
            ("efficiency.kernels_per_layer", e.kernels_per_layer),
            ("efficiency.attention_seq_ns", e.attention_seq_ns),
            ("efficiency.attention_seq_rows", e.attention_seq_rows),
            ("efficiency.attention_grid_ns", e.attention_grid_ns),
            ("efficiency.attention_grid_rows", e.attention_grid_rows),
            ("efficiency.sustained_slowdown", e.sustained_slowdown),
            ("efficiency.sustained_tau_ns", e.sustained_tau_ns),
            ("efficiency.decode_padding_share", e.decode_padding_share),
        ])
    }

    /// The sustained-load time constant where a slowdown is set; the shared-KV saving in [0, 1].
    fn check_shares(&self, c: &Check) -> Result<(), SimError> {
        let e = &self.efficiency;
        if e.sustained_slowdown > 0.0 && e.sustained_tau_ns <= 0.0 {
            return Err(c.bad(
                "efficiency.sustained_tau_ns",
                e.sustained_tau_ns.to_string(),
                "must be positive where sustained_slowdown is set",
            ));
        }
        let saving = e.decode_shared_kv_saving;
        if !(0.0..=1.0).contains(&saving) {
            return Err(c.bad(
                "efficiency.decode_shared_kv_saving",
                saving.to_string(),
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }

    /// The per-row decode tables: batch >= 1 increasing, non-negative times, savings in [0, 1].
    fn check_decode_tables(&self, c: &Check) -> Result<(), SimError> {
        for (i, row) in self.decode_table.iter().enumerate() {
            let ok = row.0 >= 1.0
                && [row.1, row.2, row.3]
                    .iter()
                    .all(|v| v.is_finite() && *v >= 0.0)
                && (i == 0 || self.decode_table[i - 1].0 < row.0);
            if !ok {
                return Err(c.bad(
                    &format!("decode_table[{i}]"),
                    format!("{row:?}"),
                    "needs batch >= 1 (increasing) and non-negative times",
                ));
            }
        }
        for (i, &(b, saving)) in self.decode_shared_savings.iter().enumerate() {
            let ok = b >= 1.0
                && (0.0..=1.0).contains(&saving)
                && (i == 0 || self.decode_shared_savings[i - 1].0 < b);
            if !ok {
                return Err(c.bad(
                    &format!("decode_shared_savings[{i}]"),
                    format!("({b}, {saving})"),
                    "needs batch >= 1 (increasing) and a saving between 0 and 1",
                ));
            }
        }
        for (i, (b, pts)) in self.decode_kv_points.iter().enumerate() {
            let ok = *b >= 1.0
                && (i == 0 || self.decode_kv_points[i - 1].0 < *b)
                && pts
                    .iter()
                    .all(|p| p.0.is_finite() && p.0 >= 0.0 && p.1.is_finite() && p.1 >= 0.0)
                && pts.windows(2).all(|w| w[0].0 < w[1].0);
            if !ok {
                return Err(c.bad(
                    &format!("decode_kv_points[{i}]"),
                    format!("{b} {pts:?}"),
                    "needs batch >= 1 (increasing), KV points increasing, non-negative times",
                ));
            }
        }
        Ok(())
    }
}
