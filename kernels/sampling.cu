// Sampling on the GPU: greedy argmax, and temperature / top-k / top-p / min-p sampling.
//
// One block of 1024 threads per row of f32 logits. The filters follow SGLang's torch reference
// (sort descending; keep rank < top_k; keep tokens whose exclusive cumulative probability is
// <= top_p, computed on the unfiltered probabilities; keep p >= min_p * p_max), expressed as one
// probability threshold: thr = max(k-th largest p, top-p cut value, min_p * p_max). The k-th
// largest value and the top-p cut are found by radix selection (8 bits at a time over the bit
// patterns of the non-negative f32 probabilities, both cuts in the same 4 passes, histogram adds
// aggregated per warp); probability mass is summed in 2^-40 fixed point so the result never
// depends on the order of atomic adds. The draw is an inverse CDF in
// vocabulary order with a host-supplied uniform (from the request's seeded ChaCha stream), using
// a fixed-order block scan: same logits + same uniform => same token.
#include <cuda_bf16.h>

#define NT 1024
#define MASS_SCALE 1099511627776.0  // 2^40

// ArgMax and better() (ties to the lower index) are in prelude.cuh.

__device__ ArgMax block_argmax(ArgMax a) {
    __shared__ float sv[32];
    __shared__ int si[32];
    a = warp_argmax(a);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) {
        sv[warp] = a.v;
        si[warp] = a.i;
    }
    __syncthreads();
    if (warp == 0) {
        a.v = lane < (int)(blockDim.x >> 5) ? sv[lane] : -INFINITY;
        a.i = lane < (int)(blockDim.x >> 5) ? si[lane] : 0x7fffffff;
        a = warp_argmax(a);
        if (lane == 0) {
            sv[0] = a.v;
            si[0] = a.i;
        }
    }
    __syncthreads();
    a.v = sv[0];
    a.i = si[0];
    return a;
}

__device__ float block_sum_f(float v) {
    __shared__ float part[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) part[0] = v;
    }
    __syncthreads();
    return part[0];
}

__device__ ArgMax row_argmax(const float* x, int vocab) {
    ArgMax a = {-INFINITY, 0x7fffffff};
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = x[i];
        if (v != v) v = -INFINITY;
        a = better(a, ArgMax{v, i});
    }
    a = block_argmax(a);
    if (a.i == 0x7fffffff) a.i = 0;  // all -inf/NaN: token 0, like torch
    return a;
}

// out[r] = argmax(logits[r, :]), many blocks per row: block c of row r reduces columns
// [c*span, (c+1)*span) and writes (value, index) to scratch; the row's last block to finish
// (counted with an atomic, after a fence) reduces the partials, writes out[r] and re-arms the
// counter, so one launch does it and a CUDA graph can replay it. n is the scratch's row
// capacity (fixed for a buffer, so no launch's partials overlap another's counters); rows done =
// gridDim.y <= n. scratch: [n] counters (zero before the first launch) then [rows, gridDim.x]
// (value bits, index) pairs. With last_token non-null the finishing block also does
// store_last_token's work: last_token[rows[r]] = out[r] (one launch fewer per step).
// Grid (chunks, rows), block 256.
extern "C" __global__ void __launch_bounds__(256) argmax_rows_split(unsigned int* __restrict__ out,
                                                                   const float* __restrict__ logits,
                                                                   unsigned int* __restrict__ scratch,
                                                                   int n, int vocab,
                                                                   unsigned int* __restrict__ last_token,
                                                                   const unsigned int* __restrict__ rows) {
    pdl_enter();
    const int r = blockIdx.y, c = blockIdx.x, chunks = gridDim.x;
    if (r >= n) return;
    // Spans of a multiple of 4 columns: with vocab % 4 == 0 every span starts 16-byte aligned and
    // is read as float4s (a chunk past the end is empty and still counts in below).
    const int span = ((vocab + chunks - 1) / chunks + 3) & ~3;
    const int lo = min(vocab, c * span), hi = min(vocab, lo + span);
    const float* x = logits + (size_t)r * vocab;
    ArgMax a = {-INFINITY, 0x7fffffff};
    auto fold = [&](float v, int idx) { a = better(a, ArgMax{v != v ? -INFINITY : v, idx}); };
    if ((vocab & 3) == 0 && (reinterpret_cast<size_t>(logits) & 15) == 0) {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        const int hi4 = hi >> 2;
        int j = (lo >> 2) + threadIdx.x;
        // Two 16-byte loads in flight per thread before their first use.
        for (; j + 256 < hi4; j += 2 * 256) {
            const float4 p = x4[j], q = x4[j + 256];
            fold(p.x, 4 * j), fold(p.y, 4 * j + 1), fold(p.z, 4 * j + 2), fold(p.w, 4 * j + 3);
            const int k = 4 * (j + 256);
            fold(q.x, k), fold(q.y, k + 1), fold(q.z, k + 2), fold(q.w, k + 3);
        }
        if (j < hi4) {
            const float4 p = x4[j];
            fold(p.x, 4 * j), fold(p.y, 4 * j + 1), fold(p.z, 4 * j + 2), fold(p.w, 4 * j + 3);
        }
    } else {
        // Four loads in flight per thread before their first use.
        int i = lo + threadIdx.x;
        for (; i + 3 * 256 < hi; i += 4 * 256) {
            float v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) v[u] = x[i + u * 256];
#pragma unroll
            for (int u = 0; u < 4; u++) fold(v[u], i + u * 256);
        }
        for (; i < hi; i += 256) fold(x[i], i);
    }
    a = block_argmax(a);
    unsigned int* counter = scratch + r;
    unsigned int* part = scratch + n + (size_t)r * chunks * 2;
    __shared__ bool last;
    if (threadIdx.x == 0) {
        part[2 * c] = __float_as_uint(a.v);
        part[2 * c + 1] = (unsigned int)a.i;
        __threadfence();
        last = atomicAdd(counter, 1u) == (unsigned int)(chunks - 1);
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    ArgMax b = {-INFINITY, 0x7fffffff};
    for (int j = threadIdx.x; j < chunks; j += blockDim.x) {
        // Volatile: the other blocks' partials, not a cached copy.
        float v = __uint_as_float(((volatile unsigned int*)part)[2 * j]);
        int idx = (int)((volatile unsigned int*)part)[2 * j + 1];
        b = better(b, ArgMax{v, idx});
    }
    b = block_argmax(b);
    if (threadIdx.x == 0) {
        const unsigned int tok = b.i == 0x7fffffff ? 0 : b.i;  // all -inf/NaN: token 0, like row_argmax
        out[r] = tok;
        if (last_token != nullptr) last_token[rows[r]] = tok;
        *counter = 0u;
    }
}

