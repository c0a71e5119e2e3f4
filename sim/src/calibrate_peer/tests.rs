use super::*;
use crate::one_batch;

/// The one-batch table `p` gives at every batch size x prompt length (64 output tokens).
fn table(p: &Profile, batches: &[usize], inputs: &[usize]) -> Vec<OneBatchRow> {
    let cost = RooflineCost::new(p, 1);
    let mut rows = Vec::new();
    for &b in batches {
        for &i in inputs {
            let r = one_batch::run(&cost, b, i, 64);
            rows.push(OneBatchRow {
                batch: b,
                input_len: i,
                output_len: 64,
                prefill_s: r.prefill_s,
                decode_s: r.decode_median_s,
            });
        }
    }
    rows
}

/// Four requests one at a time, as `p` serves them: each ITL is the device's decode step alone.
fn one_stream_run(p: &Profile) -> ServingRun {
    let mut run = ServingRun {
        origin: "made.json".into(),
        requests: (0..4).map(|i| (i as f64 * 400.0, 128, 64)).collect(),
        median_itl_ms: 0.0,
        median_ttft_ms: 0.0,
    };
    let made = replay(p, &run).unwrap();
    (run.median_itl_ms, run.median_ttft_ms) = (made.itl_ms, made.ttft_ms);
    run
}

/// `truth` with the figures the fit finds set to zero.
/// `fit` over every row's prefill and `truth`'s one-stream run.
fn fit_all_rows(
    base: &Profile,
    rows: &[OneBatchRow],
    truth: &Profile,
) -> Result<Profile, SimError> {
    let run = one_stream_run(truth);
    fit(base, rows, PrefillRows::All, &[run], "p", "m")
}

fn unfitted(truth: &Profile) -> Profile {
    let mut base = truth.clone();
    base.engine.schedule_ns_per_step = 0.0;
    base.efficiency.decode_step_ns = 0.0;
    base.efficiency.prefill_step_ns = 0.0;
    base
}

#[test]
fn a_table_and_a_serving_run_made_by_a_profile_give_back_its_split_and_request_path() {
    let truth = Profile::load("a100-80g/qwen3-0.6b/sglang").unwrap();
    let rows = table(&truth, &[1, 4, 16, 64], &[128]);
    let run = one_stream_run(&truth);
    let mut base = unfitted(&truth);
    // A request path 5 ms off: the fit sets it from the run's median TTFT.
    base.engine.http_ns = truth.engine.http_ns + 5e6;
    let fit_to = |rows: &[OneBatchRow], prefill| {
        fit(&base, rows, prefill, std::slice::from_ref(&run), "p", "m")
    };
    let p = fit_to(&rows, PrefillRows::All).unwrap();
    assert!(p.calibrated);
    let host = p.engine.schedule_ns_per_step;
    assert!((host - 920e3).abs() <= 30e3, "host {host}");
    let d0 = p.efficiency.decode_step_ns;
    assert!((d0 - 1.46e6).abs() <= 30e3, "decode fixed {d0}");
    let http = p.engine.http_ns;
    assert!((http - truth.engine.http_ns).abs() <= 50e3, "http {http}");
    let itl = replay(&p, &run).unwrap().itl_ms;
    assert!((itl / run.median_itl_ms - 1.0).abs() < 0.01, "{itl}");
    // Rows whose prefill is not one step (here 3x too slow) are left out when told to.
    let mut slow = rows.clone();
    for r in slow.iter_mut().filter(|r| r.batch > 1) {
        r.prefill_s *= 3.0;
    }
    let all = fit_to(&slow, PrefillRows::All).unwrap();
    let one = fit_to(&slow, PrefillRows::Batches(&[1])).unwrap();
    let want = p.efficiency.prefill_step_ns;
    assert!(
        (one.efficiency.prefill_step_ns - want).abs() <= 30e3,
        "{one:?}"
    );
    assert!(all.efficiency.prefill_step_ns > want + 10e6, "{all:?}");
    let e = fit_to(&rows, PrefillRows::Batches(&[7]));
    assert!(e.unwrap_err().to_string().contains("--prefill-batch"));
    // Without a serving run the split is not identified: refused with the reason.
    let e = fit(&base, &rows, PrefillRows::All, &[], "peer", "made")
        .unwrap_err()
        .to_string();
    assert!(e.contains("serving run"), "{e}");
}

