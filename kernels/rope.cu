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
