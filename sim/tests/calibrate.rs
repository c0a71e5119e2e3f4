//! `doppel sim calibrate`: step times generated from a known profile are fitted back.

use doppel_sim::calibrate::{
    calibrate, HostOverheads, Measurements, SchedulePoint, StepPoint, SubmitPoint,
};
use doppel_sim::cost::{BatchShape, CostModel, RooflineCost};
use doppel_sim::heat::{run_levels, RunStep};
use doppel_sim::Profile;

fn shapes() -> Vec<BatchShape> {
    let mut v = Vec::new();
    for len in [64, 256, 1024, 4096] {
        for b in [1, 2, 4, 8, 16] {
            if b * len <= 16384 {
                v.push(BatchShape::prefill(b, len));
            }
        }
    }
    for b in [1, 4, 16, 32, 64, 128, 256] {
        for kv in [128, 512, 2048] {
            v.push(BatchShape::decode(b, kv));
        }
    }
    v
}

fn known() -> Profile {
    let mut p = Profile::load("h100-80g/qwen3-0.6b/roofline").unwrap();
    let e = &mut p.efficiency;
    e.gemm = vec![(1.0, 0.3), (1024.0, 0.45), (8192.0, 0.62)];
    e.weight_bandwidth = 0.55;
    e.kv_bandwidth = 0.6;
    e.attention_compute = 0.35;
    e.decode_step_ns = 900_000.0;
    e.prefill_step_ns = 1_800_000.0;
    e.prefill_per_req_ns = 35_000.0;
    p
}

fn measurements(p: &Profile, shapes: &[BatchShape]) -> Measurements {
    let cost = RooflineCost::new(p, 1);
    let m = &p.model;
    Measurements {
        device: "generated".into(),
        model: "known profile".into(),
        shape: [
            m.layers,
            m.hidden,
            m.heads,
            m.kv_heads,
            m.head_dim,
            m.intermediate,
            m.vocab,
        ],
        method: "generated from a known profile".into(),
        steps: shapes
            .iter()
            .map(|s| {
                let mode = if s.is_decode { "decode" } else { "prefill" };
                StepPoint::of(s, mode, cost.step_ns(s))
            })
            .collect(),
        schedule: (1..=64)
            .map(|n| SchedulePoint {
                entries: n,
                ns: 150_000 + 2_500 * n as u64,
            })
            .collect(),
        // 8 us + 20 ns per prompt token, one slow first submission per length.
        submit: [64usize, 512, 2048]
            .iter()
            .flat_map(|&len| {
                let ns = 8_000 + 20 * len as u64;
                [ns * 5, ns, ns].map(|ns| SubmitPoint {
                    prompt_len: len,
                    ns,
                })
            })
            .collect(),
        host: HostOverheads {
            http_ns: 1000.0,
            ..Default::default()
        },
    }
}

#[test]
fn fits_a_known_profile_back() {
    let truth = known();
    let m = measurements(&truth, &shapes());
    let base = Profile::load("h100-80g/qwen3-0.6b/roofline").unwrap();
    let fit = calibrate(&base, &m, "test/fitted", "generated").unwrap();
    let (mean, max) = fit.errors();
    assert!(mean < 0.005 && max < 0.02, "mean {mean} max {max}");
    assert!(fit.profile.calibrated);
    assert_eq!(fit.profile.name, "test/fitted");
    let e = &fit.profile.engine;
    assert!((e.schedule_ns_per_step - 150_000.0).abs() < 1.0, "{e:?}");
    assert!((e.schedule_ns_per_req - 2_500.0).abs() < 0.5, "{e:?}");
    assert_eq!((e.http_ns, e.tokenize_ns, e.stream_ns), (1000.0, 0.0, 0.0));
    assert_eq!(
        (e.submit_ns, e.submit_ns_per_token),
        (8_000.0, 20.0),
        "{e:?}"
    );
    // Shapes not used for fitting are predicted as well.
    let held_out = [
        BatchShape::prefill(3, 700),
        BatchShape::prefill(1, 3000),
        BatchShape::decode(48, 1500),
        BatchShape::decode(200, 300),
    ];
    let (a, b) = (
        RooflineCost::new(&truth, 1),
        RooflineCost::new(&fit.profile, 1),
    );
    for s in held_out {
        let (t, f) = (a.step_ns(&s) as f64, b.step_ns(&s) as f64);
        assert!((f - t).abs() / t < 0.03, "{s:?}: truth {t} fitted {f}");
    }
    // The fitted profile round-trips through YAML and loads as a profile.
    let yaml = doppel_sim::calibrate::to_yaml(&fit).unwrap();
    let back = Profile::parse(&yaml, "fitted.yaml").unwrap();
    assert_eq!(back.name, "test/fitted");
}

