//! Checkpoint loading: bad directories give errors that name the file and the tensor.

use doppel_exec::model::{Arch, CpuModel, DType, WeightStore};
use doppel_exec::testgen::{safetensors_bytes, write_model, TinySpec};
use doppel_exec::tokenizer::Tokenizer;
use std::path::Path;

fn err(dir: &Path) -> String {
    match CpuModel::load(dir, false) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn fresh(arch: Arch, shards: usize) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut s = TinySpec::tiny(arch);
    s.shards = shards;
    write_model(d.path(), &s).unwrap();
    d
}

#[test]
fn missing_files() {
    let d = tempfile::tempdir().unwrap();
    let e = err(d.path());
    assert!(
        e.contains("config.json") && e.contains("cannot read"),
        "{e}"
    );
    let d = fresh(Arch::Qwen3, 1);
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = err(d.path());
    assert!(e.contains("no model.safetensors"), "{e}");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let e = Tokenizer::load(d.path()).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    // A shard named by the index is missing.
    let d = fresh(Arch::Llama, 2);
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = err(d.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn unsupported_architecture() {
    let d = fresh(Arch::Qwen3, 1);
    let p = d.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("Qwen3ForCausalLM", "GPT2LMHeadModel");
    std::fs::write(&p, text).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("config.json") && e.contains("GPT2LMHeadModel") && e.contains("unsupported"),
        "{e}"
    );
}

#[test]
fn truncated_shard_names_file_and_tensor() {
    let d = fresh(Arch::Llama, 2);
    let p = d.path().join("model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("model-00001-of-00002.safetensors")
            && e.contains("truncated")
            && e.contains("tensor `"),
        "{e}"
    );
    // Truncated inside the header.
    std::fs::write(&p, &bytes[..20]).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("model-00001-of-00002.safetensors") && e.contains("header"),
        "{e}"
    );
}

fn rewrite_tensor(dir: &Path, name: &str, shape: Vec<usize>) {
    // Rebuild model.safetensors (as F32) with one tensor replaced.
    let store = WeightStore::open(dir).unwrap();
    let mut tensors = doppel_exec::testgen::Tensors::new();
    for n in store.names() {
        let shape0 = store.shape(n).unwrap().to_vec();
        let t = store.get(n, &shape0).unwrap();
        tensors.insert(n.to_string(), (shape0, t.to_f32()));
    }
    drop(store);
    let n: usize = shape.iter().product();
    tensors.insert(name.to_string(), (shape, vec![0.5; n]));
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&tensors, DType::F32),
    )
    .unwrap();
}

#[test]
fn wrong_shape_names_tensor() {
    let d = fresh(Arch::Qwen3, 1);
    rewrite_tensor(
        d.path(),
        "model.layers.1.self_attn.k_proj.weight",
        vec![7, 64],
    );
    let e = err(d.path());
    assert!(
        e.contains("model.safetensors")
            && e.contains("model.layers.1.self_attn.k_proj.weight")
            && e.contains("[7, 64]"),
        "{e}"
    );
    // A required tensor absent.
    let d = fresh(Arch::Qwen3, 1);
    let store = WeightStore::open(d.path()).unwrap();
    assert!(store.contains("model.layers.0.self_attn.q_norm.weight"));
    drop(store);
    let p = d.path().join("config.json");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "\"tie_word_embeddings\": true",
        "\"tie_word_embeddings\": false",
    );
    std::fs::write(&p, text).unwrap();
    let e = err(d.path());
    assert!(e.contains("missing tensor `lm_head.weight`"), "{e}");
}

#[test]
fn wrong_dtype_names_tensor() {
    let d = fresh(Arch::Qwen3, 1);
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    // Relabel one BF16 tensor as I16 (same width, so offsets stay valid).
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let at = header.find("\"model.norm.weight\"").unwrap();
    let rel = header[at..].find("\"dtype\":\"BF16\"").unwrap();
    let mut new_header = header.to_string();
    new_header.replace_range(at + rel..at + rel + 14, "\"dtype\":\"I16\" ");
    assert_eq!(new_header.len(), header.len());
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(new_header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("model.norm.weight") && e.contains("I16"),
        "{e}"
    );
}

#[test]
fn written_files_parse_with_the_safetensors_crate() {
    let d = fresh(Arch::Qwen2, 1);
    let bytes = std::fs::read(d.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st
        .names()
        .iter()
        .any(|n| n.as_str() == "model.layers.0.self_attn.q_proj.bias"));
}
