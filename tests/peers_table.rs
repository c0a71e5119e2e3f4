//! scripts/peers/table.py's `ab`: one engine's two runs (scripts/peers/ab.sh), workload by
//! workload, with B / A of the output tokens/s and the TTFT and ITL medians. The summary lines
//! are written by hand in the form `table.py line` writes them.

mod common;

fn line(workload: &str, tok_s: f64, ttft: f64, itl: f64) -> String {
    format!(
        r#"{{"engine": "doppel", "model": "m", "workload": "{workload}", "want": 10, "rc": 0, "args": "", "completed": 10, "duration_s": 1.0, "output_tok_s": {tok_s}, "ttft_median_ms": {ttft}, "ttft_p99_ms": 9.0, "itl_median_ms": {itl}, "itl_p99_ms": 9.0, "ok": true}}"#
    )
}

#[test]
fn ab_prints_both_runs_and_b_over_a_per_workload_and_names_a_missing_one() {
    let d = common::scratch("peers-table");
    let (a, b) = (d.join("A.jsonl"), d.join("B.jsonl"));
    let a_text = [
        line("w3-c64", 1000.0, 10.0, 4.0),
        line("w4", 500.0, 1.0, 1.0),
    ]
    .join("\n");
    std::fs::write(&a, a_text + "\n").unwrap();
    std::fs::write(&b, line("w3-c64", 1100.0, 15.0, 3.0) + "\n").unwrap();
    let (ok, out, err) = common::peers_script(
        "table.py",
        &["ab", a.to_str().unwrap(), b.to_str().unwrap()],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("B / A w3-c64: tok/s 1.10, TTFT med 1.50, ITL med 0.75"),
        "{out}"
    );
    assert!(out.contains("B w4: not run"), "{out}");
    assert!(!out.contains("B / A w4"), "{out}");
    // Two runs that wrote nothing (both variants failed to start) are an error, not a table.
    let empty = d.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let e = empty.to_str().unwrap();
    let (ok, _, err) = common::peers_script("table.py", &["ab", e, e]);
    assert!(!ok && err.contains("no summary lines"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
