//! Hardware/model/engine profiles (sim/profiles/*.yaml): what the cost model needs to price a step.

mod validate;

use crate::error::SimError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The transformer's shape.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// Model name (Hugging Face id).
    pub name: String,
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// MLP intermediate size (gated MLP: three matrices).
    pub intermediate: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Bytes per weight and KV element (2 for bf16).
    pub dtype_bytes: usize,
    /// Input embedding shared with the LM head (counted once in memory).
    pub tied_embeddings: bool,
    /// Maximum context length.
    pub context_len: usize,
}

impl ModelShape {
    /// Parameters of one decoder layer (attention projections + gated MLP; norms ignored).
    pub fn layer_params(&self) -> f64 {
        let h = self.hidden as f64;
        let q = (self.heads * self.head_dim) as f64;
        let kv = (self.kv_heads * self.head_dim) as f64;
        let attn = h * q + 2.0 * h * kv + q * h;
        let mlp = 3.0 * h * self.intermediate as f64;
        attn + mlp
    }

    /// Parameters of the LM head.
    pub fn lm_head_params(&self) -> f64 {
        (self.hidden * self.vocab) as f64
    }

    /// Bytes of weights held in GPU memory on one of `tp` ranks.
    pub fn weight_bytes(&self, tp: usize) -> f64 {
        let embed = self.lm_head_params() * if self.tied_embeddings { 1.0 } else { 2.0 };
        (self.layers as f64 * self.layer_params() + embed) * self.dtype_bytes as f64 / tp as f64
    }

    /// Bytes of weights a forward pass reads on one rank (decoder layers + LM head).
    pub fn weight_read_bytes(&self, tp: usize) -> f64 {
        (self.layers as f64 * self.layer_params() + self.lm_head_params()) * self.dtype_bytes as f64
            / tp as f64
    }

    /// KV bytes per token on one rank: kv_heads (split over TP, at least one) x head_dim x layers x 2 x dtype.
    pub fn kv_bytes_per_token(&self, tp: usize) -> usize {
        let kv_heads = (self.kv_heads / tp).max(1);
        kv_heads * self.head_dim * self.layers * 2 * self.dtype_bytes
    }
}

/// Interconnect between TP ranks.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// NVLink/NVSwitch.
    Nvlink,
    /// PCIe within one NUMA node.
    Pcie,
    /// PCIe across NUMA nodes (through the CPU interconnect).
    CrossNuma,
}

/// Link figures for TP all-reduce.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Interconnect {
    /// Topology.
    pub topology: Topology,
    /// Per-GPU bus bandwidth in bytes/s.
    pub bandwidth: f64,
    /// Latency of one all-reduce (ns), independent of size.
    pub latency_ns: f64,
}

/// The GPU.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// GPU name.
    pub name: String,
    /// Memory in MiB as the driver reports it.
    pub memory_mib: f64,
    /// Memory the runtime keeps outside weights and KV (CUDA context, activations), in MiB.
    pub runtime_reserved_mib: f64,
    /// Dense bf16 tensor-core FLOP/s.
    pub bf16_flops: f64,
    /// HBM bandwidth in bytes/s.
    pub hbm_bandwidth: f64,
    /// One kernel launched eagerly (ns).
    pub kernel_launch_ns: f64,
    /// One kernel inside a replayed CUDA graph (ns).
    pub graph_kernel_ns: f64,
    /// TP interconnect.
    pub interconnect: Interconnect,
}

/// Host-side costs of the serving engine.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineOverheads {
    /// Scheduler CPU time per step (ns).
    pub schedule_ns_per_step: f64,
    /// Scheduler CPU time per request in a step (ns).
    pub schedule_ns_per_req: f64,
    /// HTTP handling per request, before tokenization (ns).
    pub http_ns: f64,
    /// Tokenization: fixed part (ns).
    pub tokenize_ns: f64,
    /// Tokenization per prompt token (ns).
    pub tokenize_ns_per_token: f64,
    /// Detokenize + stream one chunk to the client (ns).
    pub stream_ns: f64,
    /// Engine-thread time to take in one arrived request (ns): the scheduler's submit (and, in
    /// process, building the prompt). A burst of arrivals delays the next step by their sum.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub submit_ns: f64,
    /// The same, per prompt token (ns).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub submit_ns_per_token: f64,
    /// Largest batch captured in a CUDA graph (decode steps above it run eagerly).
    pub cuda_graph_max_bs: usize,
}

