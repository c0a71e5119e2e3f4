//! A `doppel exec serve` process for the workspace tests, on a free loopback port, and the
//! tiny model and bench client the bench tests point at it.
#![allow(dead_code)]

use doppel_exec::model::Arch;
use doppel_exec::server::client::{self, block_on};
use doppel_exec::testgen::{write_model, TinySpec};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The committed tiny Llama.
pub const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/exec/tests/fixtures/tiny-llama"
);

/// A running server; killed when dropped.
pub struct Served {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
}

impl Served {
    /// Start on the tiny Llama with extra flags; waits for the listening address.
    pub fn start(extra: &[&str]) -> Served {
        let base = ["--model", MODEL, "--port", "0", "--threads", "1"];
        Served::serve(&[&base[..], extra].concat())
    }

    /// `doppel exec serve ARGS` (which must pick port 0); waits for the listening address.
    pub fn serve(args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_doppel"))
            .args(["exec", "serve"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = log.clone();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split("on http://").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
                l2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {}", log.lock().unwrap());
            }
        };
        Served { child, addr, log }
    }

    /// POST JSON, asserting 200.
    pub fn post(&self, path: &str, v: &Value) -> Value {
        let r = block_on(client::post_json(&self.addr, path, v))
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, empty temporary directory, one per call (the tests of a file run in parallel).
pub fn scratch(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("doppel-{tag}-{}-{k}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `scripts/peers/SCRIPT` with python3 and `args`: (success, stdout, stderr).
pub fn peers_script(script: &str, args: &[&str]) -> (bool, String, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/peers")
        .join(script);
    let o = Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3 is needed for this test");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A fresh temporary directory holding `model/`, a tiny Qwen3 with a 2,048-token vocabulary
/// (the bench client's random ids stay below it). One per call: the tests of a file run in
/// parallel in one process.
pub fn scratch_with_tiny_qwen3(tag: &str) -> PathBuf {
    let dir = scratch(tag);
    let mut spec = TinySpec::tiny(Arch::Qwen3);
    spec.vocab_size = Some(2048);
    write_model(&dir.join("model"), &spec).unwrap();
    dir
}

/// A server on `dir/model` (see [`scratch_with_tiny_qwen3`]) for `doppel bench serve`; the
/// directory goes when it is dropped.
pub struct BenchTarget {
    pub served: Served,
    pub dir: PathBuf,
}

impl BenchTarget {
    /// `doppel exec serve` on `dir/model` with extra flags.
    pub fn start(dir: PathBuf, extra: &[&str]) -> BenchTarget {
        let model = dir.join("model");
        let base = [
            "--port",
            "0",
            "--threads",
            "1",
            "--model",
            model.to_str().unwrap(),
        ];
        let served = Served::serve(&[&base[..], extra].concat());
        BenchTarget { served, dir }
    }

    /// `doppel bench serve ARGS` against it: (success, stdout, stderr).
    pub fn bench(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_doppel"))
            .args(["bench", "serve", "--disable-tqdm", "--time-limit", "120"])
            .args(["--base-url", &format!("http://{}", self.served.addr)])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for BenchTarget {
    fn drop(&mut self) {
        // the server first: it may still write into the directory
        let _ = self.served.child.kill();
        let _ = self.served.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The number after `label` on its line of a printed report (bench serve's, sim replay's).
pub fn figure(table: &str, label: &str) -> f64 {
    table
        .lines()
        .find(|l| l.starts_with(label))
        .and_then(|l| l[label.len()..].trim().parse().ok())
        .unwrap_or_else(|| panic!("{label} not in\n{table}"))
}