__device__ __forceinline__ float prob(float logit, float m, float inv_t, float inv_z) {
    if (logit != logit) return 0.f;
    return expf((logit - m) * inv_t) * inv_z;
}

// Adds a token's count and fixed-point mass to bin `bin` of (cnt, w), aggregated over the lanes of
// the warp that pass `take` with the same bin: one pair of shared-memory atomics per distinct bin
// per warp instead of one per token (the low-probability bins hold most of the vocabulary, and
// 32 lanes adding to one address serialise: the first version spent ~6.8 ms per 64 rows there).
// The sums are of integers, so the result does not depend on the order of the adds. Every lane
// of the warp must call it.
__device__ __forceinline__ void hist_add(bool take, unsigned int bin, unsigned long long wt,
                                         unsigned int* cnt, unsigned long long* w, bool with_mass) {
    const unsigned int act = __ballot_sync(0xffffffffu, take);
    if (!take) return;
    const unsigned int peers = __match_any_sync(act, bin);
    // The mass in two parts that cannot overflow a 32-bit sum over 32 lanes (wt < 2^41).
    unsigned int lo = 0, hi = 0;
    if (with_mass) {
        lo = __reduce_add_sync(peers, (unsigned int)(wt & 0xfffffull));
        hi = __reduce_add_sync(peers, (unsigned int)(wt >> 20));
    }
    if ((threadIdx.x & 31) == (unsigned int)(__ffs(peers) - 1)) {
        atomicAdd(&cnt[bin], (unsigned int)__popc(peers));
        if (with_mass) atomicAdd(&w[bin], ((unsigned long long)hi << 20) + lo);
    }
}

// Thread 0: the bin (scanning from the top) where the weight of the tokens above it first exceeds
// `target`, given the weight `above` of the tokens above every bin of this level; returns the
// new prefix and updates `above` to the weight above the chosen bin.
__device__ __forceinline__ unsigned int pick_bin(const unsigned int* cnt, const unsigned long long* w,
                                                 bool by_mass, unsigned long long target,
                                                 unsigned long long& above) {
    unsigned long long cum = above, above_sel = above;
    int sel = -1;
    for (int b = 255; b >= 0; b--) {
        if (cum > target) break;
        if (cnt[b] > 0) {
            sel = b;
            above_sel = cum;
        }
        cum += by_mass ? w[b] : (unsigned long long)cnt[b];
    }
    if (sel < 0) sel = 0;  // unreachable for valid targets: the top bin always qualifies
    above = above_sel;
    return (unsigned int)sel;
}

