//! RoPE frequency scaling as transformers 5 computes it (`modeling_rope_utils`): the inverse
//! frequencies per scaling type and the factor the cos/sin tables are multiplied by (YaRN).

use serde_json::Value;

/// RoPE frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        /// Divisor for low frequencies.
        factor: f64,
        /// Wavelengths above original_max / low_freq_factor are fully scaled.
        low_freq_factor: f64,
        /// Wavelengths below original_max / high_freq_factor are untouched.
        high_freq_factor: f64,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
    /// YaRN (Qwen2.5 / Qwen3 long context): frequencies ramp from untouched (fast) to divided by
    /// `factor` (slow), and cos/sin are multiplied by `attention_factor`.
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: f64,
        /// Rotations above which a dimension is left untouched (default 32).
        beta_fast: f64,
        /// Rotations below which a dimension is fully interpolated (default 1).
        beta_slow: f64,
        /// Multiplier of cos and sin (resolved: given, from mscale, or 0.1 ln(factor) + 1).
        attention_factor: f64,
        /// Round the ramp's ends to whole dimensions (transformers' default).
        truncate: bool,
    },
}

/// Why a `rope_scaling` object cannot be used: (field, offending value, what is wrong).
pub type RopeFieldError = (String, Value, String);

fn field_err(field: &str, v: &Value, why: &str) -> RopeFieldError {
    (format!("rope_scaling.{field}"), v.clone(), why.to_string())
}

impl RopeScaling {
    /// Parse a `rope_scaling` / `rope_parameters` object; `max_pos` is the config's
    /// max_position_embeddings (YaRN's default original length and factor come from it).
    pub fn parse(obj: &Value, max_pos: usize) -> Result<RopeScaling, RopeFieldError> {
        if !obj.is_object() {
            return Err((
                "rope_scaling".into(),
                obj.clone(),
                "expected an object".into(),
            ));
        }
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let opt = |k: &str| -> Result<Option<f64>, RopeFieldError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                    _ => Err(field_err(k, v, "expected a positive number")),
                },
            }
        };
        let num = |k: &str| -> Result<f64, RopeFieldError> {
            opt(k)?.ok_or_else(|| field_err(k, &Value::Null, "expected a positive number"))
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: num("factor")?,
            }),
            "llama3" => {
                let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
                if high <= low {
                    return Err(field_err(
                        "high_freq_factor",
                        &Value::from(high),
                        "must exceed low_freq_factor",
                    ));
                }
                Ok(RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                })
            }
            "yarn" => {
                let original = opt("original_max_position_embeddings")?.unwrap_or(max_pos as f64);
                // transformers: no factor means the ratio of the two context lengths.
                let factor = opt("factor")?.unwrap_or(max_pos as f64 / original);
                let attention_factor = match opt("attention_factor")? {
                    Some(a) => a,
                    None => match (opt("mscale")?, opt("mscale_all_dim")?) {
                        (Some(m), Some(all)) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                        _ => yarn_mscale(factor, 1.0),
                    },
                };
                let truncate = match obj.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| field_err("truncate", v, "expected true or false"))?,
                };
                Ok(RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: opt("beta_fast")?.unwrap_or(32.0),
                    beta_slow: opt("beta_slow")?.unwrap_or(1.0),
                    attention_factor,
                    truncate,
                })
            }
            other => Err(field_err(
                "rope_type",
                &Value::from(other),
                "supported: default, linear, llama3, yarn (dynamic, longrope and others are not)",
            )),
        }
    }

    /// YaRN with transformers' defaults for everything but the factor and original length.
    pub fn yarn(factor: f64, original_max_position_embeddings: f64) -> RopeScaling {
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: yarn_mscale(factor, 1.0),
            truncate: true,
        }
    }

    /// The inverse frequencies (head_dim / 2 of them) for base `theta`, scaling applied.
    pub fn inv_freq(&self, theta: f64, head_dim: usize) -> Vec<f64> {
        let d = head_dim as f64;
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / d))
            .collect();
        match *self {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: old,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                // Dimension index (of d) at which a frequency turns `rot` times over `old` positions.
                let corr = |rot: f64| {
                    d * (old / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                base.into_iter()
                    .enumerate()
                    .map(|(i, f)| {
                        // 0 keeps the frequency (extrapolation), 1 divides it by the factor.
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        f / factor * ramp + f * (1.0 - ramp)
                    })
                    .collect()
            }
        }
    }

    /// What cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
    pub fn attention_factor(&self) -> f64 {
        match *self {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor,
            _ => 1.0,
        }
    }

    /// The longest context the scaling was made for (None: the config's own length).
    pub fn extended_context(&self) -> Option<usize> {
        match *self {
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => Some((factor * original_max_position_embeddings) as usize),
            _ => None,
        }
    }

    /// The config.json object (None for plain RoPE).
    pub fn to_hf_json(&self) -> Value {
        match *self {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings as u64,
            }),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => serde_json::json!({
                "rope_type": "yarn",
                "factor": factor,
                "original_max_position_embeddings": original_max_position_embeddings as u64,
                "beta_fast": beta_fast,
                "beta_slow": beta_slow,
                "attention_factor": attention_factor,
                "truncate": truncate,
            }),
        }
    }
}