/// Fitted efficiency terms: fractions of the hardware's peak that kernels reach.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Efficiency {
    /// GEMM efficiency against token count: (tokens, fraction of peak FLOP/s), increasing tokens;
    /// interpolated linearly in log(tokens), clamped at the ends.
    pub gemm: Vec<(f64, f64)>,
    /// Fraction of HBM bandwidth reached reading weights.
    pub weight_bandwidth: f64,
    /// Fraction of HBM bandwidth reached reading KV in decode attention.
    pub kv_bandwidth: f64,
    /// Fraction of peak FLOP/s reached by prefill attention.
    pub attention_compute: f64,
    /// Fixed GPU time of a decode step replayed from a CUDA graph (ns): launch, sampling, sync.
    pub decode_step_ns: f64,
    /// Fixed GPU time of an eager prefill/extend step (ns).
    pub prefill_step_ns: f64,
    /// Extra time per request in a prefill step (ns): attention planning, sampling.
    pub prefill_per_req_ns: f64,
    /// Kernels per layer (for eager launch costs and graph replay).
    pub kernels_per_layer: f64,
    /// Prefill attention's serial time per layer and per key of the longest sequence (ns), times
    /// its query rows up to `attention_seq_rows` where that is set: the tail of the longest
    /// sequence's blocks, which dominates when the batch does not fill the GPU (a short extend
    /// over a long cached prefix). 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attention_seq_ns: f64,
    /// Query rows of the longest sequence that `attention_seq_ns` scales with, at most (more rows
    /// get more blocks, which run in parallel). 0: the term is per key only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attention_seq_rows: f64,
    /// Prefill attention's floor per layer and per (query row, key) pair of the longest extend
    /// entry (ns), the pairs' rate falling as 1 / rows past `attention_grid_rows`: the extend
    /// kernel gives one sequence a block per (64 query rows, KV head), each walking every key
    /// of its context, and on the H100 a short extend's blocks did not run side by side (64 and
    /// 128 rows over a cached prefix cost the same per pair, ~12x a large prefill's), while a
    /// long one's do (a lone 512-2048-token prompt costs ~54 ns per token of it per layer). The
    /// step's attention takes the larger of this and the FLOP term: it decides a lone prompt, a
    /// chunk or a short extend over a long cached prefix. 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attention_grid_ns: f64,
    /// Query rows of the longest extend entry past which `attention_grid_ns`'s rate falls as 1
    /// / rows (0: it does not fall).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attention_grid_rows: f64,
    /// Share of the decode table's per-KV-token time saved on a KV token that another request
    /// of the same decode batch also reads (a shared cached prefix, read again from L2), from 0
    /// (none) to 1. 0 where not measured.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub decode_shared_kv_saving: f64,
    /// What a CUDA graph's padding row costs at the decode table's per-KV-token rate, as a share
    /// of a request as long as the step's longest (the graph's split-KV grid is fixed by its
    /// row count, so a padded batch runs closer to its full row than its KV read says; fitted
    /// from even batches with fewer requests than their row). 0: free (not measured).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub decode_padding_share: f64,
    /// Slowdown of a wholly compute-bound step at full heat (`crate::heat`; a step's slowdown
    /// scales with its compute-bound share): a GPU held at its power cap by back-to-back
    /// compute-bound steps (large prefills) lowers its clock, and such steps after run this much
    /// longer (0.05: 5 %). Fitted from the profile's runs of back-to-back steps;
    /// 0: off (measurements without run timing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sustained_slowdown: f64,
    /// Time constant of the heat (ns): it approaches a step's compute-bound share while the
    /// step runs and falls toward 0 while the GPU idles or runs memory-bound steps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sustained_tau_ns: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// A complete profile.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Name used in traces and on the command line (hardware/model/engine).
    pub name: String,
    /// Whether the figures were fitted to measurements (false: roofline estimates only).
    pub calibrated: bool,
    /// Where the figures come from.
    pub source: String,
    /// Model shape.
    pub model: ModelShape,
    /// GPU.
    pub hardware: Hardware,
    /// Host-side overheads.
    pub engine: EngineOverheads,
    /// Fitted efficiency terms.
    pub efficiency: Efficiency,
    /// Host-side launch costs measured on the real engine (absent: a launch takes no host time
    /// and the GPU starts a step as soon as the scheduler has formed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchCosts>,
    /// Measured decode device times, `(batch, fixed ns, ns per KV token read, ns per token of
    /// raggedness)` by increasing batch; a decode step costs the smallest listed batch at or
    /// above its own (CUDA graphs pad to their captured sizes), beyond the last one the last two
    /// rows are extrapolated. Raggedness is the row's batch x longest sequence - KV tokens read:
    /// the padding rows of a graph count as sequences of length 0, so the term is per token of
    /// the longest sequence at a fixed graph size. Empty: decode steps use the roofline terms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_table: Vec<(f64, f64, f64, f64)>,
    /// Measured points of `decode_table`'s rows, `(batch, [(KV tokens read, ns)])` by
    /// increasing batch and KV: where a row has two or more, its even-batch time is interpolated
    /// linearly between them (the end segments extended) instead of taken from its line (the
    /// measured cost is not linear in the KV read: a line through 128/512/2048 keys was 1-3 %
    /// high at 512 keys for graphs 3-32). Empty: every row is its line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_kv_points: Vec<(f64, Vec<(f64, f64)>)>,
    /// `Efficiency::decode_shared_kv_saving` per decode-table row, `(batch, saving)` by
    /// increasing batch, fitted from each row's shared-prefix decode steps; a row without them
    /// takes the nearest listed row's (the smaller on a tie). On the H100 one saving for all
    /// rows missed the measured shared-prefix batches by -9 % (graph 16) to +8 % (graph 128):
    /// a small batch's attention waits on its blocks more than on HBM, so a re-read from L2
    /// saves less. Empty: every row takes `decode_shared_kv_saving`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_shared_savings: Vec<(f64, f64)>,
}

