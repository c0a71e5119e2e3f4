// Small-batch bf16 GEMV: y[b, n] = sum_k x[b, k] * W[n, k] for b < B <= 8 (decode at batch 1-8),
// and variants with the RMSNorm before the projection or the residual add after it folded in.
//
// Memory-bound: W (N x K, row-major, as stored in the checkpoint) is read exactly once with
// 16-byte loads, 4 in flight per lane before their first use; x (a few KB) stays in L1/L2.
// One warp per output row n, 8 warps per block; f32 accumulation, then a warp reduction per b.
#include <cuda_bf16.h>

#define MAXB 8
#define WARPS 8

__device__ __forceinline__ void dot8(float& acc, const uint4& w, const uint4& x) {
    const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&w);
    const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float2 a = __bfloat1622float2(w2[j]);
        float2 b = __bfloat1622float2(x2[j]);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
}

// x rows come from global memory (read-only cache) or, normalised, from shared memory.
template <bool SX>
__device__ __forceinline__ uint4 ldx(const uint4* p) {
    if constexpr (SX) {
        return *p;
    } else {
        return __ldg(p);
    }
}

// Programmatic dependent launch: every entry point first asks for the first pf bytes of its
// warp's weight row(s) in L2 (weights depend on nothing), then waits for the previous kernel
// (pdl_enter, prelude.cuh), so they arrive during that kernel's tail. pf (a multiple of 16, at
// most the row's bytes; 0: none) is the whole row for a weight that fits in half the L2 and 0
// for a larger one, which is bandwidth-bound throughout (the host's row_prefetch_bytes).
__device__ __forceinline__ void prefetch_row(const __nv_bfloat16* w, int n, int N, int K, int pf) {
    if ((threadIdx.x & 31) == 0 && n < N && pf > 0) prefetch_l2(w + (size_t)n * K, (unsigned int)pf);
}

__device__ __forceinline__ void enter_after_rows(const __nv_bfloat16* w, int n, int N, int K, int pf) {
    prefetch_row(w, n, N, K, pf);
    pdl_enter();
}

__device__ __forceinline__ int warp_row() { return blockIdx.x * WARPS + (threadIdx.x >> 5); }

// The RMSNorm of each of the B rows of r (width K), times nw, into shared memory as bf16: the
// same arithmetic as norm.cu's rmsnorm, done by every block so no separate norm kernel (and its
// launch) is needed between a residual update and the next projection.
__device__ void norm_rows_to_smem(__nv_bfloat16* xs, const __nv_bfloat16* __restrict__ r,
                                  const __nv_bfloat16* __restrict__ nw, int B, int K, float eps) {
    const int n8 = K / 8;
    const uint4* wr = reinterpret_cast<const uint4*>(nw);
    for (int b = 0; b < B; b++) {
        const uint4* rr = reinterpret_cast<const uint4*>(r + (size_t)b * K);
        float ss = 0.f;
        for (int i = threadIdx.x; i < n8; i += blockDim.x) {
            float f[8];
            unpack8(rr[i], f);
#pragma unroll
            for (int j = 0; j < 8; j++) ss += f[j] * f[j];
        }
        const float inv = rsqrtf(block_sum(ss) / K + eps);
        uint4* o = reinterpret_cast<uint4*>(xs + (size_t)b * K);
        for (int i = threadIdx.x; i < n8; i += blockDim.x) {
            float f[8], g[8];
            unpack8(rr[i], f);
            unpack8(wr[i], g);
#pragma unroll
            for (int j = 0; j < 8; j++) f[j] = f[j] * inv * g[j];
            o[i] = pack8(f);
        }
    }
    __syncthreads();
}

// y[b, n] = bf16(x_b . w[n]), or with RES: y[b, n] = bf16(bf16(x_b . w[n]) + y[b, n]) (the
// residual add of fused_add_rmsnorm, same roundings, folded into the projection's epilogue).
__device__ __forceinline__ void store_out(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }

template <bool SX, bool RES, typename TO = __nv_bfloat16>
__device__ void gemv_body(TO* __restrict__ y, const __nv_bfloat16* x,
                          const __nv_bfloat16* __restrict__ w, int B, int N, int K, int ldy) {
    int n = blockIdx.x * WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= N) return;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)n * K);
    const int kc = K / 8;
    float acc[MAXB];
