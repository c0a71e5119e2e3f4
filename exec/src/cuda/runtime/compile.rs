//! Run-time compilation of `kernels/*.cu` with NVRTC, cached on disk.
//!
//! The cache key is (source hash, options hash, target architecture, NVRTC version), so editing a
//! kernel, changing the GPU or upgrading CUDA each produce a fresh compile while an unchanged
//! start-up skips NVRTC entirely.

use crate::cuda::{CudaError, Result};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use std::path::{Path, PathBuf};

/// One kernel source file, embedded in the binary.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// File name under `kernels/`.
    pub file: &'static str,
    /// Its text.
    pub src: &'static str,
    /// Entry points (extern "C" __global__ functions) it defines.
    pub entries: &'static [&'static str],
}

macro_rules! kernel_source {
    ($file:literal, [$($e:literal),* $(,)?]) => {
        KernelSource {
            file: $file,
            src: include_str!(concat!("../../../../kernels/", $file)),
            entries: &[$($e),*],
        }
    };
}

/// Every kernel source with its entry points.
pub const KERNEL_SOURCES: &[KernelSource] = &[
    kernel_source!(
        "embedding.cu",
        ["embedding_gather", "gather_rows", "store_last_token"]
    ),
    kernel_source!(
        "norm.cu",
        ["rmsnorm", "fused_add_rmsnorm", "qk_rmsnorm", "scale_cols"]
    ),
    kernel_source!(
        "rope.cu",
        [
            "rope_neox",
            "qk_norm_rope_store_d64",
            "qk_norm_rope_store_d128"
        ]
    ),
    kernel_source!("kv_cache.cu", ["kv_store", "table_scatter"]),
    kernel_source!(
        "attention_extend_gqa.cu",
        ["attention_extend_gqa_d64", "attention_extend_gqa_d128",]
    ),
    kernel_source!(
        "attention_decode.cu",
        [
            "attention_decode_combine_d64",
            "attention_decode_combine_d128",
            "attention_decode_v3_d64_g4",
            "attention_decode_v3_d64_g8",
            "attention_decode_v3_d128_g4",
            "attention_decode_v3_d128_g8",
            "attention_decode_v3p_d64_g1",
            "attention_decode_v3p_d64_g2",
            "attention_decode_v3p_d64_g4",
            "attention_decode_v3p_d128_g1",
            "attention_decode_v3p_d128_g2",
            "attention_decode_v3p_d128_g4",
        ]
    ),
    kernel_source!(
        "attention_decode_mma.cu",
        [
            "attention_decode_mma_d64_g1",
            "attention_decode_mma_d64_g2",
            "attention_decode_mma_d64_g4",
            "attention_decode_mma_d64_g8",
            "attention_decode_mma_d128_g1",
            "attention_decode_mma_d128_g2",
            "attention_decode_mma_d128_g4",
            "attention_decode_mma_d128_g8",
        ]
    ),
    kernel_source!(
        "attention_decode_rmma.cu",
        ["attention_decode_rmma_d64", "attention_decode_rmma_d128"]
    ),
    kernel_source!("activation.cu", ["silu_and_mul"]),
    kernel_source!("bias.cu", ["add_bias_rows"]),
    kernel_source!("timing.cu", ["spin_ns"]),
    kernel_source!(
        "sampling.cu",
        [
            "argmax_rows_split",
            "sample_rows",
            "apply_token_bitmask",
            "token_logprobs_rows"
        ]
    ),
    kernel_source!(
        "gemv.cu",
        [
            "gemv_bf16",
            "gemv_f32out",
            "gemv_resadd",
            "gemv_norm",
            "gemv_gate_up_silu",
            "gemv_gate_up_silu_norm",
            "gemv_norm_qkv_d64",
            "gemv_norm_qkv_d128"
        ]
    ),
    kernel_source!(
        "gemm_tile.cu",
        [
            "gemm_tile_resadd_n4_s4",
            "gemm_tile_resadd_n4_s6",
            "gemm_tile_resadd_n8_s4",
            "gemm_tile_resadd_n8_s6",
            "gemm_tile_norm_n4_s4",
            "gemm_tile_norm_n4_s6",
            "gemm_tile_norm_n8_s4",
            "gemm_tile_norm_n8_s6",
            "gemm_tile_silu_n4_s4",
            "gemm_tile_silu_n4_s6",
            "gemm_tile_silu_n6_s4",
            "gemm_tile_silu_n6_s6",
            "gemm_tile_silu_n8_s4",
            "gemm_tile_silu_n8_s6"
        ]
    ),
    kernel_source!(
        "gemm_skinny.cu",
        [
            "gemm_skinny_plain_m1_w1",
            "gemm_skinny_resadd_m1_w1",
            "gemm_skinny_silu_m1_w1",
            "gemm_skinny_plain_m1_w2",
            "gemm_skinny_resadd_m1_w2",
            "gemm_skinny_silu_m1_w2",
            "gemm_skinny_plain_m1_w4",
            "gemm_skinny_resadd_m1_w4",
            "gemm_skinny_silu_m1_w4",
            "gemm_skinny_plain_m2_w1",
            "gemm_skinny_resadd_m2_w1",
            "gemm_skinny_silu_m2_w1",
            "gemm_skinny_plain_m2_w2",
            "gemm_skinny_resadd_m2_w2",
            "gemm_skinny_silu_m2_w2",
            "gemm_skinny_plain_m2_w4",
            "gemm_skinny_resadd_m2_w4",
            "gemm_skinny_silu_m2_w4",
            "gemm_skinny_plain_m3_w1",
            "gemm_skinny_resadd_m3_w1",
            "gemm_skinny_silu_m3_w1",
            "gemm_skinny_plain_m3_w2",
            "gemm_skinny_resadd_m3_w2",
            "gemm_skinny_silu_m3_w2",
            "gemm_skinny_plain_m3_w4",
            "gemm_skinny_resadd_m3_w4",
            "gemm_skinny_silu_m3_w4",
            "gemm_skinny_plain_m4_w1",
            "gemm_skinny_resadd_m4_w1",
            "gemm_skinny_silu_m4_w1",
            "gemm_skinny_plain_m4_w2",
            "gemm_skinny_resadd_m4_w2",
            "gemm_skinny_silu_m4_w2",
            "gemm_skinny_plain_m4_w4",
            "gemm_skinny_resadd_m4_w4",
            "gemm_skinny_silu_m4_w4"
        ]
    ),
];