/// How a step's launch occupies the host and how the GPU follows it (ns).
///
/// A replayed CUDA graph is launched in a few calls; an eager step launches every kernel
/// from the host, and for small batches the host is slower than the GPU, which then trails
/// the launches. The GPU starts a step `lead_ns` after its launch begins (or when the previous
/// step ends), and ends no sooner than `tail_ns` after the launch returns.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LaunchCosts {
    /// Launch of a decode step replayed from a CUDA graph: fixed part.
    pub graph_ns: f64,
    /// Same, per request (table and input uploads).
    pub graph_per_req_ns: f64,
    /// Launch of an eager step (prefill, mixed, decode above the graph sizes): fixed part.
    pub eager_ns: f64,
    /// Same, per request.
    pub eager_per_req_ns: f64,
    /// Same, per token computed.
    pub eager_per_token_ns: f64,
    /// From the start of a launch until the GPU starts on an idle device.
    pub lead_ns: f64,
    /// GPU time left after the launch call returns, when the GPU trails the host.
    pub tail_ns: f64,
}

/// Profiles shipped with doppel, embedded at build time: (file name, text).
const BUILTIN: [(&str, &str); 9] = [
    (
        "a100-80g_qwen3-0.6b_sglang.yaml",
        include_str!("../../profiles/a100-80g_qwen3-0.6b_sglang.yaml"),
    ),
    (
        "h100-80g_qwen3-0.6b_sglang.yaml",
        include_str!("../../profiles/h100-80g_qwen3-0.6b_sglang.yaml"),
    ),
    // The base the H100 Qwen3-0.6B fits start from (roofline only).
    (
        "h100-80g_qwen3-0.6b_roofline.yaml",
        include_str!("../../profiles/h100-80g_qwen3-0.6b_roofline.yaml"),
    ),
    (
        "h200_qwen3-0.6b_sglang.yaml",
        include_str!("../../profiles/h200_qwen3-0.6b_sglang.yaml"),
    ),
    (
        "h100-80g_llama-3-8b_sglang.yaml",
        include_str!("../../profiles/h100-80g_llama-3-8b_sglang.yaml"),
    ),
    (
        "h200_llama-3-8b_sglang.yaml",
        include_str!("../../profiles/h200_llama-3-8b_sglang.yaml"),
    ),
    (
        "h100-80g_llama-2-7b_sglang.yaml",
        include_str!("../../profiles/h100-80g_llama-2-7b_sglang.yaml"),
    ),
    // Fitted by `doppel sim calibrate` to our own engine on an H100 (docs/fidelity.md).
    (
        "h100-80g_qwen3-0.6b_doppel.yaml",
        include_str!("../../profiles/h100-80g_qwen3-0.6b_doppel.yaml"),
    ),
    // Fitted to vLLM's one-batch table and serving runs on an H100 (docs/fidelity.md).
    (
        "h100-80g_qwen3-0.6b_vllm.yaml",
        include_str!("../../profiles/h100-80g_qwen3-0.6b_vllm.yaml"),
    ),
];

impl Profile {
    /// Names of the built-in profiles, in a fixed order.
    pub fn builtin_names() -> Vec<String> {
        BUILTIN
            .iter()
            .filter_map(|(file, text)| Profile::parse(text, file).ok().map(|p| p.name))
            .collect()
    }

