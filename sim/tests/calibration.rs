//! The A100 profile must reproduce SGLang's bench_one_batch table (shared/reference/performance.md):
//! decode medians within 10%, prefill latencies within 15%. The batch-4 prefill row (48.4 ms, slower
//! than batch 16) is a known outlier and is excluded; so is the batch-4 total, which is not even
//! consistent with its own rows (48.4 ms + 63 x 3.39 ms = 0.262 s, logged 0.373 s).

use doppel_sim::{one_batch, Profile, RooflineCost};

/// (batch, prefill s, decode median ms, total s) measured with input 128, output 64.
const MEASURED: [(usize, f64, f64, f64); 4] = [
    (1, 0.0167, 2.95, 0.202),
    (4, 0.0484, 3.39, 0.373),
    (16, 0.0435, 3.55, 0.268),
    (64, 0.0543, 4.06, 0.311),
];

#[test]
fn a100_qwen3_reproduces_bench_one_batch() {
    let p = Profile::load("a100-80g/qwen3-0.6b/sglang").unwrap();
    assert!(p.calibrated);
    let cost = RooflineCost::new(&p, 1);
    for (bs, prefill, decode_ms, total) in MEASURED {
        let r = one_batch::run(&cost, bs, 128, 64);
        let de = (r.decode_median_s * 1e3 - decode_ms) / decode_ms;
        let pe = (r.prefill_s - prefill) / prefill;
        let te = (r.total_s - total) / total;
        eprintln!(
            "bs {bs}: prefill {:.4} s ({:+.1}%), decode {:.3} ms ({:+.1}%), total {:.3} s ({:+.1}%)",
            r.prefill_s,
            pe * 100.0,
            r.decode_median_s * 1e3,
            de * 100.0,
            r.total_s,
            te * 100.0
        );
        assert!(
            de.abs() <= 0.10,
            "batch {bs}: decode median {:.3} ms vs {decode_ms} ms",
            r.decode_median_s * 1e3
        );
        if bs != 4 {
            assert!(
                pe.abs() <= 0.15,
                "batch {bs}: prefill {:.4} s vs {prefill} s",
                r.prefill_s
            );
            assert!(
                te.abs() <= 0.10,
                "batch {bs}: total {:.3} s vs {total} s",
                r.total_s
            );
        }
    }
}

#[test]
fn uncalibrated_profiles_say_so() {
    for name in Profile::builtin_names() {
        let p = Profile::load(&name).unwrap();
        // The A100 profile is fitted to SGLang's numbers, the H100 doppel one to our engine's.
        let fitted = ["a100-80g/qwen3-0.6b/sglang", "h100-80g/qwen3-0.6b/doppel"];
        assert_eq!(p.calibrated, fitted.contains(&name.as_str()), "{name}");
        if !p.calibrated {
            assert!(p.source.contains("roofline"), "{name}");
        }
    }
}
