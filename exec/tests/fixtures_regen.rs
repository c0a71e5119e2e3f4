//! The committed fixtures are exactly what the generator writes (tools/make_fixtures.sh), so the
//! transformers reference files beside them describe these bytes; if this fails after a
//! generator or dependency change, rerun make_fixtures.sh and tools/hf_reference.py.

use doppel_exec::model::{Arch, DType, RopeScaling};
use doppel_exec::testgen::{write_model, TinySpec};
use std::path::PathBuf;

fn spec(arch: Arch, seed: u64) -> TinySpec {
    // Mirrors the flags in tools/make_fixtures.sh.
    let mut s = TinySpec::tiny(arch);
    s.intermediate_size = 96;
    s.tokenizer_vocab = 320;
    s.dtype = DType::BF16;
    s.seed = seed;
    s
}

fn check(name: &str, s: &TinySpec) {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), s).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    files.sort();
    assert!(files.len() >= 5);
    for f in files {
        let want = std::fs::read(fixture.join(&f)).unwrap_or_else(|e| panic!("{name}/{f:?}: {e}"));
        let got = std::fs::read(d.path().join(&f)).unwrap();
        assert!(
            want == got,
            "{name}/{f:?} differs from what the generator writes now"
        );
    }
}

#[test]
fn fixtures_match_the_generator() {
    check("tiny-qwen3", &spec(Arch::Qwen3, 11));
    let mut llama = spec(Arch::Llama, 12);
    llama.shards = 2;
    check("tiny-llama", &llama);
    let mut qwen2 = spec(Arch::Qwen2, 13);
    qwen2.hidden_size = 48;
    qwen2.num_heads = 3;
    qwen2.num_kv_heads = 1;
    check("tiny-qwen2", &qwen2);
    let mut mistral = spec(Arch::Mistral, 14);
    (mistral.hidden_size, mistral.num_heads, mistral.num_kv_heads) = (128, 4, 1);
    mistral.head_dim = 64;
    check("tiny-mistral", &mistral);
    let mut yarn = spec(Arch::Qwen2, 15);
    yarn.head_dim = 32;
    yarn.rope_scaling = RopeScaling::yarn(4.0, 64.0);
    check("tiny-qwen2-yarn", &yarn);
}
