//! Sampling and generation settings read from a request, and the fields refused by name.

use super::error::ApiError;
use super::fields::show;
pub use super::fields::{kind, parse_object, token_list, Fields};
use doppel_core::{SamplingParams, TokenId};
use serde_json::Value;

/// Largest n (choices per prompt) accepted.
pub const MAX_N: usize = 128;
/// Most generations (prompts times n) one HTTP request may start.
pub const MAX_GENERATIONS: usize = 1024;
/// Largest number of top logprobs accepted.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Which API's field names to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// SGLang's /generate `sampling_params`.
    Native,
    /// /v1/completions.
    Completions,
    /// /v1/chat/completions.
    Chat,
}

/// Generation settings of one request, before the prompt is known.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// Core sampling parameters (max_new_tokens resolved later if not given).
    pub sampling: SamplingParams,
    /// The client set the output length.
    pub max_new_given: bool,
    /// Name of the output-length field (for errors).
    pub max_new_field: &'static str,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Keep the matched stop string in the text.
    pub include_stop: bool,
    /// Drop special tokens from the text.
    pub skip_special_tokens: bool,
    /// Choices per prompt.
    pub n: usize,
    /// Structured-output constraint asked for (compiled by [`super::constrain::attach`]).
    pub constraint: Option<super::constrain::Requested>,
    /// Scheduling priority (larger first under `--schedule-policy priority`).
    pub priority: i64,
}

