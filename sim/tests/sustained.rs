//! The sustained-load term in a replay: back-to-back prefills slow down as the heat builds, and
//! a profile without the term replays exactly as before.

use doppel_core::ForwardMode;
use doppel_sim::{replay, SimOptions, Trace};

fn opts() -> SimOptions {
    SimOptions {
        timing_from: None,
        record_steps: true,
        log_batches: false,
    }
}

/// A 120-request burst (prefilled in 8192-token steps, then decoded) on the shipped H100
/// profile with `extra` lines added to its efficiency section; prefill and decode device times.
fn burst(extra: &str) -> (Vec<u64>, Vec<u64>, String) {
    // The shipped profile's own term (if fitted) is taken out: `extra` sets it.
    let shipped: String = include_str!("../profiles/h100-80g_qwen3-0.6b_doppel.yaml")
        .lines()
        .filter(|l| !l.trim_start().starts_with("sustained_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let profile = shipped.replace("\nefficiency:\n", &format!("\nefficiency:\n{extra}"));
    let dir = std::env::temp_dir().join(format!("doppel-sustained-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("p{}.yaml", extra.len());
    std::fs::write(dir.join(&name), profile).unwrap();
    let text = format!(
        "name: sustained\nprofile: {}\nseed: 3\nengine:\n  kv_capacity_tokens: 200000\n  chunked_prefill_size: 8192\nworkload:\n  kind: random\n  num_requests: 120\n  input_len: 1024\n  output_len: 32\n  range_ratio: 0.5\narrival:\n  pattern: burst\n",
        dir.join(&name).display()
    );
    let trace = Trace::parse(&text, "sustained").unwrap();
    let r = replay(trace, "sustained", opts()).unwrap();
    let steps = &r.outcome.step_records;
    let dev = |m: ForwardMode| -> Vec<u64> {
        steps
            .iter()
            .filter(|s| s.mode == m)
            .map(|s| s.device_ns.unwrap())
            .collect()
    };
    // Every step's times and every request's outcome, to compare replays byte for byte.
    let all = format!("{:?}\n{:?}", steps, r.outcome.records);
    (dev(ForwardMode::Extend), dev(ForwardMode::Decode), all)
}

#[test]
fn back_to_back_prefills_slow_down_as_the_heat_builds() {
    let (cold, cold_decode, plain) = burst("");
    let (hot, hot_decode, _) =
        burst("  sustained_slowdown: 0.05\n  sustained_tau_ns: 100000000.0\n");
    assert!(cold.len() >= 8, "{}", cold.len());
    assert_eq!(cold.len(), hot.len());
    let ratio: Vec<f64> = hot
        .iter()
        .zip(&cold)
        .map(|(h, c)| *h as f64 / *c as f64)
        .collect();
    // The first prefill runs on a rested GPU (its mean heat is small), later ones slower, never
    // more than the full slowdown.
    assert!(ratio[0] < 1.02, "{ratio:?}");
    assert!(ratio[7] > ratio[1] + 0.01, "{ratio:?}");
    assert!(
        ratio.iter().all(|&r| (1.0..=1.05 + 1e-9).contains(&r)),
        "{ratio:?}"
    );
    // Decode steps are memory-bound (load 0): the cap's lower clock does not slow them, and
    // they cool the GPU.
    assert_eq!(hot_decode, cold_decode);
    // Off (0) replays byte for byte as a profile without the fields.
    let (_, _, off) = burst("  sustained_slowdown: 0.0\n");
    assert_eq!(off, plain);
    // And the term is deterministic.
    let (_, _, a) = burst("  sustained_slowdown: 0.05\n  sustained_tau_ns: 100000000.0\n");
    let (_, _, b) = burst("  sustained_slowdown: 0.05\n  sustained_tau_ns: 100000000.0\n");
    assert_eq!(a, b);
}