#pragma unroll
    for (int b = 0; b < MAXB; b++) acc[b] = 0.f;
    int c = lane;
    // Long rows (o: K = 2048, down: 3072) first take 8 loads per lane in flight, so the row
    // needs fewer dependent round trips to memory (the GEMV is latency-bound at B = 1).
    for (; c + 224 < kc; c += 256) {
        uint4 wv[8];
#pragma unroll
        for (int u = 0; u < 8; u++) wv[u] = __ldg(wr + c + 32 * u);
#pragma unroll
        for (int b = 0; b < MAXB; b++) {
            if (b < B) {
                const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)b * K);
#pragma unroll
                for (int u = 0; u < 8; u++) dot8(acc[b], wv[u], ldx<SX>(xr + c + 32 * u));
            }
        }
    }
    for (; c + 96 < kc; c += 128) {
        uint4 wv[4];
#pragma unroll
        for (int u = 0; u < 4; u++) wv[u] = __ldg(wr + c + 32 * u);
#pragma unroll
        for (int b = 0; b < MAXB; b++) {
            if (b < B) {
                const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)b * K);
#pragma unroll
                for (int u = 0; u < 4; u++) dot8(acc[b], wv[u], ldx<SX>(xr + c + 32 * u));
            }
        }
    }
    for (; c < kc; c += 32) {
        uint4 wv = __ldg(wr + c);
#pragma unroll
        for (int b = 0; b < MAXB; b++) {
            if (b < B) dot8(acc[b], wv, ldx<SX>(reinterpret_cast<const uint4*>(x + (size_t)b * K) + c));
        }
    }
#pragma unroll
    for (int b = 0; b < MAXB; b++) {
        if (b < B) {
            float v = acc[b];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) {
                TO* p = y + (size_t)b * ldy + n;
                if constexpr (RES) {
                    *p = __float2bfloat16(__bfloat162float(__float2bfloat16(v)) + __bfloat162float(*p));
                } else {
                    store_out(p, v);
                }
            }
        }
    }
}

// x: [B, K] bf16, W: [N, K] bf16, y: [B, N] bf16 (ldy: row stride of y). K % 8 == 0.
// Grid (ceil(N / 8)), block 256.
extern "C" __global__ void __launch_bounds__(256) gemv_bf16(__nv_bfloat16* __restrict__ y,
                                                            const __nv_bfloat16* __restrict__ x,
                                                            const __nv_bfloat16* __restrict__ w,
                                                            int B, int N, int K, int ldy, int pf) {
    enter_after_rows(w, warp_row(), N, K, pf);
    gemv_body<false, false>(y, x, w, B, N, K, ldy);
}

// y[b, n] = x_b . w[n] in f32: the LM head at small batch (logits stay f32 for sampling).
// Grid (ceil(N / 8)), block 256.
extern "C" __global__ void __launch_bounds__(256) gemv_f32out(float* __restrict__ y,
                                                              const __nv_bfloat16* __restrict__ x,
                                                              const __nv_bfloat16* __restrict__ w,
                                                              int B, int N, int K, int ldy, int pf) {
    enter_after_rows(w, warp_row(), N, K, pf);
    gemv_body<false, false, float>(y, x, w, B, N, K, ldy);
}

// r[b, n] = bf16(bf16(x_b . w[n]) + r[b, n]): a projection whose output goes straight into the
// residual stream (o_proj, down_proj at small batch). Grid (ceil(N / 8)), block 256.
extern "C" __global__ void __launch_bounds__(256) gemv_resadd(__nv_bfloat16* __restrict__ r,
                                                              const __nv_bfloat16* __restrict__ x,
                                                              const __nv_bfloat16* __restrict__ w,
                                                              int B, int N, int K, int ldr, int pf) {
    enter_after_rows(w, warp_row(), N, K, pf);
    gemv_body<false, true>(r, x, w, B, N, K, ldr);
}

// y[b, n] = bf16(rmsnorm(r_b) * nw) . w[n]: the projection after a norm (qkv) with the norm
// folded in. Dynamic shared memory B * K * 2 bytes. Grid (ceil(N / 8)), block 256.
extern "C" __global__ void __launch_bounds__(256) gemv_norm(__nv_bfloat16* __restrict__ y,
                                                            const __nv_bfloat16* __restrict__ r,
                                                            const __nv_bfloat16* __restrict__ nw,
                                                            const __nv_bfloat16* __restrict__ w,
                                                            int B, int N, int K, int ldy, float eps,
                                                            int pf) {
    enter_after_rows(w, warp_row(), N, K, pf);
    extern __shared__ uint4 xs_raw[];
    __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(xs_raw);
    norm_rows_to_smem(xs, r, nw, B, K, eps);
    gemv_body<true, false>(y, xs, w, B, N, K, ldy);
}