/// YaRN's magnitude correction for a context extended `scale` times.
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Qwen2.5-7B-Instruct's documented long-context setting.
    fn qwen25_yarn() -> RopeScaling {
        RopeScaling::parse(
            &json!({"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}),
            32768,
        )
        .unwrap()
    }

    #[test]
    fn yarn_ramp_matches_transformers_formula() {
        let s = qwen25_yarn();
        // 0.1 ln 4 + 1.
        assert!((s.attention_factor() - 1.138_629_436_111_989).abs() < 1e-12);
        assert_eq!(s.extended_context(), Some(131072));
        let f = s.inv_freq(1_000_000.0, 128);
        let plain = RopeScaling::None.inv_freq(1_000_000.0, 128);
        // Correction range for theta 1e6, d 128, 32768 positions: low = floor(23.60) = 23,
        // high = ceil(39.65) = 40: dims up to 23 untouched, from 40 on divided by 4.
        for i in 0..=23 {
            assert_eq!(f[i], plain[i], "dim {i}");
        }
        for i in 40..64 {
            assert!((f[i] - plain[i] / 4.0).abs() <= 1e-18, "dim {i}");
        }
        let r = (30.0 - 23.0) / 17.0;
        assert!((f[30] - (plain[30] / 4.0 * r + plain[30] * (1.0 - r))).abs() < 1e-18);
    }

    #[test]
    fn yarn_attention_factor_sources() {
        let given = RopeScaling::parse(
            &json!({"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.5}),
            4096,
        )
        .unwrap();
        assert_eq!(given.attention_factor(), 1.5);
        let ms = RopeScaling::parse(
            &json!({"rope_type": "yarn", "factor": 4.0, "mscale": 2.0, "mscale_all_dim": 1.0}),
            4096,
        )
        .unwrap();
        let want = (0.2 * 4f64.ln() + 1.0) / (0.1 * 4f64.ln() + 1.0);
        assert!((ms.attention_factor() - want).abs() < 1e-12);
        // No factor: the ratio of max_position_embeddings to the original length.
        let ratio = RopeScaling::parse(
            &json!({"rope_type": "yarn", "original_max_position_embeddings": 1024}),
            4096,
        )
        .unwrap();
        assert!(matches!(ratio, RopeScaling::Yarn { factor, .. } if factor == 4.0));
    }

    #[test]
    fn yarn_round_trips_through_json() {
        let s = qwen25_yarn();
        assert_eq!(RopeScaling::yarn(4.0, 32768.0), s);
        assert_eq!(RopeScaling::parse(&s.to_hf_json(), 1).unwrap(), s);
    }

    #[test]
    fn unknown_types_name_the_field() {
        let (field, v, why) =
            RopeScaling::parse(&json!({"rope_type": "dynamic", "factor": 2.0}), 10).unwrap_err();
        assert_eq!(field, "rope_scaling.rope_type");
        assert_eq!(v, json!("dynamic"));
        assert!(why.contains("yarn"), "{why}");
        let (field, ..) =
            RopeScaling::parse(&json!({"rope_type": "yarn", "factor": -1}), 10).unwrap_err();
        assert_eq!(field, "rope_scaling.factor");
    }
}
