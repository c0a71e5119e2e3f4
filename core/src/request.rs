//! What a client submits, and how a request ends.

use crate::ids::{RequestId, TimeNs, TokenId};
use std::any::Any;
use std::sync::Arc;

/// A grammar the output must follow, defined by the executor (JSON schema, regex, grammar); the
/// core only carries it to the backend, which keeps the per-request matching state.
pub trait Constraint: Any + Send + Sync + std::fmt::Debug {
    /// Itself as `Any`, so a backend can downcast to the type it compiles.
    fn as_any(&self) -> &dyn Any;
}

/// A request's constraint, shared by its plan entries (equal only to itself).
#[derive(Clone, Debug)]
pub struct ConstraintHandle(pub Arc<dyn Constraint>);

impl PartialEq for ConstraintHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Sampling parameters carried opaquely to the backend, plus the stop rules the core enforces.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Maximum number of tokens to generate (SGLang default 128).
    pub max_new_tokens: usize,
    /// Stop tokens and EOS are ignored until this many tokens exist.
    pub min_new_tokens: usize,
    /// Do not stop on EOS or stop token ids.
    pub ignore_eos: bool,
    /// Extra token ids that end the request (besides the model's EOS ids).
    pub stop_token_ids: Vec<TokenId>,
    /// Softmax temperature; below 1e-6 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1.0 = off).
    pub top_p: f32,
    /// Keep only the k most likely tokens (-1 or 0 = off).
    pub top_k: i32,
    /// Drop tokens below min_p times the top probability (0 = off).
    pub min_p: f32,
    /// Multiplicative penalty on tokens already present (1.0 = off).
    pub repetition_penalty: f32,
    /// Penalty proportional to a token's count in the output (0 = off).
    pub frequency_penalty: f32,
    /// Penalty for a token's presence in the output (0 = off).
    pub presence_penalty: f32,
    /// Additive logit bias per token id.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Per-request sampling seed; the same request and seed give the same tokens.
    pub seed: Option<u64>,
    /// Return the log-probability of each sampled token.
    pub return_logprob: bool,
    /// Also return this many top alternatives per position.
    pub top_logprobs: usize,
    /// Return the logprobs of the prompt tokens after this position (SGLang's
    /// `logprob_start_len`; the token at the position itself has none). A prefix-cache match
    /// stops at this position, so every row it needs is computed. None: output tokens only.
    pub prompt_logprobs_from: Option<usize>,
    /// Grammar the output must follow (the backend masks tokens; EOS only where it accepts).
    pub constraint: Option<ConstraintHandle>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 128,
            min_new_tokens: 0,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            return_logprob: false,
            top_logprobs: 0,
            prompt_logprobs_from: None,
            constraint: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with the given output length.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams {
            max_new_tokens,
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Whether this request samples greedily.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-6 || self.top_k == 1
    }
}

/// A request as submitted to the scheduler.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    /// Caller-chosen id, unique among live requests.
    pub id: RequestId,
    /// Prompt token ids (non-empty).
    pub prompt: Vec<TokenId>,
    /// Sampling and stopping parameters.
    pub sampling: Arc<SamplingParams>,
    /// Cache namespace (LoRA id, cache salt): requests in different namespaces never share KV.
    pub namespace: Option<u64>,
    /// Scheduling priority for the `priority` policy (larger runs first) and the priority eviction policy.
    pub priority: i64,
    /// Arrival time; FCFS orders by it (then by submission order).
    pub arrival: TimeNs,
}

impl RequestSpec {
    /// A request with default namespace and priority (its sampling parameters owned, or shared
    /// with other requests).
    pub fn new(
        id: RequestId,
        prompt: Vec<TokenId>,
        sampling: impl Into<Arc<SamplingParams>>,
        arrival: TimeNs,
    ) -> Self {
        RequestSpec {
            id,
            prompt,
            sampling: sampling.into(),
            namespace: None,
            priority: 0,
            arrival,
        }
    }
}

/// Why a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Reached max_new_tokens (after clipping to the context length).
    Length,
    /// Sampled an EOS or stop token id (the token is part of the output).
    StopToken(TokenId),
    /// The executor matched a stop string (external finish).
    StopString(String),
    /// Aborted: client disconnect, server shutdown, or out of memory.
    Abort(String),
}

/// Why a submission was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The prompt has no tokens.
    #[error("request {0}: the prompt is empty")]
    EmptyPrompt(RequestId),
    /// max_new_tokens is zero.
    #[error("request {0}: max_new_tokens must be at least 1")]
    ZeroMaxNewTokens(RequestId),
    /// The prompt leaves no room for output within the context length.
    #[error("request {id}: prompt of {prompt_len} tokens does not fit the context length {context_len} (needs room for at least one output token)")]
    PromptTooLong {
        /// The request.
        id: RequestId,
        /// Its prompt length.
        prompt_len: usize,
        /// The model's context length.
        context_len: usize,
    },
    /// Even an empty KV pool could never admit it.
    #[error("request {id}: needs {needed} KV tokens (prompt {prompt_len} + reserved output {reserved}) but the KV pool holds only {capacity}")]
    ExceedsPool {
        /// The request.
        id: RequestId,
        /// Its prompt length.
        prompt_len: usize,
        /// Output tokens the admission rule reserves (min(max_new, 4096)).
        reserved: usize,
        /// Total the admission rule needs.
        needed: usize,
        /// KV pool capacity in tokens.
        capacity: usize,
    },
    /// A live request already has this id.
    #[error("request {0}: id already in use")]
    DuplicateId(RequestId),
}

/// What the scheduler decided at submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// max_new_tokens after clipping to the context length (SGLang clips silently; we report it).
    pub max_new_tokens: usize,
    /// Whether clipping happened.
    pub clipped: bool,
}
