// Sampling on the GPU: greedy argmax, and temperature / top-k / top-p / min-p sampling.
//
// One block of 1024 threads per row of f32 logits. The filters follow SGLang's torch reference
// (sort descending; keep rank < top_k; keep tokens whose exclusive cumulative probability is
// <= top_p, computed on the unfiltered probabilities; keep p >= min_p * p_max), expressed as one
// probability threshold: thr = max(k-th largest p, top-p cut value, min_p * p_max). The k-th
// largest value and the top-p cut are found by 4-pass radix selection (8 bits at a time over the
// bit patterns of the non-negative f32 probabilities); probability mass is summed in 2^-40 fixed
// point so the result never depends on the order of atomic adds. The draw is an inverse CDF in
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
    const int span = (vocab + chunks - 1) / chunks;
    const int lo = c * span, hi = min(vocab, lo + span);
    const float* x = logits + (size_t)r * vocab;
    ArgMax a = {-INFINITY, 0x7fffffff};
    // Four loads in flight per thread before their first use.
    int i = lo + threadIdx.x;
    for (; i + 3 * 256 < hi; i += 4 * 256) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = x[i + u * 256];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            float w = v[u] != v[u] ? -INFINITY : v[u];
            a = better(a, ArgMax{w, i + u * 256});
        }
    }
    for (; i < hi; i += 256) {
        float w = x[i];
        if (w != w) w = -INFINITY;
        a = better(a, ArgMax{w, i});
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

// out[r] = argmax(logits[r, :]). Grid (n), block 1024.
extern "C" __global__ void __launch_bounds__(NT) argmax_rows(unsigned int* __restrict__ out,
                                                             const float* __restrict__ logits,
                                                             int n, int vocab) {
    pdl_enter();
    int r = blockIdx.x;
    if (r >= n) return;
    ArgMax a = row_argmax(logits + (size_t)r * vocab, vocab);
    if (threadIdx.x == 0) out[r] = a.i;
}

__device__ __forceinline__ float prob(float logit, float m, float inv_t, float inv_z) {
    if (logit != logit) return 0.f;
    return expf((logit - m) * inv_t) * inv_z;
}

// Radix selection: the smallest probability value v (as a bit pattern) such that the weight of
// tokens with p > v is <= target, where a token's weight is 1 (by_mass false: the k-th largest
// value for target k-1) or its probability in fixed point (by_mass true: the top-p cut).
__device__ unsigned int radix_select(const float* x, int vocab, float m, float inv_t, float inv_z,
                                     bool by_mass, unsigned long long target) {
    __shared__ unsigned long long w[256];
    __shared__ unsigned int cnt[256];
    __shared__ unsigned int s_prefix;
    __shared__ unsigned long long s_above;
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_above = 0;
    }
    for (int level = 0; level < 4; level++) {
        int shift = 24 - 8 * level;
        for (int i = threadIdx.x; i < 256; i += blockDim.x) {
            w[i] = 0;
            cnt[i] = 0;
        }
        __syncthreads();
        unsigned int prefix = s_prefix;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            float p = prob(x[i], m, inv_t, inv_z);
            unsigned int key = __float_as_uint(p);
            if (level > 0 && (key >> (shift + 8)) != prefix) continue;
            unsigned int bin = (key >> shift) & 255u;
            atomicAdd(&cnt[bin], 1u);
            unsigned long long wt = by_mass ? (unsigned long long)((double)p * MASS_SCALE) : 1ull;
            atomicAdd(&w[bin], wt);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long cum = s_above, above_sel = s_above;
            int sel = -1;
            for (int b = 255; b >= 0; b--) {
                if (cum > target) break;
                if (cnt[b] > 0) {
                    sel = b;
                    above_sel = cum;
                }
                cum += w[b];
            }
            if (sel < 0) sel = 0;  // unreachable for valid targets: the top bin always qualifies
            s_prefix = (prefix << 8) | (unsigned int)sel;
            s_above = above_sel;
        }
        __syncthreads();
    }
    unsigned int result = s_prefix;
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
    int k = top_k[r];
    if (k > 0 && k < vocab)
        thr = fmaxf(thr, __uint_as_float(radix_select(x, vocab, m, inv_t, inv_z, false,
                                                      (unsigned long long)(k - 1))));
    float tp = top_p[r];
    if (tp < 1.f)
        thr = fmaxf(thr, __uint_as_float(radix_select(x, vocab, m, inv_t, inv_z, true,
                                                      (unsigned long long)((double)tp * MASS_SCALE))));
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
        if (p >= thr) mine += p;
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
            if (p >= thr) {
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