// The MLP's gate/up projection with SiLU-and-mul fused in: w is [gate; up] as [2I, K];
// y[b, n] = bf16(silu(bf16(x_b . w[n]))) * bf16(x_b . w[I + n]) for n < I (the same roundings
// as gemv_bf16 followed by silu_and_mul). One warp per n: it reads both rows. Grid (ceil(I/8)),
// block 256.
template <bool SX>
__device__ void gate_up_body(__nv_bfloat16* __restrict__ y, const __nv_bfloat16* x,
                             const __nv_bfloat16* __restrict__ w, int B, int I, int K) {
    int n = blockIdx.x * WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= I) return;
    const uint4* wg = reinterpret_cast<const uint4*>(w + (size_t)n * K);
    const uint4* wu = reinterpret_cast<const uint4*>(w + (size_t)(I + n) * K);
    const int kc = K / 8;
    float ag[MAXB], au[MAXB];
#pragma unroll
    for (int b = 0; b < MAXB; b++) ag[b] = au[b] = 0.f;
    int c = lane;
    for (; c + 32 < kc; c += 64) {
        uint4 g0 = __ldg(wg + c), g1 = __ldg(wg + c + 32), u0 = __ldg(wu + c), u1 = __ldg(wu + c + 32);
#pragma unroll
        for (int b = 0; b < MAXB; b++) {
            if (b < B) {
                const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)b * K);
                uint4 x0 = ldx<SX>(xr + c), x1 = ldx<SX>(xr + c + 32);
                dot8(ag[b], g0, x0);
                dot8(ag[b], g1, x1);
                dot8(au[b], u0, x0);
                dot8(au[b], u1, x1);
            }
        }
    }
    for (; c < kc; c += 32) {
        uint4 g0 = __ldg(wg + c), u0 = __ldg(wu + c);
#pragma unroll
        for (int b = 0; b < MAXB; b++) {
            if (b < B) {
                uint4 x0 = ldx<SX>(reinterpret_cast<const uint4*>(x + (size_t)b * K) + c);
                dot8(ag[b], g0, x0);
                dot8(au[b], u0, x0);
            }
        }
    }