#[test]
fn a_sustained_load_slowdown_is_fitted_from_runs_and_taken_off_the_rest() {
    let truth = known();
    let mut m = measurements(&truth, &shapes());
    assert_eq!(fit_of(&m).efficiency.sustained_slowdown, 0.0);
    // Three runs of back-to-back large prefills (ragged in the third), each from a rested
    // GPU, slowed by a known heat (doppel_sim::heat), 1 ms apart.
    let (slowdown, tau) = (0.06, 120e6);
    let cost = RooflineCost::new(&truth, 1);
    let runs: [Vec<BatchShape>; 3] = [
        vec![BatchShape::prefill(8, 1024); 14],
        vec![BatchShape::prefill(4, 4096); 10],
        (0..24)
            .map(|i| BatchShape::prefill(8 + i % 5, 700 + 37 * (i % 7)))
            .collect(),
    ];
    for (r, shapes) in runs.iter().enumerate() {
        let steps: Vec<RunStep> = shapes
            .iter()
            .scan(0.0, |at, s| {
                let (ns, load) = cost.step_ns_with_load(s);
                let ns = ns as f64;
                let step = RunStep {
                    at_ns: *at,
                    ns,
                    load,
                };
                *at += ns + 1e6;
                Some(step)
            })
            .collect();
        for (s, (st, h)) in shapes.iter().zip(steps.iter().zip(run_levels(&steps, tau))) {
            let ns = (st.ns * doppel_sim::heat::factor(slowdown, h, st.load)).round() as u64;
            let mut p = StepPoint::of(s, "prefill", ns);
            p.run = Some(r as u32);
            p.run_ns = Some(st.at_ns as u64);
            m.steps.push(p);
        }
    }
    let fit = calibrate(
        &Profile::load("h100-80g/qwen3-0.6b/roofline").unwrap(),
        &m,
        "t",
        "g",
    )
    .unwrap();
    let e = &fit.profile.efficiency;
    assert!((e.sustained_slowdown - slowdown).abs() < 0.01, "{e:?}");
    assert!(
        e.sustained_tau_ns > 70e6 && e.sustained_tau_ns < 200e6,
        "{e:?}"
    );
    // The rested model is the truth: the runs' heat was taken off before the rest was fitted.
    let (mean, max) = fit.errors();
    assert!(mean < 0.005 && max < 0.02, "mean {mean} max {max}");
    let b = RooflineCost::new(&fit.profile, 1);
    for s in [BatchShape::prefill(8, 1024), BatchShape::prefill(2, 3000)] {
        let (t, f) = (cost.step_ns(&s) as f64, b.step_ns(&s) as f64);
        assert!((f - t).abs() / t < 0.02, "{s:?}: truth {t} fitted {f}");
    }
}

fn fit_of(m: &Measurements) -> Profile {
    let base = Profile::load("h100-80g/qwen3-0.6b/roofline").unwrap();
    calibrate(&base, m, "t", "g").unwrap().profile
}

#[test]
fn a_base_of_another_model_is_refused() {
    let m = measurements(&known(), &shapes());
    let base = Profile::load("h100-80g/llama-3-8b/sglang").unwrap();
    let e = calibrate(&base, &m, "x", "meas.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("meas.json") && e.contains("shape"), "{e}");
}

#[test]
fn bad_measurement_files_name_the_problem() {
    let dir = std::env::temp_dir().join(format!("doppel-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.json");
    let p = path.to_str().unwrap();
    std::fs::write(&path, "{\"device\": 1}").unwrap();
    let e = Measurements::load(p).unwrap_err().to_string();
    assert!(e.contains("m.json"), "{e}");
    let mut m = measurements(&known(), &shapes());
    m.steps[3].ns = 0;
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let e = Measurements::load(p).unwrap_err().to_string();
    assert!(e.contains("steps[3]"), "{e}");
    m.steps.clear();
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let e = Measurements::load(p).unwrap_err().to_string();
    assert!(e.contains("no measured steps"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_shipped_h100_profile_is_the_fit_of_the_shipped_measurements() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/measurements/h100-80g_qwen3-0.6b_doppel.json.gz"
    );
    let m = Measurements::load(path).unwrap();
    let base = Profile::load("h100-80g/qwen3-0.6b/roofline").unwrap();
    let fit = calibrate(&base, &m, "h100-80g/qwen3-0.6b/doppel", path).unwrap();
    let shipped = Profile::load("h100-80g/qwen3-0.6b/doppel").unwrap();
    assert!(shipped.calibrated);
    let (a, b) = (
        RooflineCost::new(&fit.profile, 1),
        RooflineCost::new(&shipped, 1),
    );
    for s in shapes() {
        let (x, y) = (a.step_ns(&s) as f64, b.step_ns(&s) as f64);
        assert!((x - y).abs() / y < 1e-6, "{s:?}: refit {x} shipped {y}");
    }
    let (mean, _) = fit.errors();
    assert!(mean < 0.08, "mean fit error {mean}");
}
