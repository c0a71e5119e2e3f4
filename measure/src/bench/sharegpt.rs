//! A local ShareGPT JSON file as bench_serving reads it: the first two turns of each conversation
//! (prompt, reply), shuffled with the run's seed, tokenized, too-short and too-long pairs dropped.
//! No download: the file must be given.

use super::BenchError;
use doppel_exec::tokenizer::Tokenizer;
use doppel_sim::trace::ExplicitRequest;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::Path;

/// How pairs are chosen.
#[derive(Clone, Copy, Debug)]
pub struct ShareGptOptions {
    /// Requests wanted.
    pub num_prompts: usize,
    /// Output length of every request (default: the reply's length in tokens).
    pub output_len: Option<usize>,
    /// Pairs whose prompt + output exceed this are dropped.
    pub context_len: Option<usize>,
    /// Shuffle seed.
    pub seed: u64,
}

/// The (prompt, reply) texts of each conversation with at least two turns, in file order.
pub fn read_pairs(path: &Path) -> Result<Vec<(String, String)>, BenchError> {
    let bad =
        |why: String| BenchError::Invalid(format!("--dataset-path {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let list = v
        .as_array()
        .ok_or_else(|| bad("expected a JSON list of conversations".into()))?;
    let mut pairs = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let turns = c
            .get("conversations")
            .or_else(|| c.get("conversation"))
            .and_then(Value::as_array);
        let Some(turns) = turns.filter(|t| t.len() >= 2) else {
            continue;
        };
        let value = |k: usize| {
            turns[k]["value"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("conversation {i}, turn {k} has no text \"value\"")))
        };
        pairs.push((value(0)?, value(1)?));
    }
    Ok(pairs)
}

/// Pick the requests: explicit token prompts (the text is recovered by decoding them) with the
/// reply's length or the fixed output length.
pub fn requests(
    mut pairs: Vec<(String, String)>,
    tok: &Tokenizer,
    o: ShareGptOptions,
) -> Result<Vec<ExplicitRequest>, BenchError> {
    if o.output_len.is_some_and(|n| n < 4) {
        return Err(BenchError::Invalid(
            "--sharegpt-output-len must be at least 4".into(),
        ));
    }
    pairs.shuffle(&mut ChaCha8Rng::seed_from_u64(o.seed));
    let mut out = Vec::with_capacity(o.num_prompts);
    for (prompt, reply) in pairs {
        if out.len() == o.num_prompts {
            break;
        }
        let codec = |e: doppel_exec::tokenizer::TokenizerError| BenchError::Invalid(e.to_string());
        let ids = tok.encode(&prompt, false).map_err(codec)?;
        let output_len = match o.output_len {
            Some(n) => n,
            None => tok.encode(&reply, false).map_err(codec)?.len(),
        };
        if ids.len() < 2 || output_len < 2 {
            continue;
        }
        if o.context_len.is_some_and(|c| ids.len() + output_len > c) {
            continue;
        }
        out.push(ExplicitRequest {
            arrival_ms: 0.0,
            prompt: Some(ids),
            prompt_len: None,
            prefix_group: None,
            prefix_len: None,
            pages: None,
            output_len,
            ignore_eos: true,
        });
    }
    if out.is_empty() {
        return Err(BenchError::Invalid(
            "the ShareGPT file has no conversation of at least two turns of 2+ tokens that fits"
                .into(),
        ));
    }
    Ok(out)
}
