use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const EOS: TokenId = 256;
const VOCAB: usize = 300;

fn grammars() -> Grammars {
    Grammars::bytes(VOCAB, EOS).unwrap()
}

fn allowed(mask: &[u32]) -> Vec<TokenId> {
    (0..VOCAB as u32)
        .filter(|&t| mask[t as usize / 32] >> (t % 32) & 1 == 1)
        .collect()
}

/// Draw uniformly among the allowed tokens until EOS (or `limit` tokens); the output bytes.
fn random_walk(spec: &ConstraintSpec, seed: u64, limit: usize) -> (Vec<u8>, bool) {
    let h = grammars().compile(spec).unwrap();
    let mut m = TokenMatcher::open(&h).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut mask = vec![0u32; mask_words(VOCAB)];
    let mut out = Vec::new();
    for i in 0..limit {
        m.fill_mask(&mut mask);
        let ok = allowed(&mask);
        assert!(!ok.is_empty(), "empty mask after {out:?}");
        let t = ok[rng.gen_range(0..ok.len())];
        if t == EOS {
            return (out, true);
        }
        m.advance(i, t).unwrap();
        out.push(t as u8);
    }
    (out, false)
}

#[test]
fn random_tokens_through_the_mask_give_schema_valid_json() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": false,
    });
    let mut finished = 0;
    for seed in 0..20 {
        let (out, done) = random_walk(&ConstraintSpec::json_schema(schema.clone()), seed, 400);
        if !done {
            continue;
        }
        finished += 1;
        let v: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        let age = v["age"].as_i64().unwrap();
        assert!((0..=120).contains(&age), "{v}");
        assert!(v["name"].as_str().unwrap().chars().count() <= 6, "{v}");
        let tags = v["tags"].as_array().unwrap();
        assert!(
            tags.len() <= 3 && tags.iter().all(|t| t == "a" || t == "b"),
            "{v}"
        );
        assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    }
    assert!(finished >= 10, "only {finished} of 20 walks ended");
}

#[test]
fn eos_is_allowed_only_where_the_grammar_accepts() {
    let h = grammars()
        .compile(&ConstraintSpec::Regex("ab+".into()))
        .unwrap();
    let mut m = TokenMatcher::open(&h).unwrap();
    let mut mask = vec![0u32; mask_words(VOCAB)];
    m.fill_mask(&mut mask);
    assert_eq!(allowed(&mask), vec![b'a' as u32]);
    m.advance(0, b'a' as u32).unwrap();
    m.fill_mask(&mut mask);
    assert_eq!(allowed(&mask), vec![b'b' as u32]);
    m.advance(1, b'b' as u32).unwrap();
    m.fill_mask(&mut mask);
    assert_eq!(allowed(&mask), vec![b'b' as u32, EOS]);
    // A finished grammar allows only EOS.
    let h = grammars()
        .compile(&ConstraintSpec::Regex("x".into()))
        .unwrap();
    let mut m = TokenMatcher::open(&h).unwrap();
    m.advance(0, b'x' as u32).unwrap();
    m.fill_mask(&mut mask);
    assert_eq!(allowed(&mask), vec![EOS]);
    assert!(m.is_finished());
}

#[test]
fn refed_tokens_are_skipped_and_a_different_token_rolls_back() {
    let h = grammars()
        .compile(&ConstraintSpec::Regex("(ab|cd)e".into()))
        .unwrap();
    let mut m = TokenMatcher::open(&h).unwrap();
    m.catch_up(&[b'a' as u32, b'b' as u32]).unwrap();
    // A retracted request re-feeds its tokens: nothing changes.
    m.advance(0, b'a' as u32).unwrap();
    m.advance(1, b'b' as u32).unwrap();
    assert_eq!(m.consumed(), 2);
    m.advance(0, b'c' as u32).unwrap();
    m.advance(1, b'd' as u32).unwrap();
    let mut mask = vec![0u32; mask_words(VOCAB)];
    m.fill_mask(&mut mask);
    assert_eq!(allowed(&mask), vec![b'e' as u32]);
    assert!(m.advance(5, b'e' as u32).is_err());
    assert!(m.advance(2, b'z' as u32).is_err());
}