/// Read sampling fields in `f` with `api`'s names; `defaults` come from generation_config.json.
pub fn sampling(
    f: &Fields,
    api: Api,
    defaults: &SamplingParams,
    vocab: usize,
    context_len: usize,
) -> Result<GenParams, ApiError> {
    let mut sp = defaults.clone();
    let (max_new, max_new_field) = match api {
        Api::Native => (f.i64("max_new_tokens")?, "max_new_tokens"),
        Api::Completions => (f.i64("max_tokens")?, "max_tokens"),
        Api::Chat => match f.i64("max_completion_tokens")? {
            Some(m) => (Some(m), "max_completion_tokens"),
            None => (f.i64("max_tokens")?, "max_tokens"),
        },
    };
    let max_new = match (max_new, api) {
        (Some(m), _) => Some(m),
        (None, Api::Native) => Some(128),
        (None, Api::Completions) => Some(16),
        (None, Api::Chat) => None,
    };
    if let Some(m) = max_new {
        if m < 1 || m as u64 > context_len as u64 {
            return Err(f.range(
                max_new_field,
                &format!("an integer in [1, {context_len}] (the context length)"),
                m,
            ));
        }
        sp.max_new_tokens = m as usize;
    }
    if let Some(t) = f.f64("temperature")? {
        if !(t.is_finite() && t >= 0.0) {
            return Err(f.range("temperature", "a finite number >= 0", t));
        }
        sp.temperature = t as f32;
    }
    if let Some(p) = f.f64("top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(f.range("top_p", "in (0, 1]", p));
        }
        sp.top_p = p as f32;
    }
    if let Some(k) = f.i64("top_k")? {
        sp.top_k = match k {
            -1 | 0 => -1,
            k if k >= 1 && k <= vocab as i64 => k as i32,
            k => {
                return Err(f.range(
                    "top_k",
                    &format!("-1 or 0 (off) or an integer in [1, {vocab}]"),
                    k,
                ))
            }
        };
    }
    if let Some(m) = f.f64("min_p")? {
        if !(0.0..=1.0).contains(&m) {
            return Err(f.range("min_p", "in [0, 1]", m));
        }
        sp.min_p = m as f32;
    }
    for (k, slot) in [
        ("frequency_penalty", &mut sp.frequency_penalty),
        ("presence_penalty", &mut sp.presence_penalty),
    ] {
        if let Some(v) = f.f64(k)? {
            if !(-2.0..=2.0).contains(&v) {
                return Err(f.range(k, "in [-2, 2]", v));
            }
            *slot = v as f32;
        }
    }
    if let Some(r) = f.f64("repetition_penalty")? {
        if !(r > 0.0 && r <= 2.0) {
            return Err(f.range("repetition_penalty", "in (0, 2]", r));
        }
        sp.repetition_penalty = r as f32;
    }
    let min_key = if api == Api::Native {
        "min_new_tokens"
    } else {
        "min_tokens"
    };
    if let Some(m) = f.int_in(min_key, 0, context_len as i64)? {
        sp.min_new_tokens = m as usize;
    }
    if let Some(m) = max_new {
        if sp.min_new_tokens as i64 > m {
            return Err(f.range(
                min_key,
                &format!("at most {max_new_field} ({m})"),
                sp.min_new_tokens,
            ));
        }
    }
    if let Some(b) = f.bool("ignore_eos")? {
        sp.ignore_eos = b;
    }
    sp.stop_token_ids = f.token_ids("stop_token_ids", vocab)?;
    let seed_key = if api == Api::Native {
        "sampling_seed"
    } else {
        "seed"
    };
    // OpenAI seeds are signed 64-bit; any integer is a valid seed.
    sp.seed = f.i64(seed_key)?.map(|s| s as u64);
    if let Some(lb) = f.object("logit_bias")? {
        let mut bias = Vec::new();
        for (k, v) in lb {
            let id: usize = k.parse().map_err(|_| {
                f.range(
                    "logit_bias",
                    "an object keyed by token id",
                    format!("key {:?}", super::wire::clip(k)),
                )
            })?;
            if id >= vocab {
                return Err(f.range(
                    "logit_bias",
                    &format!("keyed by token ids in [0, {vocab})"),
                    id,
                ));
            }
            match v.as_f64() {
                Some(b) if (-100.0..=100.0).contains(&b) => bias.push((id as TokenId, b as f32)),
                _ => {
                    return Err(f.range(
                        "logit_bias",
                        "biases in [-100, 100]",
                        format!("{} for token {id}", show(v)),
                    ))
                }
            }
        }
        bias.sort_by_key(|b| b.0);
        sp.logit_bias = bias;
    }
    let n = f.int_in("n", 1, MAX_N as i64)?.unwrap_or(1) as usize;
    if api == Api::Completions {
        if let Some(b) = f.i64("best_of")? {
            if b != n as i64 {
                return Err(f.range(
                    "best_of",
                    "equal to n (best_of sampling is not supported)",
                    b,
                ));
            }
        }
    }
    let constraint = super::constrain::read(f)?;
    let stop = f.strings("stop")?;
    let include_stop = f.bool("no_stop_trim")?.unwrap_or(false);
    let skip_special_tokens = f.bool("skip_special_tokens")?.unwrap_or(true);
    Ok(GenParams {
        sampling: sp,
        max_new_given: max_new.is_some(),
        max_new_field,
        stop,
        include_stop,
        skip_special_tokens,
        n,
        constraint,
        priority: 0,
    })
}

/// Whether a field's value asks for nothing (absent, null, false, empty, or `neutral`).
fn is_neutral(v: &Value, neutral: Option<i64>) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(n) => neutral.is_some_and(|x| n.as_i64() == Some(x)),
        Value::Bool(true) => false,
    }
}

/// A field this server knows but cannot honour, and why.
pub struct Unsupported {
    /// Field name.
    pub field: &'static str,
    /// Why it is refused.
    pub why: &'static str,
    /// A number that means "off" (e.g. -1 for logprob_start_len).
    pub neutral: Option<i64>,
}

const fn unsupported(field: &'static str, why: &'static str) -> Unsupported {
    Unsupported {
        field,
        why,
        neutral: None,
    }
}