// Radix selection over the bit patterns of the probabilities, for the top-k cut (the k-th
// largest value: weight 1 per token, target k - 1) and the top-p cut (weight = the token's
// probability in 2^-40 fixed point, target top_p): for each, the smallest value v such that the
// weight of tokens with p > v is <= target. 8 bits per level, 4 levels; the two selections share
// the passes over the row (the first level's histogram serves both). Returns (k cut, p cut) as
// bit patterns; an inactive selection returns 0.
__device__ uint2 radix_select2(const float* x, int vocab, float m, float inv_t, float inv_z,
                               bool do_k, unsigned long long k_target, bool do_p,
                               unsigned long long p_target) {
    __shared__ unsigned long long w[2][256];
    __shared__ unsigned int cnt[2][256];
    __shared__ unsigned int s_prefix[2];
    __shared__ unsigned long long s_above[2];
    if (threadIdx.x < 2) {
        s_prefix[threadIdx.x] = 0;
        s_above[threadIdx.x] = 0;
    }
    for (int level = 0; level < 4; level++) {
        const int shift = 24 - 8 * level;
        for (int i = threadIdx.x; i < 2 * 256; i += blockDim.x) {
            w[i >> 8][i & 255] = 0;
            cnt[i >> 8][i & 255] = 0;
        }
        __syncthreads();
        const unsigned int pk = s_prefix[0], pp = s_prefix[1];
        // Level 0: one histogram (set 1, with mass) serves both selections.
        const bool shared0 = level == 0;
        const int vend = (vocab + 31) & ~31;  // whole warps run every iteration
        for (int i = threadIdx.x; i < vend; i += blockDim.x) {
            const bool in = i < vocab;
            const float p = in ? prob(x[i], m, inv_t, inv_z) : 0.f;
            const unsigned int key = __float_as_uint(p);
            const unsigned int bin = (key >> shift) & 255u;
            const unsigned long long wt = (unsigned long long)((double)p * MASS_SCALE);
            const bool take_k = in && do_k && !shared0 && (key >> (shift + 8)) == pk;
            const bool take_p = in && (shared0 ? (do_k || do_p) : do_p && (key >> (shift + 8)) == pp);
            if (!shared0) hist_add(take_k, bin, 0ull, cnt[0], w[0], false);
            hist_add(take_p, bin, wt, cnt[1], w[1], true);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            const int hk = shared0 ? 1 : 0;
            if (do_k) s_prefix[0] = (pk << 8) | pick_bin(cnt[hk], w[hk], false, k_target, s_above[0]);
            if (do_p) s_prefix[1] = (pp << 8) | pick_bin(cnt[1], w[1], true, p_target, s_above[1]);
        }
        __syncthreads();
    }
    const uint2 result = make_uint2(do_k ? s_prefix[0] : 0u, do_p ? s_prefix[1] : 0u);
    __syncthreads();  // a following call resets s_prefix
    return result;
}

// Per row r: temperature[r] (<= 0 means greedy), top_k[r] (<= 0 or >= vocab: off),
// top_p[r] (>= 1: off), min_p[r] (<= 0: off), uniform[r] in [0, 1).
// Grid (n), block 1024.
extern "C" __global__ void __launch_bounds__(NT) sample_rows(
    unsigned int* __restrict__ out, const float* __restrict__ logits,
    const float* __restrict__ temperature, const int* __restrict__ top_k,
    const float* __restrict__ top_p, const float* __restrict__ min_p,
    const float* __restrict__ uniform, int n, int vocab) {
    pdl_enter();
    int r = blockIdx.x;
    if (r >= n) return;
    const float* x = logits + (size_t)r * vocab;
    ArgMax best = row_argmax(x, vocab);
    float t = temperature[r];
    if (!(t > 0.f)) {
        if (threadIdx.x == 0) out[r] = best.i;
        return;
    }
    float m = best.v, inv_t = 1.f / t;
    float zs = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) zs += prob(x[i], m, inv_t, 1.f);
    float inv_z = 1.f / block_sum_f(zs);

    float thr = 0.f;
    float mp = min_p[r];
    if (mp > 0.f) thr = fmaxf(thr, mp * inv_z);  // p_max = exp(0) / Z
    const int k = top_k[r];
    const float tp = top_p[r];
    const bool do_k = k > 0 && k < vocab, do_p = tp < 1.f;
    if (do_k || do_p) {
        const uint2 cut = radix_select2(x, vocab, m, inv_t, inv_z, do_k, do_k ? (unsigned long long)(k - 1) : 0ull,
                                        do_p, do_p ? (unsigned long long)((double)tp * MASS_SCALE) : 0ull);
        if (do_k) thr = fmaxf(thr, __uint_as_float(cut.x));
        if (do_p) thr = fmaxf(thr, __uint_as_float(cut.y));
    }
    // The most likely token always survives every filter; clamp against rounding.
    thr = fminf(thr, prob(m, m, inv_t, inv_z));

    // Inverse CDF in vocabulary order: thread j owns the contiguous range [j*C, (j+1)*C).
    __shared__ float scan[NT];
    __shared__ int s_pick;
    int C = (vocab + blockDim.x - 1) / blockDim.x;
    int lo = threadIdx.x * C, hi = min(vocab, lo + C);
    float mine = 0.f;
    for (int i = lo; i < hi; i++) {
        float p = prob(x[i], m, inv_t, inv_z);
        if (p >= thr && p > 0.f) mine += p;
    }
    scan[threadIdx.x] = mine;
    __shared__ float s_total;
    __syncthreads();
    if (threadIdx.x == 0) {  // sequential exclusive scan: a fixed order, so deterministic
        float c = 0.f;
        for (int j = 0; j < (int)blockDim.x; j++) {
            float v = scan[j];
            scan[j] = c;
            c += v;
        }
        s_total = c;
        s_pick = best.i;  // fallback if rounding puts the target at the very end
    }
    __syncthreads();
    float total = s_total;
    float target = uniform[r] * total;
    float start = scan[threadIdx.x];
    if (mine > 0.f && target >= start && target < start + mine) {
        float c = start;
        int pick = -1, last = -1;
        for (int i = lo; i < hi; i++) {
            float p = prob(x[i], m, inv_t, inv_z);
            if (p >= thr && p > 0.f) {  // p == 0: masked out (-inf) or underflowed
                last = i;
                c += p;
                if (c > target) {
                    pick = i;
                    break;
                }
            }
        }
        if (pick < 0) pick = last;  // rounding at the chunk's end
        s_pick = pick;  // exactly one thread's range holds the target
    }
    __syncthreads();
    if (threadIdx.x == 0) out[r] = s_pick;
}

