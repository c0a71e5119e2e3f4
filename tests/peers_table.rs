//! scripts/peers/table.py's `ab`: one engine's two runs (scripts/peers/ab.sh), workload by
//! workload, with B / A of the output tokens/s and the TTFT and ITL medians. The summary lines
//! are written by hand in the form `table.py line` writes them.

use std::process::Command;

fn line(workload: &str, tok_s: f64, ttft: f64, itl: f64) -> String {
    format!(
        r#"{{"engine": "doppel", "model": "m", "workload": "{workload}", "want": 10, "rc": 0, "args": "", "completed": 10, "duration_s": 1.0, "output_tok_s": {tok_s}, "ttft_median_ms": {ttft}, "ttft_p99_ms": 9.0, "itl_median_ms": {itl}, "itl_p99_ms": 9.0, "ok": true}}"#
    )
}

#[test]
fn ab_prints_both_runs_and_b_over_a_per_workload_and_names_a_missing_one() {
    let d = std::env::temp_dir().join(format!("doppel-peers-table-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let (a, b) = (d.join("A.jsonl"), d.join("B.jsonl"));
    let a_text = [
        line("w3-c64", 1000.0, 10.0, 4.0),
        line("w4", 500.0, 1.0, 1.0),
    ]
    .join("\n");
    std::fs::write(&a, a_text + "\n").unwrap();
    std::fs::write(&b, line("w3-c64", 1100.0, 15.0, 3.0) + "\n").unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers/table.py");
    let o = Command::new("python3")
        .arg(script)
        .args(["ab", a.to_str().unwrap(), b.to_str().unwrap()])
        .output()
        .expect("python3 is needed for this test");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("B / A w3-c64: tok/s 1.10, TTFT med 1.50, ITL med 0.75"),
        "{out}"
    );
    assert!(out.contains("B w4: not run"), "{out}");
    assert!(!out.contains("B / A w4"), "{out}");
    std::fs::remove_dir_all(&d).unwrap();
}