/// Options every kernel is compiled with (besides the architecture and include path).
const OPTIONS: &[&str] = &["--std=c++17", "--fmad=true", "-default-device"];

/// The NVRTC library's version, or why it could not be loaded.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc(
            "libnvrtc.so not found on the library path".into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::NoNvrtc(format!("nvrtcVersion returned {r:?}")));
    }
    Ok((major, minor))
}

/// Candidate CUDA include directories, most specific first.
fn include_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("DOPPEL_CUDA_INCLUDE") {
        v.push(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            v.push(PathBuf::from(p).join("include"));
        }
    }
    v.push(PathBuf::from("/usr/local/cuda/include"));
    v.push(PathBuf::from(
        "/usr/local/cuda/targets/x86_64-linux/include",
    ));
    v
}

/// The directory holding `cuda_bf16.h`.
pub fn find_include_dir() -> Result<PathBuf> {
    let cands = include_candidates();
    for c in &cands {
        if c.join("cuda_bf16.h").is_file() {
            return Ok(c.clone());
        }
    }
    let list: Vec<String> = cands.iter().map(|p| p.display().to_string()).collect();
    Err(CudaError::NoHeaders(list.join(", ")))
}

/// FNV-1a, 64 bit: a stable content hash for cache keys (std's hasher is not stable across
/// releases, and a cryptographic hash is unnecessary for a local cache).
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Device helpers put before every source (programmatic dependent launch, L2 prefetch).
pub const PRELUDE: &str = include_str!("../../../../kernels/prelude.cuh");

/// Compile one source to PTX for `compute_<cc>` (e.g. cc = 90), with `include` on the path;
/// [`PRELUDE`] goes first, and a `#line` keeps error positions those of the file itself.
pub fn compile_ptx(file: &str, src: &str, cc: u32, include: &Path) -> Result<String> {
    let arch = format!("compute_{cc}");
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    let opts = CompileOptions {
        include_paths: vec![include.display().to_string()],
        options,
        name: Some(file.to_string()),
        ..Default::default()
    };
    let full = format!("{PRELUDE}\n#line 1 \"{file}\"\n{src}");
    match cudarc::nvrtc::compile_ptx_with_opts(full, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err(CudaError::Compile {
            file: file.to_string(),
            arch,
            log: log.to_string_lossy().into_owned(),
        }),
        Err(e) => Err(CudaError::Compile {
            file: file.to_string(),
            arch,
            log: e.to_string(),
        }),
    }
}