/// Fields of SGLang's and OpenAI's request formats that this server cannot honour: refused by
/// name (400) when they ask for something, never silently ignored.
pub const UNSUPPORTED: &[Unsupported] = &[
    unsupported("lora_path", "LoRA adapters are not supported"),
    unsupported("lora_id", "LoRA adapters are not supported"),
    unsupported("image_data", "this server serves text-only models"),
    unsupported("video_data", "this server serves text-only models"),
    unsupported("audio_data", "this server serves text-only models"),
    unsupported("input_embeds", "input embeddings are not supported"),
    unsupported("session_params", "sessions are not supported"),
    unsupported(
        "custom_logit_processor",
        "custom logit processors are not supported",
    ),
    unsupported("return_hidden_states", "hidden states are not returned"),
    unsupported(
        "token_ids_logprob",
        "logprobs of chosen token ids are not supported",
    ),
    unsupported(
        "bootstrap_host",
        "prefill-decode disaggregation is not supported",
    ),
    unsupported(
        "bootstrap_room",
        "prefill-decode disaggregation is not supported",
    ),
    unsupported("data_parallel_rank", "data parallelism is not supported"),
    unsupported(
        "return_prompt_token_ids",
        "prompt token ids are not returned",
    ),
    unsupported(
        "continue_final_message",
        "continuing the final message is not supported",
    ),
    unsupported(
        "reasoning_effort",
        "the chat templates served here take no reasoning effort; use chat_template_kwargs",
    ),
    unsupported(
        "functions",
        "the legacy `functions` field is not supported; use `tools`",
    ),
    unsupported(
        "function_call",
        "the legacy `function_call` field is not supported; use `tool_choice`",
    ),
    unsupported("audio", "audio output is not supported"),
    unsupported("prediction", "predicted outputs are not supported"),
    unsupported("web_search_options", "web search is not supported"),
    unsupported("custom_params", "custom logit processors are not supported"),
];

/// Refuse the first field of [`UNSUPPORTED`] in `f` that asks for something.
pub fn refuse_unsupported(f: &Fields) -> Result<(), ApiError> {
    for u in UNSUPPORTED {
        if let Some(v) = f.get(u.field) {
            if !is_neutral(v, u.neutral) {
                let name = f.name(u.field);
                return Err(ApiError::field(
                    &name,
                    format!("`{name}`: {} (got {})", u.why, show(v)),
                ));
            }
        }
    }
    Ok(())
}

/// The request's `priority`; it takes effect only under the priority policy, so elsewhere it
/// is refused rather than ignored.
pub fn priority(f: &Fields, policy: &str) -> Result<i64, ApiError> {
    match f.i64("priority")? {
        None => Ok(0),
        Some(p) if policy == "priority" => Ok(p),
        Some(p) => Err(ApiError::field(
            &f.name("priority"),
            format!(
                "`priority` {p} needs a server started with --schedule-policy priority (this one runs {policy})"
            ),
        )),
    }
}

impl GenParams {
    /// Refuse a request that would start more than [`MAX_GENERATIONS`] generations.
    pub fn check_total(&self, prompts: usize, prompt_field: &str) -> Result<usize, ApiError> {
        let total = prompts.saturating_mul(self.n);
        if total > MAX_GENERATIONS {
            return Err(ApiError::field(
                prompt_field,
                format!(
                    "{prompts} prompts x n = {} is {total} generations; at most {MAX_GENERATIONS} per request",
                    self.n
                ),
            ));
        }
        Ok(total)
    }

