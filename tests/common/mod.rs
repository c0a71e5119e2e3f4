//! A `doppel exec serve` process for the workspace tests, on a free loopback port.
#![allow(dead_code)]

use doppel_exec::server::client::{self, block_on};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
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
