// Rotary position embedding, neox style (rotate halves), in place on q and k heads of the fused
// qkv buffer. cos/sin come from a host-built f32 table [max_pos, head_dim]: columns
// [0, D/2) hold cos(pos * inv_freq[i]), [D/2, D) hold sin; Llama 3 rope scaling is folded into
// inv_freq on the host, so one kernel serves both plain and scaled RoPE.
#include <cuda_bf16.h>

// qkv: [T, row_stride], q heads at [0, nq*D), k heads at [nq*D, (nq+nk)*D).
// positions: [T] token positions (< max_pos, checked by the host). One warp per (token, head).
// Grid (ceil(T*(nq+nk)/4)), block 128.
extern "C" __global__ void rope_neox(__nv_bfloat16* __restrict__ qkv,
                                     const int* __restrict__ positions,
                                     const float* __restrict__ cos_sin, int num_tokens, int nq,
                                     int nk, int head_dim, int row_stride) {
    pdl_enter();
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    int heads = nq + nk;
    if (warp >= num_tokens * heads) return;
    int t = warp / heads, h = warp % heads;
    __nv_bfloat16* p = qkv + (size_t)t * row_stride + (size_t)h * head_dim;
    int half = head_dim / 2;
    const float* cs = cos_sin + (size_t)positions[t] * head_dim;
    for (int i = lane; i < half; i += 32) {
        float c = cs[i], s = cs[half + i];
        float x1 = __bfloat162float(p[i]);
        float x2 = __bfloat162float(p[half + i]);
        p[i] = __float2bfloat16(x1 * c - x2 * s);
        p[half + i] = __float2bfloat16(x2 * c + x1 * s);
    }
}

// One pass over a token's fused qkv row doing what qk_rmsnorm, rope_neox and kv_store do in three:
// q heads: [per-head RMSNorm] + RoPE, written back in place (attention reads q from here);
// k heads: [per-head RMSNorm] + RoPE, written to k_cache[slots[t]] (not back to qkv);
// v heads: copied to v_cache[slots[t]].
// wq/wk may be null (no q/k norm, e.g. Llama). One warp per (token, QR_HPW consecutive heads):
// every head's loads are issued before any is used (a warp with one head kept too few bytes in
// flight: 41 us for a 64 x 128 prefill's k/v pass against ~23 us of traffic), and the token's
// position, slot and cos/sin row are read once. A lane owns EPH consecutive elements of each half
// of a head, so each RoPE pair stays inside one lane. Grid (ceil(T * ceil(H / QR_HPW) / 4)),
// block 128.
#define QR_HPW 4

template <int EPH>
__device__ __forceinline__ void ld_pairs(const __nv_bfloat16* p, float* f) {
    if constexpr (EPH == 2) {
        float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
        f[0] = v.x;
        f[1] = v.y;
    } else {
        f[0] = __bfloat162float(*p);
    }
}

template <int EPH>
__device__ __forceinline__ void st_pairs(__nv_bfloat16* p, const float* f) {
    if constexpr (EPH == 2) {
        *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(f[0], f[1]);
    } else {
        *p = __float2bfloat16(f[0]);
    }
}

template <int D>
__device__ void qk_norm_rope_store_impl(__nv_bfloat16* __restrict__ qkv,
                                        const __nv_bfloat16* __restrict__ wq,
                                        const __nv_bfloat16* __restrict__ wk,
                                        const int* __restrict__ positions,
                                        const float* __restrict__ cos_sin,
                                        __nv_bfloat16* __restrict__ k_cache,
                                        __nv_bfloat16* __restrict__ v_cache,
                                        const unsigned int* __restrict__ slots, int num_tokens,
                                        int nq, int nk, int row_stride, float eps) {
    constexpr int HALF = D / 2, EPH = D / 64;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const int heads = nq + 2 * nk;
    const int groups = (heads + QR_HPW - 1) / QR_HPW;
    if (warp >= num_tokens * groups) return;
    const int t = warp / groups, h0 = (warp % groups) * QR_HPW;
    const int i0 = lane * EPH;
    const __nv_bfloat16* row = qkv + (size_t)t * row_stride;
    float a[QR_HPW][EPH], b[QR_HPW][EPH];
#pragma unroll
    for (int i = 0; i < QR_HPW; i++) {
        if (h0 + i < heads) {
            ld_pairs<EPH>(row + (size_t)(h0 + i) * D + i0, a[i]);
            ld_pairs<EPH>(row + (size_t)(h0 + i) * D + HALF + i0, b[i]);
        }
    }
    const size_t kv_row = (size_t)slots[t] * nk * D;
    // Read only when some head of the group is rotated (the row exists for every position).
    const float* cs = cos_sin + (size_t)positions[t] * D;
#pragma unroll
    for (int i = 0; i < QR_HPW; i++) {
        const int h = h0 + i;
        if (h >= heads) break;
        if (h >= nq + nk) {  // v head: copy
            __nv_bfloat16* dst = v_cache + kv_row + (size_t)(h - nq - nk) * D;
            st_pairs<EPH>(dst + i0, a[i]);
            st_pairs<EPH>(dst + HALF + i0, b[i]);
            continue;
        }
        head_norm_rope<D>(a[i], b[i], h < nq ? wq : wk, cs, i0, eps);
        __nv_bfloat16* dst = h < nq ? qkv + (size_t)t * row_stride + (size_t)h * D
                                    : k_cache + kv_row + (size_t)(h - nq) * D;
        st_pairs<EPH>(dst + i0, a[i]);
        st_pairs<EPH>(dst + HALF + i0, b[i]);
    }
}

#define QK_NORM_ROPE_STORE(D)                                                                     \
    extern "C" __global__ void qk_norm_rope_store_d##D(                                           \
        __nv_bfloat16* qkv, const __nv_bfloat16* wq, const __nv_bfloat16* wk, const int* positions, \
        const float* cos_sin, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,                     \
        const unsigned int* slots, int num_tokens, int nq, int nk, int row_stride, float eps) {   \
        pdl_enter();                                                                              \
        qk_norm_rope_store_impl<D>(qkv, wq, wk, positions, cos_sin, k_cache, v_cache, slots,      \
                                   num_tokens, nq, nk, row_stride, eps);                          \
    }

QK_NORM_ROPE_STORE(64)
QK_NORM_ROPE_STORE(128)