    /// Resolve the output length for a prompt of `prompt_len` tokens, refusing (as SGLang does)
    /// a request whose prompt plus output exceeds the context instead of clipping it.
    pub fn for_prompt(
        &self,
        prompt_len: usize,
        context_len: usize,
        prompt_field: &str,
    ) -> Result<SamplingParams, ApiError> {
        if prompt_len == 0 {
            return Err(ApiError::field(
                prompt_field,
                format!("`{prompt_field}` is empty (it encodes to no tokens)"),
            ));
        }
        if prompt_len >= context_len {
            return Err(ApiError::field(
                prompt_field,
                format!(
                    "`{prompt_field}` has {prompt_len} tokens; the model's context length is {context_len} (room for at least one output token is needed)"
                ),
            ));
        }
        let mut sp = self.sampling.clone();
        if !self.max_new_given {
            sp.max_new_tokens = context_len - prompt_len;
        } else if prompt_len + sp.max_new_tokens > context_len {
            return Err(ApiError::field(
                self.max_new_field,
                format!(
                    "requested {} tokens ({prompt_len} in `{prompt_field}` + {} from `{}`), more than the model's context length of {context_len}",
                    prompt_len + sp.max_new_tokens,
                    sp.max_new_tokens,
                    self.max_new_field
                ),
            ));
        }
        Ok(sp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(api: Api, v: Value) -> Result<GenParams, ApiError> {
        let m = v.as_object().unwrap().clone();
        sampling(
            &Fields::new(&m, "sampling_params"),
            api,
            &SamplingParams::default(),
            1000,
            2048,
        )
    }

    #[test]
    fn defaults_per_api() {
        assert_eq!(
            read(Api::Native, json!({}))
                .unwrap()
                .sampling
                .max_new_tokens,
            128
        );
        assert_eq!(
            read(Api::Completions, json!({}))
                .unwrap()
                .sampling
                .max_new_tokens,
            16
        );
        let chat = read(Api::Chat, json!({})).unwrap();
        assert!(!chat.max_new_given);
        // Chat without a limit gets the rest of the context.
        assert_eq!(
            chat.for_prompt(48, 2048, "messages")
                .unwrap()
                .max_new_tokens,
            2000
        );
        let g = read(
            Api::Chat,
            json!({"max_completion_tokens": 7, "max_tokens": 9}),
        )
        .unwrap();
        assert_eq!(g.sampling.max_new_tokens, 7);
    }

    #[test]
    fn errors_name_the_qualified_field_and_value() {
        let e = read(Api::Native, json!({"temperature": "hot"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("sampling_params.temperature"));
        assert!(e.message.contains("\"hot\""), "{}", e.message);
        let e = read(Api::Native, json!({"top_p": 0})).unwrap_err();
        assert!(
            e.message.contains("top_p") && e.message.contains("got 0"),
            "{}",
            e.message
        );
        let e = read(
            Api::Completions,
            json!({"min_tokens": 20, "max_tokens": 10}),
        )
        .unwrap_err();
        assert!(e.message.contains("min_tokens"), "{}", e.message);
        let e = read(Api::Completions, json!({"stop_token_ids": [1000]})).unwrap_err();
        assert!(e.message.contains("stop_token_ids[0]"), "{}", e.message);
        let e = read(Api::Completions, json!({"logit_bias": {"5": 500}})).unwrap_err();
        assert!(e.message.contains("logit_bias"), "{}", e.message);
        let g = read(Api::Completions, json!({"max_tokens": 100})).unwrap();
        let e = g.for_prompt(1990, 2048, "prompt").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(g.for_prompt(0, 2048, "prompt").is_err());
        assert!(g.for_prompt(2048, 2048, "prompt").is_err());
    }

    #[test]
    fn accepted_values_reach_the_sampling_params() {
        let g = read(
            Api::Completions,
            json!({"temperature": 0, "top_k": 0, "seed": -1, "stop": "x", "n": 3,
                   "logit_bias": {"7": -100, "3": 2.5}, "ignore_eos": true}),
        )
        .unwrap();
        assert!(g.sampling.is_greedy());
        assert_eq!(g.sampling.top_k, -1);
        assert_eq!(g.sampling.seed, Some(u64::MAX));
        assert_eq!(g.stop, vec!["x".to_string()]);
        assert_eq!(g.n, 3);
        assert_eq!(g.sampling.logit_bias, vec![(3, 2.5), (7, -100.0)]);
        assert!(g.sampling.ignore_eos);
        assert!(g.check_total(400, "prompt").is_err());
        assert_eq!(g.check_total(2, "prompt").unwrap(), 6);
    }
}
