// SiLU-and-mul: out[t, i] = silu(gate_up[t, i]) * gate_up[t, I + i], the SwiGLU MLP's middle.
// bf16 storage, f32 math, 16-byte vectors (I must be a multiple of 8, checked by the host).
#include <cuda_bf16.h>

// Grid (ceil(I/8/128), min(T, 65535)), block 128.
extern "C" __global__ void silu_and_mul(__nv_bfloat16* __restrict__ out,
                                        const __nv_bfloat16* __restrict__ gate_up,
                                        int num_tokens, int inter) {
    pdl_enter();
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // index of an 8-element chunk
    if (i * 8 >= inter) return;
    // Blocks stride over the tokens: a grid's y is at most 65535.
    for (int t = blockIdx.y; t < num_tokens; t += gridDim.y) {
        const __nv_bfloat16* row = gate_up + (size_t)t * 2 * inter;
        uint4 g = *reinterpret_cast<const uint4*>(row + i * 8);
        uint4 u = *reinterpret_cast<const uint4*>(row + inter + i * 8);
        const __nv_bfloat162* g2 = reinterpret_cast<const __nv_bfloat162*>(&g);
        const __nv_bfloat162* u2 = reinterpret_cast<const __nv_bfloat162*>(&u);
        uint4 r;
        __nv_bfloat162* r2 = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float2 a = __bfloat1622float2(g2[j]);
            float2 b = __bfloat1622float2(u2[j]);
            // silu(a) rounded to bf16 before the product, as torch's bf16 silu(x) * up does.
            float sa = __bfloat162float(__float2bfloat16(a.x / (1.f + __expf(-a.x))));
            float sb = __bfloat162float(__float2bfloat16(a.y / (1.f + __expf(-a.y))));
            r2[j] = __floats2bfloat162_rn(sa * b.x, sb * b.y);
        }
        *reinterpret_cast<uint4*>(out + (size_t)t * inter + i * 8) = r;
    }
}
