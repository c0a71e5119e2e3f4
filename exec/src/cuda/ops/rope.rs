//! Host-side RoPE tables.

/// The cos/sin table the `rope_neox` kernel reads: `[max_pos, head_dim]` f32, row p holding
/// `cos(p * inv_freq[i])` in columns `0..head_dim/2` and `sin(p * inv_freq[i])` after them.
/// `inv_freq` has head_dim/2 entries with any rope scaling (Llama 3, linear) already applied
/// (ModelConfig::rope_inv_freq gives them); angles are computed in f64.
pub fn cos_sin_table(inv_freq: &[f64], max_pos: usize) -> Vec<f32> {
    cos_sin_table_scaled(inv_freq, max_pos, 1.0)
}

/// [`cos_sin_table`] with every entry multiplied by `scale` in f32 after rounding, as
/// transformers applies YaRN's attention factor (ModelConfig::rope_attention_factor).
pub fn cos_sin_table_scaled(inv_freq: &[f64], max_pos: usize, scale: f64) -> Vec<f32> {
    let half = inv_freq.len();
    let scale = scale as f32;
    let mut t = vec![0f32; max_pos * 2 * half];
    for p in 0..max_pos {
        let row = &mut t[p * 2 * half..(p + 1) * 2 * half];
        for (i, f) in inv_freq.iter().enumerate() {
            let a = p as f64 * f;
            row[i] = a.cos() as f32 * scale;
            row[half + i] = a.sin() as f32 * scale;
        }
    }
    t
}

/// Plain RoPE inverse frequencies: `theta^(-2i/head_dim)`.
pub fn plain_inv_freq(theta: f64, head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect()
}

/// Llama 3 scaled inverse frequencies (as transformers' `_compute_llama3_parameters`).
pub fn llama3_inv_freq(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    original_max: f64,
) -> Vec<f64> {
    let low_wavelen = original_max / low;
    let high_wavelen = original_max / high;
    plain_inv_freq(theta, head_dim)
        .into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen > low_wavelen {
                f / factor
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth = (original_max / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_hold_cos_then_sin() {
        let f = plain_inv_freq(10000.0, 8);
        let t = cos_sin_table(&f, 3);
        assert_eq!(t.len(), 3 * 8);
        assert_eq!(&t[0..4], &[1.0; 4]);
        assert_eq!(&t[4..8], &[0.0; 4]);
        assert!((t[8] - 1f32.cos()).abs() < 1e-7);
        assert!((t[12] - 1f32.sin()).abs() < 1e-7);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = plain_inv_freq(500000.0, 128);
        let scaled = llama3_inv_freq(500000.0, 128, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-18);
        assert!(scaled
            .iter()
            .zip(&plain)
            .all(|(s, p)| s <= p && *s >= p / 8.0));
    }
}