// Structured outputs: logits of tokens a row's grammar disallows become -inf before the pick.
// Row r follows mask row mask_row[r] (`words` u32s; bit v % 32 of word v / 32 allows token v),
// or is left alone when mask_row[r] < 0 (an unconstrained request in the same batch).
// Grid (ceil(vocab / 256), n), block 256: one token per thread.
extern "C" __global__ void __launch_bounds__(256) apply_token_bitmask(
    float* __restrict__ logits, const unsigned int* __restrict__ mask,
    const int* __restrict__ mask_row, int n, int vocab, int words) {
    pdl_enter();
    const int r = blockIdx.y;
    const int v = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n || v >= vocab) return;
    const int m = mask_row[r];
    if (m < 0) return;
    const unsigned int w = mask[(size_t)m * words + (v >> 5)];
    if (!((w >> (v & 31)) & 1u)) logits[(size_t)r * vocab + v] = -INFINITY;
}

// Prompt logprobs: for each of n f32 logits rows, the log-softmax read at targets[r] and the k
// most likely tokens with theirs (ties to the lower id, NaN as -inf: the CPU sampler's order).
// The top-k are k argmax passes, pass j over the tokens ranked after pick j-1 (value lower, or
// equal with a higher id), so no candidate set is kept; the row stays in L2 between passes. Only
// 1 + 2k numbers per row leave the GPU. k <= vocab (the host clamps it). Grid n, block 256.
extern "C" __global__ void __launch_bounds__(256) token_logprobs_rows(
    const float* __restrict__ logits, const unsigned int* __restrict__ targets,
    float* __restrict__ out_lp, float* __restrict__ top_lp, unsigned int* __restrict__ top_id,
    int n, int vocab, int k) {
    pdl_enter();
    const int r = blockIdx.x;
    if (r >= n) return;
    const float* x = logits + (size_t)r * vocab;
    ArgMax prev = row_argmax(x, vocab);
    const float m = prev.v;
    float s = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = x[i];
        s += (v == v) ? expf(v - m) : 0.f;
    }
    s = block_sum_f(s);
    const float lse = m + logf(s);
    if (threadIdx.x == 0) {
        float t = x[targets[r]];
        out_lp[r] = (t == t ? t : -INFINITY) - lse;
        if (k > 0) {
            top_lp[(size_t)r * k] = m - lse;
            top_id[(size_t)r * k] = (unsigned)prev.i;
        }
    }
    for (int j = 1; j < k; j++) {
        ArgMax a = {-INFINITY, 0x7fffffff};
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            float v = x[i];
            if (v != v) v = -INFINITY;
            if (v < prev.v || (v == prev.v && i > prev.i)) a = better(a, ArgMax{v, i});
        }
        a = block_argmax(a);
        if (threadIdx.x == 0) {
            top_lp[(size_t)r * k + j] = a.v - lse;
            top_id[(size_t)r * k + j] = (unsigned)a.i;
        }
        prev = a;
    }
}
