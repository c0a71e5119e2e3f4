//! `--tp-size` in the server: on the CPU a TP=2 server gives the same greedy tokens as TP=1
//! (batched requests); with CUDA a size that does not divide the model is refused at build.

mod server_common;

use doppel_exec::server::client::post_json;
use doppel_exec::server::{BackendKind, Server, ServerConfig};
use serde_json::{json, Value};
use server_common::{assert_no_leak, idle_info, start};

async fn greedy_outputs(tp_size: usize) -> Vec<Value> {
    let srv = start(|c| c.tp_size = tp_size).await;
    let a = srv.addr.clone();
    let reqs = (0..3u32).map(|r| {
        let ids: Vec<u32> = (0..6 + 5 * r).map(|i| 3 + (i * 31 + r) % 300).collect();
        let body = json!({"input_ids": ids,
            "sampling_params": {"max_new_tokens": 10, "temperature": 0, "ignore_eos": true}});
        let a = a.clone();
        async move { post_json(&a, "/generate", &body).await.unwrap() }
    });
    let mut out = Vec::new();
    for r in futures_join(reqs).await {
        assert_eq!(r.status, 200, "{}", r.text());
        out.push(r.json()["output_ids"].clone());
    }
    let info = idle_info(&a).await;
    assert_eq!(info["tp_size"], tp_size, "/get_server_info's tp_size");
    assert_no_leak(&info);
    srv.shutdown().await;
    out
}

/// Run the requests at once so that they share batches.
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tp_2_server_gives_tp_1_greedy_tokens() {
    let one = greedy_outputs(1).await;
    assert!(one.iter().all(|o| o.as_array().unwrap().len() == 10));
    assert_eq!(greedy_outputs(2).await, one);
}

#[test]
fn cuda_tp_size_that_does_not_divide_is_refused_before_any_device() {
    let dir = tempfile::tempdir().unwrap();
    let spec = doppel_exec::testgen::TinySpec::tiny(doppel_exec::model::Arch::Qwen3);
    doppel_exec::testgen::write_model(dir.path(), &spec).unwrap();
    let cfg = ServerConfig {
        model: Some(dir.path().to_path_buf()),
        tp_size: 3,
        ..Default::default()
    };
    let kind = BackendKind::Cuda {
        device: 0,
        mem_fraction_static: None,
        cuda_graph_max_bs: 0,
        kernels: Default::default(),
    };
    let e = Server::build(cfg, kind).err().expect("refused").to_string();
    assert!(
        e.contains("--tp-size 3") && e.contains("num_attention_heads (4)"),
        "{e}"
    );
}
