// Decode attention (one query token per entry) over the paged KV cache: split-KV flash-decoding.
//
// Pass 1 (attention_decode_split): block (split, kv head, entry) covers one contiguous range of
// the entry's keys for all q heads of the GQA group, so each K/V row is read once per group.
// Its 4 warps take keys round-robin; within a warp each lane owns D/32 consecutive dims, so a
// key's row is one coalesced warp-wide load. Scores come from warp reductions, the softmax is the
// running-max one per warp, and the warps' states are merged in shared memory. The block writes
// the unnormalised partial output with its (max, sum) for pass 2.
// Pass 2 (attention_decode_combine): merges the splits of each (entry, q head) and writes bf16.
// The split count is a launch parameter and key ranges come from kv_len on the device, so one
// captured CUDA graph serves any sequence lengths.
#include <cuda_bf16.h>

#ifndef INFINITY  // NVRTC has no <math.h>
#define INFINITY __int_as_float(0x7f800000)
#endif

#define NW 4
#define MAXG 8  // largest GQA group (nq / nk) supported
#define UNROLL 8

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int D>
__device__ __forceinline__ void load_row(const __nv_bfloat16* p, float* f) {
    constexpr int E = D / 32;
    if constexpr (E == 4) {
        uint2 u = *reinterpret_cast<const uint2*>(p);
        float2 a = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u.x));
        float2 b = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u.y));
        f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
    } else {
        float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
        f[0] = a.x; f[1] = a.y;
    }
}

// q: [T, q_stride] (q head h at column h*D), q_tok[b] its token row; kv_len[b], row[b] as in
// extend. part_o: [B, nq, splits, D] f32, part_ml: [B, nq, splits, 2] f32 (max in log2 units,
// sum). Grid (splits, nk, B), block 128.
template <int D>
__device__ void decode_split_impl(float* __restrict__ part_o, float* __restrict__ part_ml,
                                  const __nv_bfloat16* __restrict__ q,
                                  const __nv_bfloat16* __restrict__ k_cache,
                                  const __nv_bfloat16* __restrict__ v_cache,
                                  const unsigned int* __restrict__ table,
                                  const int* __restrict__ q_tok, const int* __restrict__ kv_len,
                                  const int* __restrict__ row, int nq, int nk, int q_stride,
                                  int table_stride, float scale) {
    constexpr int E = D / 32;
    __shared__ float sm_m[NW][MAXG], sm_l[NW][MAXG];
    __shared__ float sm_o[NW][MAXG][D];

    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, splits = gridDim.x;
    const int G = nq / nk;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvl = kv_len[b];
    const int chunk = (kvl + splits - 1) / splits;
    const int k_begin = split * chunk, k_end = min(kvl, k_begin + chunk);
    const unsigned int* trow = table + (size_t)row[b] * table_stride;
    const float sl2 = scale * 1.4426950408889634f;

    float qv[MAXG][E], acc[MAXG][E], m[MAXG], l[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int e = 0; e < E; e++) acc[g][e] = qv[g][e] = 0.f;
        if (g < G) {
            load_row<D>(q + (size_t)q_tok[b] * q_stride + (size_t)(kvh * G + g) * D + lane * E, qv[g]);
#pragma unroll
            for (int e = 0; e < E; e++) qv[g][e] *= sl2;
        }
    }

    const size_t kvw = (size_t)nk * D;
    // Lane u < UNROLL holds the slot of key k0 + u: one load for the warp's UNROLL keys, and the
    // next iteration's slots are fetched before this iteration's arithmetic.
    int k0 = k_begin + warp * UNROLL;
    unsigned int my_slot = (lane < UNROLL && k0 + lane < k_end) ? trow[k0 + lane] : 0u;
    for (; k0 < k_end; k0 += NW * UNROLL) {
        float kf[UNROLL][E], vf[UNROLL][E];
        bool ok[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            ok[u] = k0 + u < k_end;
            unsigned int slot = __shfl_sync(0xffffffffu, my_slot, u);
            if (ok[u]) {
                size_t off = (size_t)slot * kvw + kvh * D + lane * E;
                load_row<D>(k_cache + off, kf[u]);
                load_row<D>(v_cache + off, vf[u]);
            } else {
#pragma unroll
                for (int e = 0; e < E; e++) kf[u][e] = vf[u][e] = 0.f;
            }
        }
        int kn = k0 + NW * UNROLL;
        my_slot = (lane < UNROLL && kn + lane < k_end) ? trow[kn + lane] : 0u;
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g < G) {
                float s[UNROLL];
                float mx = m[g];
#pragma unroll
                for (int u = 0; u < UNROLL; u++) {
                    float d = 0.f;
#pragma unroll
                    for (int e = 0; e < E; e++) d += qv[g][e] * kf[u][e];
                    d = warp_sum(d);
                    s[u] = ok[u] ? d : -INFINITY;
                    mx = fmaxf(mx, s[u]);
                }
                // mx is finite: ok[0] always holds inside the loop.
                float alpha = exp2f(m[g] - mx);
                m[g] = mx;
                l[g] *= alpha;
#pragma unroll
                for (int e = 0; e < E; e++) acc[g][e] *= alpha;
#pragma unroll
                for (int u = 0; u < UNROLL; u++) {
                    float p = exp2f(s[u] - mx);
                    l[g] += p;
#pragma unroll
                    for (int e = 0; e < E; e++) acc[g][e] += p * vf[u][e];
                }
            }
        }
    }

