//! `doppel exec generate --tp-size N` on the committed tiny Llama (4 heads, 2 KV heads): TP=2
//! prints the same greedy text as TP=1; sizes that do not divide are refused, and CUDA TP
//! names what it lacks.

use std::process::Command;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/exec/tests/fixtures/tiny-llama"
);

fn generate(extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(["exec", "generate", "--model", MODEL, "--quiet"])
        .args(["--prompt", "The capital of France is", "--temperature", "0"])
        .args(["--max-new-tokens", "10", "--ignore-eos"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tp_2_prints_the_tp_1_text() {
    let (ok, one, err) = generate(&[]);
    assert!(ok, "{err}");
    let (ok, two, err) = generate(&["--tp-size", "2"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("2 tensor-parallel ranks") && err.contains("TP rank 1: "),
        "{err}"
    );
    assert_eq!(two, one);
    let (ok, alias, err) = generate(&["--tp", "2"]);
    assert!(ok, "{err}");
    assert_eq!(alias, one);
}

#[test]
fn bad_tp_sizes_are_refused_naming_the_reason() {
    let (ok, _, err) = generate(&["--tp-size", "4"]);
    assert!(!ok && err.contains("num_key_value_heads (2)"), "{err}");
    let (ok, _, err) = generate(&["--tp-size", "0"]);
    assert!(!ok && err.contains("--tp-size must be at least 1"), "{err}");
    // CUDA TP starts for real: without NCCL or a GPU (CI) it fails naming the missing piece;
    // on GPUs this fixture's head_dim 16 is refused by the GPU kernels.
    let (ok, _, err) = generate(&["--tp-size", "2", "--device", "cuda"]);
    let named = [
        "NCCL could not be loaded",
        "no CUDA driver",
        "no CUDA device",
        "head_dim 16",
    ];
    assert!(
        !ok && err.contains("--tp-size 2 --device cuda") && named.iter().any(|n| err.contains(n)),
        "{err}"
    );
}