    /// Parse a profile from YAML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, SimError> {
        let p: Profile = serde_yaml::from_str(text).map_err(|e| SimError::yaml(origin, &e))?;
        p.validate(origin)?;
        Ok(p)
    }

    /// A built-in profile by name, or a profile file if `name` ends in .yaml/.yml.
    pub fn load(name: &str) -> Result<Profile, SimError> {
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            let text = std::fs::read_to_string(Path::new(name)).map_err(|e| SimError::Io {
                path: name.to_string(),
                source: e,
            })?;
            return Profile::parse(&text, name);
        }
        for (file, text) in BUILTIN {
            let p = Profile::parse(text, file)?;
            if p.name == name {
                return Ok(p);
            }
        }
        Err(SimError::UnknownProfile {
            name: name.to_string(),
            known: Profile::builtin_names(),
        })
    }

    /// SGLang's default mem_fraction_static for this GPU (sglang-semantics.md section 2).
    pub fn default_mem_fraction(&self, chunked_prefill_size: Option<usize>, tp: usize) -> f64 {
        let chunk = chunked_prefill_size.unwrap_or(0).max(2048) as f64;
        let mut reserved = 512.0
            + chunk * 1.5
            + self.engine.cuda_graph_max_bs as f64 * 2.0
            + tp as f64 / 8.0 * 1024.0;
        if self.hardware.memory_mib > 60.0 * 1024.0 {
            reserved = reserved.max(10240.0);
        }
        ((self.hardware.memory_mib - reserved) / self.hardware.memory_mib).clamp(0.0, 1.0)
    }

    /// KV capacity in tokens at a memory fraction: (free after weights - total x (1 - fraction)) / bytes per token.
    pub fn kv_capacity_from_fraction(&self, fraction: f64, tp: usize) -> usize {
        let mib = 1024.0 * 1024.0;
        let total = self.hardware.memory_mib * mib;
        let free_after_weights =
            total - self.hardware.runtime_reserved_mib * mib - self.model.weight_bytes(tp);
        let kv_bytes = free_after_weights - total * (1.0 - fraction);
        if kv_bytes <= 0.0 {
            return 0;
        }
        (kv_bytes / self.model.kv_bytes_per_token(tp) as f64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses_and_names_are_unique() {
        let names = Profile::builtin_names();
        assert_eq!(names.len(), BUILTIN.len());
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert!(names.contains(&"a100-80g/qwen3-0.6b/sglang".to_string()));
    }

    #[test]
    fn qwen3_kv_bytes_and_a100_pool_match_sglang() {
        let p = Profile::load("a100-80g/qwen3-0.6b/sglang").unwrap();
        assert_eq!(p.model.kv_bytes_per_token(1), 114_688);
        // The server log: 615,409 tokens at mem fraction 0.85.
        let cap = p.kv_capacity_from_fraction(0.85, 1);
        let err = (cap as f64 - 615_409.0).abs() / 615_409.0;
        assert!(err < 0.01, "capacity {cap}");
        // About 596M parameters with tied embeddings.
        let params = p.model.weight_bytes(1) / 2.0;
        assert!((params - 596e6).abs() / 596e6 < 0.01, "params {params}");
    }

    #[test]
    fn h100_default_fraction_is_sglangs() {
        let p = Profile::load("h100-80g/qwen3-0.6b/sglang").unwrap();
        let f = p.default_mem_fraction(Some(8192), 1);
        assert!((f - 0.835).abs() < 0.005, "{f}");
    }

    #[test]
    fn unknown_profile_lists_known_ones() {
        let e = Profile::load("tpu/whatever").unwrap_err().to_string();
        assert!(
            e.contains("tpu/whatever") && e.contains("a100-80g/qwen3-0.6b/sglang"),
            "{e}"
        );
    }

    #[test]
    fn bad_profile_names_the_field() {
        let text = include_str!("../../profiles/a100-80g_qwen3-0.6b_sglang.yaml")
            .replace("layers: 28", "layers: 0");
        let e = Profile::parse(&text, "x.yaml").unwrap_err().to_string();
        assert!(e.contains("model.layers") && e.contains("x.yaml"), "{e}");
    }

    #[test]
    fn decode_kv_points_must_increase() {
        let base = include_str!("../../profiles/h100-80g_qwen3-0.6b_doppel.yaml");
        let mut p = Profile::parse(base, "x.yaml").unwrap();
        assert!(!p.decode_kv_points.is_empty());
        p.decode_kv_points[0].1.reverse();
        let text = serde_yaml::to_string(&p).unwrap();
        let e = Profile::parse(&text, "x.yaml").unwrap_err().to_string();
        assert!(e.contains("decode_kv_points[0]"), "{e}");
        // Without points (a profile fitted before them) it parses, every row its line.
        p.decode_kv_points.clear();
        let text = serde_yaml::to_string(&p).unwrap();
        assert!(!text.contains("decode_kv_points"));
        assert!(Profile::parse(&text, "x.yaml").is_ok());
    }
}