#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        if (g < G) {
            if (lane == 0) {
                sm_m[warp][g] = m[g];
                sm_l[warp][g] = l[g];
            }
#pragma unroll
            for (int e = 0; e < E; e++) sm_o[warp][g][lane * E + e] = acc[g][e];
        }
    }
    __syncthreads();
    // Merge the warps: thread t handles (head g, dim d) pairs.
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        int g = i / D, d = i % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < NW; w++) M = fmaxf(M, sm_m[w][g]);
        float Ms = M == -INFINITY ? 0.f : M;
        float L = 0.f, O = 0.f;
#pragma unroll
        for (int w = 0; w < NW; w++) {
            float f = exp2f(sm_m[w][g] - Ms);
            L += sm_l[w][g] * f;
            O += sm_o[w][g][d] * f;
        }
        size_t base = ((size_t)b * nq + kvh * G + g) * splits + split;
        part_o[base * D + d] = O;
        if (d == 0) {
            part_ml[base * 2] = M;
            part_ml[base * 2 + 1] = L;
        }
    }
}

// out: [T, nq*D] bf16, row q_tok[b]. Grid (nq, B), block 128.
template <int D>
__device__ void decode_combine_impl(__nv_bfloat16* __restrict__ out,
                                    const float* __restrict__ part_o,
                                    const float* __restrict__ part_ml,
                                    const int* __restrict__ q_tok, int nq, int splits) {
    const int h = blockIdx.x, b = blockIdx.y;
    const size_t base = ((size_t)b * nq + h) * splits;
    float M = -INFINITY;
    for (int s = 0; s < splits; s++) M = fmaxf(M, part_ml[(base + s) * 2]);
    float Ms = M == -INFINITY ? 0.f : M;
    float L = 0.f;
    for (int s = 0; s < splits; s++) L += part_ml[(base + s) * 2 + 1] * exp2f(part_ml[(base + s) * 2] - Ms);
    float inv = L > 0.f ? 1.f / L : 0.f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float O = 0.f;
        for (int s = 0; s < splits; s++) O += part_o[(base + s) * D + d] * exp2f(part_ml[(base + s) * 2] - Ms);
        out[(size_t)q_tok[b] * nq * D + h * D + d] = __float2bfloat16(O * inv);
    }
}

#define DECODE_ENTRIES(D)                                                                          \
    extern "C" __global__ void __launch_bounds__(128) attention_decode_split_d##D(                  \
        float* part_o, float* part_ml, const __nv_bfloat16* q, const __nv_bfloat16* k_cache,       \
        const __nv_bfloat16* v_cache, const unsigned int* table, const int* q_tok,                 \
        const int* kv_len, const int* row, int nq, int nk, int q_stride, int table_stride,         \
        float scale) {                                                                             \
        decode_split_impl<D>(part_o, part_ml, q, k_cache, v_cache, table, q_tok, kv_len, row, nq,  \
                             nk, q_stride, table_stride, scale);                                   \
    }                                                                                              \
    extern "C" __global__ void attention_decode_combine_d##D(__nv_bfloat16* out,                   \
                                                             const float* part_o,                  \
                                                             const float* part_ml,                 \
                                                             const int* q_tok, int nq, int splits) { \
        decode_combine_impl<D>(out, part_o, part_ml, q_tok, nq, splits);                           \
    }

DECODE_ENTRIES(64)
DECODE_ENTRIES(128)