/// Where compiled kernels are cached: $DOPPEL_KERNEL_CACHE, else $XDG_CACHE_HOME/doppel/kernels,
/// else ~/.cache/doppel/kernels, else a directory under the system temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("DOPPEL_KERNEL_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("doppel").join("kernels");
    }
    if let Some(p) = std::env::var_os("HOME") {
        return PathBuf::from(p)
            .join(".cache")
            .join("doppel")
            .join("kernels");
    }
    std::env::temp_dir().join("doppel-kernels")
}

/// The cache file name for a source compiled for `cc` with NVRTC `ver`.
pub fn cache_key(k: &KernelSource, cc: u32, ver: (i32, i32)) -> String {
    let opts = OPTIONS.join(" ");
    let h = fnv1a64(&[PRELUDE.as_bytes(), k.src.as_bytes(), opts.as_bytes()]);
    let stem = k.file.trim_end_matches(".cu");
    format!("{stem}-sm{cc}-nvrtc{}.{}-{h:016x}.ptx", ver.0, ver.1)
}

/// PTX for `k`: from the cache when present, else compiled and stored (written to a temporary file
/// then renamed, so a concurrent reader never sees half a file). Returns the PTX and whether it
/// came from the cache.
pub fn cached_ptx(k: &KernelSource, cc: u32, dir: &Path) -> Result<(Ptx, bool)> {
    let ver = nvrtc_version()?;
    let path = dir.join(cache_key(k, cc, ver));
    if let Ok(text) = std::fs::read_to_string(&path) {
        if text.contains(".entry") {
            return Ok((Ptx::from_src(text), true));
        }
    }
    let include = find_include_dir()?;
    let ptx = compile_ptx(k.file, k.src, cc, &include)?;
    let io = |err, p: &Path| CudaError::Cache {
        path: p.display().to_string(),
        err,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        cache_key(k, cc, ver),
        std::process::id()
    ));
    std::fs::write(&tmp, &ptx).map_err(|e| io(e, &tmp))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(e, &path))?;
    Ok((Ptx::from_src(ptx), false))
}

/// [`cached_ptx`] for every source of `sources`, in that order: the cache misses compile on up
/// to one thread per core (NVRTC compiles separate programs concurrently), so a cold start takes
/// about as long as its slowest source (gemm_skinny.cu) instead of the sum of all. The first
/// error in source order is returned.
pub fn cached_ptx_all(sources: &[KernelSource], cc: u32, dir: &Path) -> Result<Vec<(Ptx, bool)>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(sources.len())
        .max(1);
    let next = AtomicUsize::new(0);
    // Each thread takes the next source index and keeps its (index, result) pairs.
    let mut done: Vec<(usize, Result<(Ptx, bool)>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(k) = sources.get(i) else { break mine };
                        mine.push((i, cached_ptx(k, cc, dir)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a compile thread panicked"))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_is_listed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cu"))
            .collect();
        files.sort();
        let mut listed: Vec<String> = KERNEL_SOURCES.iter().map(|k| k.file.to_string()).collect();
        listed.sort();
        assert_eq!(files, listed, "kernels/*.cu and KERNEL_SOURCES differ");
    }

    #[test]
    fn cache_key_changes_with_source_arch_and_version() {
        let a = KernelSource {
            file: "x.cu",
            src: "a",
            entries: &[],
        };
        let b = KernelSource {
            file: "x.cu",
            src: "b",
            entries: &[],
        };
        assert_ne!(cache_key(&a, 90, (13, 0)), cache_key(&b, 90, (13, 0)));
        assert_ne!(cache_key(&a, 90, (13, 0)), cache_key(&a, 80, (13, 0)));
        assert_ne!(cache_key(&a, 90, (13, 0)), cache_key(&a, 90, (13, 1)));
        assert_eq!(cache_key(&a, 90, (13, 0)), cache_key(&a, 90, (13, 0)));
    }
}
