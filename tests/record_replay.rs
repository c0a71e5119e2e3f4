//! `doppel exec serve --record FILE` on loopback (CPU backend, tiny model): the recorded trace
//! holds every request with its lengths and its shared prefix as equal page hashes (no token
//! ids), `doppel sim replay` replays it with the prefix cache hitting, and `doppel bench serve
//! --dataset-name trace` sends it again.

use doppel_exec::model::Arch;
use doppel_exec::testgen::{write_model, TinySpec};
use doppel_sim::trace::Workload;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn figure(table: &str, label: &str) -> f64 {
    table
        .lines()
        .find(|l| l.starts_with(label))
        .and_then(|l| l[label.len()..].trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn a_recorded_server_trace_replays_in_the_simulator_and_the_bench_client() {
    let dir = std::env::temp_dir().join(format!("doppel-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = TinySpec::tiny(Arch::Qwen3);
    spec.vocab_size = Some(2048);
    write_model(&dir.join("model"), &spec).unwrap();
    let rec = dir.join("rec.yaml");
    let bin = env!("CARGO_BIN_EXE_doppel");
    let mut child = Command::new(bin)
        .args(["exec", "serve", "--port", "0", "--threads", "1", "--model"])
        .arg(dir.join("model"))
        .arg("--record")
        .arg(&rec)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.split("on http://").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let Ok(addr) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!("server did not start");
    };
    let bench = |args: &[&str]| {
        let out = Command::new(bin)
            .args(["bench", "serve", "--disable-tqdm", "--time-limit", "120"])
            .args([
                "--base-url",
                &format!("http://{addr}"),
                "--warmup-requests",
                "0",
            ])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    // Two system prompts of 96 tokens (6 pages of 16), 4 questions each.
    bench(&[
        "--dataset-name",
        "shared-prefix",
        "--gsp-num-groups",
        "2",
        "--gsp-prompts-per-group",
        "4",
        "--gsp-system-prompt-len",
        "96",
        "--gsp-question-len",
        "8",
        "--gsp-output-len",
        "4",
        "--max-concurrency",
        "1",
    ]);
    let copy = dir.join("copy.yaml");
    std::fs::copy(&rec, &copy).unwrap();
    let text = std::fs::read_to_string(&copy).unwrap();
    let trace = doppel_sim::Trace::load(copy.to_str().unwrap()).unwrap();
    let Workload::Requests { requests, page_len } = &trace.workload else {
        panic!("not a request list: {text}");
    };
    assert_eq!((requests.len(), *page_len), (8, Some(16)), "{text}");
    let mut firsts: Vec<u64> = Vec::new();
    for r in requests {
        assert_eq!((r.prompt_len, r.output_len), (Some(104), 4), "{text}");
        let pages = r.pages.as_ref().unwrap();
        assert_eq!(pages.len(), 6);
        firsts.push(pages[5]);
    }
    firsts.sort_unstable();
    firsts.dedup();
    assert_eq!(firsts.len(), 2, "two system prompts: {text}");
    assert!(!text.contains("prompt:"), "no token ids leave the server");

    // The simulator replays it, and the shared pages hit its prefix cache.
    let out = Command::new(bin)
        .args(["sim", "replay"])
        .arg(&copy)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(figure(&table, "Successful requests:"), 8.0, "{table}");
    assert_eq!(figure(&table, "Total generated tokens:"), 32.0, "{table}");
    assert!(figure(&table, "Cache hit rate (%):") > 50.0, "{table}");

    // The bench client sends it again.
    let out = bench(&["--dataset-name", "trace", "--trace", copy.to_str().unwrap()]);
    assert_eq!(figure(&out, "Successful requests:"), 8.0, "{out}");
    assert_eq!(figure(&out, "Total generated tokens:"), 32.0, "{out}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