#[test]
fn a_table_at_two_prompt_lengths_gives_back_the_kv_rate_that_made_it() {
    let mut truth = Profile::load("a100-80g/qwen3-0.6b/sglang").unwrap();
    truth.efficiency.kv_bandwidth = 0.55;
    let rows = table(&truth, &[1, 4, 16, 64], &[128, 1024]);
    let got = fit_kv_bandwidth(&truth, &rows).unwrap().unwrap();
    assert!((got / 0.55 - 1.0).abs() < 0.01, "{got}");
    // One prompt length: nothing tells the KV read from the rest of the step.
    let one = table(&truth, &[1, 4, 16, 64], &[128]);
    assert_eq!(fit_kv_bandwidth(&truth, &one).unwrap(), None);
    // The whole fit takes the rate first, then finds the same split as at the base's rate.
    let mut base = unfitted(&truth);
    base.efficiency.kv_bandwidth = 0.8;
    let p = fit_all_rows(&base, &rows, &truth).unwrap();
    assert!(
        (p.efficiency.kv_bandwidth / 0.55 - 1.0).abs() < 0.01,
        "{p:?}"
    );
    let (host, d0) = (p.engine.schedule_ns_per_step, p.efficiency.decode_step_ns);
    assert!(
        (host - 920e3).abs() <= 30e3 && (d0 - 1.46e6).abs() <= 30e3,
        "{host} {d0}"
    );
}

#[test]
fn a_table_whose_longer_prompts_decode_faster_is_refused_naming_the_field() {
    let p = Profile::load("h100-80g/qwen3-0.6b/roofline").unwrap();
    let mut rows = table(&p, &[16], &[128, 1024]);
    rows[1].decode_s = rows[0].decode_s * 0.9;
    let e = fit_kv_bandwidth(&p, &rows).unwrap_err().to_string();
    assert!(e.contains("median_decode_latency"), "{e}");
}

#[test]
fn loads_both_table_forms_and_names_a_bad_field() {
    let dir = std::env::temp_dir().join(format!("doppel-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ours = dir.join("ours.json");
    std::fs::write(&ours, r#"[{"batch_size": 4, "input_len": 128, "output_len": 64, "prefill_latency_ms": 20.0, "median_decode_latency_ms": 3.0}]"#).unwrap();
    let sglang = dir.join("sglang.jsonl");
    std::fs::write(&sglang, "{\"batch_size\": 4, \"input_len\": 128, \"output_len\": 64, \"prefill_latency\": 0.02, \"median_decode_latency\": 0.003}\n").unwrap();
    let a = load_one_batch(ours.to_str().unwrap()).unwrap();
    let b = load_one_batch(sglang.to_str().unwrap()).unwrap();
    assert_eq!(a.len(), 1);
    assert!(
        (a[0].prefill_s - b[0].prefill_s).abs() < 1e-12 && (a[0].decode_s - 0.003).abs() < 1e-12
    );
    std::fs::write(
        &ours,
        r#"[{"batch_size": 0, "input_len": 128, "output_len": 64}]"#,
    )
    .unwrap();
    let e = load_one_batch(ours.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[0].batch_size"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_base_with_a_measured_decode_table_is_refused_naming_it() {
    let base = Profile::load("h100-80g/qwen3-0.6b/doppel").unwrap();
    assert!(!base.decode_table.is_empty());
    let rows = table(&base, &[1, 4], &[128]);
    let e = fit_all_rows(&base, &rows, &base).unwrap_err().to_string();
    assert!(e.contains("--base") && e.contains("decode table"), "{e}");
}