#pragma unroll
    for (int b = 0; b < MAXB; b++) {
        if (b < B) {
            float g = ag[b], u = au[b];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                g += __shfl_xor_sync(0xffffffffu, g, o);
                u += __shfl_xor_sync(0xffffffffu, u, o);
            }
            if (lane == 0) {
                g = __bfloat162float(__float2bfloat16(g));
                u = __bfloat162float(__float2bfloat16(u));
                float sg = __bfloat162float(__float2bfloat16(g / (1.f + __expf(-g))));
                y[(size_t)b * I + n] = __float2bfloat16(sg * u);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) gemv_gate_up_silu(__nv_bfloat16* __restrict__ y,
                                                                    const __nv_bfloat16* __restrict__ x,
                                                                    const __nv_bfloat16* __restrict__ w,
                                                                    int B, int I, int K, int pf) {
    prefetch_row(w, warp_row(), I, K, pf);                   // gate row
    enter_after_rows(w + (size_t)I * K, warp_row(), I, K, pf);  // up row
    gate_up_body<false>(y, x, w, B, I, K);
}

// gemv_gate_up_silu of bf16(rmsnorm(r_b) * nw): the post-attention norm folded in. Dynamic
// shared memory B * K * 2 bytes. Grid (ceil(I / 8)), block 256.
extern "C" __global__ void __launch_bounds__(256) gemv_gate_up_silu_norm(
    __nv_bfloat16* __restrict__ y, const __nv_bfloat16* __restrict__ r,
    const __nv_bfloat16* __restrict__ nw, const __nv_bfloat16* __restrict__ w, int B, int I, int K,
    float eps, int pf) {
    prefetch_row(w, warp_row(), I, K, pf);                   // gate row
    enter_after_rows(w + (size_t)I * K, warp_row(), I, K, pf);  // up row
    extern __shared__ uint4 xs_raw[];
    __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(xs_raw);
    norm_rows_to_smem(xs, r, nw, B, K, eps);
    gate_up_body<true>(y, xs, w, B, I, K);
}

// The per-head work of rope.cu's qk_norm_rope_store for one (token t, head h), by one warp: q
// heads [RMSNorm] + RoPE in place, k heads [RMSNorm] + RoPE into k_cache[slots[t]], v heads
// copied to v_cache[slots[t]]. The same arithmetic and roundings as qk_norm_rope_store_impl; the
// head is read through L2 (__ldcg) because other blocks wrote it during this launch.
template <int D>
__device__ void qkv_post_head(__nv_bfloat16* __restrict__ qkv, const __nv_bfloat16* __restrict__ wq,
                              const __nv_bfloat16* __restrict__ wk, const int* __restrict__ positions,
                              const float* __restrict__ cos_sin, __nv_bfloat16* __restrict__ k_cache,
                              __nv_bfloat16* __restrict__ v_cache, const unsigned int* __restrict__ slots,
                              int t, int h, int nq, int nk, int row_stride, float eps) {
    constexpr int HALF = D / 2, EPH = D / 64;
    const int lane = threadIdx.x & 31;
    __nv_bfloat16* p = qkv + (size_t)t * row_stride + (size_t)h * D;
    const int i0 = lane * EPH;
    float a[EPH], b[EPH];
#pragma unroll
    for (int j = 0; j < EPH; j++) {
        a[j] = __bfloat162float(__ldcg(p + i0 + j));
        b[j] = __bfloat162float(__ldcg(p + HALF + i0 + j));
    }
    if (h >= nq + nk) {  // v head: copy
        __nv_bfloat16* dst = v_cache + (size_t)slots[t] * nk * D + (size_t)(h - nq - nk) * D;
#pragma unroll
        for (int j = 0; j < EPH; j++) {
            dst[i0 + j] = __float2bfloat16(a[j]);
            dst[HALF + i0 + j] = __float2bfloat16(b[j]);
        }
        return;
    }
    const float* cs = cos_sin + (size_t)positions[t] * D;
    head_norm_rope<D>(a, b, h < nq ? wq : wk, cs, i0, eps);
    __nv_bfloat16* dst = h < nq ? p : k_cache + (size_t)slots[t] * nk * D + (size_t)(h - nq) * D;
#pragma unroll
    for (int j = 0; j < EPH; j++) {
        dst[i0 + j] = __float2bfloat16(a[j]);
        dst[HALF + i0 + j] = __float2bfloat16(b[j]);
    }
}

// gemv_norm for the fused qkv projection with qk_norm_rope_store folded in: the D/8 blocks of a
// head each write their 8 rows, and the last of them to finish (counter per head, re-armed)
// post-processes that head for every token. qkv [B, (nq + 2 nk) * D]; wq/wk may be null.
// Dynamic shared memory B * K * 2 bytes. Grid ((nq + 2 nk) * D / 8), block 256.
template <int D>
__device__ void gemv_norm_qkv_impl(__nv_bfloat16* __restrict__ qkv, const __nv_bfloat16* __restrict__ r,
                                   const __nv_bfloat16* __restrict__ nw, const __nv_bfloat16* __restrict__ w,
                                   int B, int K, float eps, const __nv_bfloat16* __restrict__ wq,
                                   const __nv_bfloat16* __restrict__ wk, const int* __restrict__ positions,
                                   const float* __restrict__ cos_sin, __nv_bfloat16* __restrict__ k_cache,
                                   __nv_bfloat16* __restrict__ v_cache, const unsigned int* __restrict__ slots,
                                   int nq, int nk, unsigned int* __restrict__ counters, int pf) {
    extern __shared__ uint4 xs_raw[];
    __shared__ bool last;
    __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(xs_raw);
    const int N = (nq + 2 * nk) * D;
    enter_after_rows(w, warp_row(), N, K, pf);
    norm_rows_to_smem(xs, r, nw, B, K, eps);
    gemv_body<true, false>(qkv, xs, w, B, N, K, N);  // N % 8 == 0: no warp leaves early
    __threadfence();
    __syncthreads();
    const int head = blockIdx.x * WARPS / D;
    if (threadIdx.x == 0) last = atomicAdd(counters + head, 1u) == (unsigned int)(D / WARPS - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int warp = threadIdx.x >> 5;
    if (warp < B) qkv_post_head<D>(qkv, wq, wk, positions, cos_sin, k_cache, v_cache, slots, warp, head, nq, nk, N, eps);
    if (threadIdx.x == 0) counters[head] = 0u;
}

#define GEMV_NORM_QKV(D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256) gemv_norm_qkv_d##D(                                  \
        __nv_bfloat16* qkv, const __nv_bfloat16* r, const __nv_bfloat16* nw, const __nv_bfloat16* w,      \
        int B, int K, float eps, const __nv_bfloat16* wq, const __nv_bfloat16* wk, const int* positions,   \
        const float* cos_sin, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, const unsigned int* slots,  \
        int nq, int nk, unsigned int* counters, int pf) {                                                  \
        gemv_norm_qkv_impl<D>(qkv, r, nw, w, B, K, eps, wq, wk, positions, cos_sin, k_cache, v_cache,     \
                              slots, nq, nk, counters, pf);                                                \
    }

GEMV_NORM_QKV(64)
GEMV_NORM_QKV(128)