#[test]
fn invalid_constraints_are_refused_with_the_reason() {
    let g = grammars();
    let e = g
        .compile(&ConstraintSpec::Regex("a(b".into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("regex"), "{e}");
    let e = g
        .compile(&ConstraintSpec::json_schema(json!({"type": "nonsense"})))
        .unwrap_err();
    assert!(matches!(e, ConstraintError::Invalid(_)), "{e}");
    assert!(g
        .compile(&ConstraintSpec::json_schema(json!("string")))
        .is_err());
    let e = g
        .compile(&ConstraintSpec::Ebnf("root ::= item\n".into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("item"), "{e}");
}

#[test]
fn ebnf_and_json_object_walks_match_their_grammar() {
    let g = "root ::= \"(\" num (\",\" num)* \")\"\nnum ::= [1-9] [0-9]{0,2}";
    for seed in 0..10 {
        let (out, done) = random_walk(&ConstraintSpec::Ebnf(g.into()), seed, 200);
        if !done {
            continue;
        }
        let s = String::from_utf8(out).unwrap();
        let inner = s
            .strip_prefix('(')
            .and_then(|x| x.strip_suffix(')'))
            .unwrap();
        for n in inner.split(',') {
            assert!(!n.starts_with('0') && n.len() <= 3, "{s}");
            n.parse::<u32>().unwrap();
        }
    }
    for seed in 0..10 {
        let (out, done) = random_walk(&ConstraintSpec::JsonObject, seed, 300);
        if done {
            let text = String::from_utf8_lossy(&out);
            match serde_json::from_slice::<Value>(&out) {
                Ok(v) => assert!(v.is_object(), "{v}"),
                // Valid JSON that serde cannot hold (a number like 1e999) is still JSON.
                Err(e) => assert!(
                    e.to_string().contains("number out of range") && out[0] == b'{',
                    "{e}: {text}"
                ),
            }
        }
    }
}

#[test]
fn mask_sets_disallowed_logits_to_minus_infinity() {
    let mut logits = vec![1.0f32; 70];
    let mut mask = vec![0u32; mask_words(70)];
    for t in [0usize, 33, 69] {
        mask[t / 32] |= 1 << (t % 32);
    }
    apply_mask(&mut logits, &mask);
    for (t, l) in logits.iter().enumerate() {
        assert_eq!(*l == 1.0, [0, 33, 69].contains(&t), "token {t}");
    }
}

/// Feed `text` byte by byte; the number of bytes the grammar took (all of them when it accepts
/// every one), and whether EOS is allowed after them.
fn feed(spec: &ConstraintSpec, text: &str) -> (usize, bool) {
    let h = grammars().compile(spec).unwrap();
    let mut m = TokenMatcher::open(&h).unwrap();
    let mut mask = vec![0u32; mask_words(VOCAB)];
    for (i, b) in text.bytes().enumerate() {
        m.fill_mask(&mut mask);
        if !allowed(&mask).contains(&(b as TokenId)) {
            return (i, false);
        }
        m.advance(i, b as TokenId).unwrap();
    }
    m.fill_mask(&mut mask);
    (text.len(), allowed(&mask).contains(&EOS))
}

fn tag() -> ConstraintSpec {
    let add = json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
        "maximum": 9}}, "required": ["a"], "additionalProperties": false});
    ConstraintSpec::StructuralTag(StructuralTag {
        structures: vec![
            Structure {
                begin: "<f=add>".into(),
                schema: add,
                end: "</f>".into(),
            },
            Structure {
                begin: "<f=now>".into(),
                schema: json!({"type": "object", "additionalProperties": false}),
                end: "</f>".into(),
            },
        ],
        triggers: vec!["<f=".into()],
    })
}

#[test]
fn a_structural_tag_allows_free_text_and_forces_each_triggered_structure() {
    let ok = "Sure. <f=add>{\"a\":3}</f> and <f=now>{}</f> done <f";
    assert_eq!(feed(&tag(), ok), (ok.len(), true));
    assert_eq!(feed(&tag(), "no calls at all"), (15, true));
    // After the trigger only the structures' begins; inside, only schema-valid JSON.
    let bad = "x <f=zz";
    assert_eq!(feed(&tag(), bad).0, bad.len() - 2);
    let bad = "<f=add>{\"a\":12";
    assert_eq!(feed(&tag(), bad).0, bad.len() - 1);
    let open = "<f=add>{\"a\":1}";
    assert_eq!(
        feed(&tag(), open),
        (open.len(), false),
        "the end tag is due"
    );
    let bad = ConstraintSpec::StructuralTag(StructuralTag {
        structures: vec![Structure {
            begin: "<g>".into(),
            schema: json!({}),
            end: "".into(),
        }],
        triggers: vec!["<f=".into()],
    });
    let e = grammars().compile(&bad).unwrap_err().to_string();
    assert!(e.contains("structures[0].begin"), "{e}");
}
