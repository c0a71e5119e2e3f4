//! sglang-router (the `sglang-router` pip package, see tests/requirements.txt) in front of two
//! `doppel exec serve` processes: requests without `model` and with any name are routed, the
//! cache-aware policy keeps a shared prefix on one server, and the router reads each server's
//! load from /get_load.

mod common;

use common::Served;
use doppel_exec::server::client::{self, block_on};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Router {
    child: Child,
    addr: String,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start_router(workers: &[&Served]) -> Router {
    let port = free_port().to_string();
    let mut args = vec![
        "-m".to_string(),
        "sglang_router.launch_router".into(),
        "--policy".into(),
        "cache_aware".into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.clone(),
        "--worker-urls".into(),
    ];
    args.extend(workers.iter().map(|w| format!("http://{}", w.addr)));
    let child = Command::new("python3")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is needed for this test");
    let mut r = Router {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = r.child.try_wait() {
            panic!(
                "sglang-router exited ({st}); install it with python3 -m pip install -r tests/requirements.txt"
            );
        }
        let ready = block_on(client::get(&r.addr, "/readiness"))
            .ok()
            .and_then(Result::ok)
            .is_some_and(|x| x.status == 200);
        if ready {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sglang-router did not become ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn post(addr: &str, path: &str, v: &Value) -> Value {
    let r = block_on(client::post_json(addr, path, v)).unwrap().unwrap();
    assert_eq!(r.status, 200, "{path} {v}: {}", r.text());
    r.json()
}

fn finished(w: &Served) -> u64 {
    let r = block_on(client::get(&w.addr, "/get_server_info"))
        .unwrap()
        .unwrap();
    r.json()["counters"]["finished"].as_u64().unwrap()
}

#[test]
fn sglang_router_routes_by_prefix_and_reads_load() {
    let a = Served::start(&[]);
    let b = Served::start(&[]);
    let router = start_router(&[&a, &b]);
    let r = router.addr.as_str();
    // No `model`, and a name the servers do not use: both are served.
    let prefix =
        "A long shared system prompt that the cache-aware policy should keep on one server. ";
    for (i, model) in [None, Some("any-name"), None, None, Some("gpt-4o"), None]
        .iter()
        .enumerate()
    {
        let mut body = json!({"messages": [{"role": "user", "content": format!("{prefix}question {i}")}],
                              "max_tokens": 2});
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        let v = post(r, "/v1/chat/completions", &body);
        assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");
    }
    let v = post(
        r,
        "/generate",
        &json!({"text": format!("{prefix}question 6"), "sampling_params": {"max_new_tokens": 2}}),
    );
    assert_eq!(v["meta_info"]["completion_tokens"], 2, "{v}");
    // Cache-aware routing: every request with the shared prefix went to the same server.
    let counts = (finished(&a), finished(&b));
    assert!(counts == (7, 0) || counts == (0, 7), "{counts:?}");
    // Load: a long generation on one server shows in the router's view of its load.
    let busy = a.addr.clone();
    let long = std::thread::spawn(move || {
        post(
            &busy,
            "/generate",
            &json!({"text": "busy", "sampling_params": {"max_new_tokens": 1500, "ignore_eos": true}}),
        )
    });
    let start = Instant::now();
    let key = format!("http://{}", a.addr);
    let seen = loop {
        let loads = block_on(client::get(r, "/get_loads"))
            .unwrap()
            .unwrap()
            .json();
        let load = loads["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker"] == key.as_str())
            .map_or(0, |w| w["load"].as_u64().unwrap_or(0));
        if load > 0 || start.elapsed() > Duration::from_secs(20) {
            break load;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(seen > 0, "the router never saw the busy server's load");
    long.join().unwrap();
}
