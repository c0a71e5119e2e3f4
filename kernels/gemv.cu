// Small-batch bf16 GEMV: y[b, n] = sum_k x[b, k] * W[n, k] for b < B <= 8 (decode at batch 1-8).
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

// x: [B, K] bf16, W: [N, K] bf16, y: [B, N] bf16 (ldy: row stride of y). K % 8 == 0.
// Grid (ceil(N / 8)), block 256.
extern "C" __global__ void __launch_bounds__(256) gemv_bf16(__nv_bfloat16* __restrict__ y,
                                                            const __nv_bfloat16* __restrict__ x,
                                                            const __nv_bfloat16* __restrict__ w,
                                                            int B, int N, int K, int ldy) {
    int n = blockIdx.x * WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= N) return;
    const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)n * K);
    const int kc = K / 8;
    float acc[MAXB];
#pragma unroll
    for (int b = 0; b < MAXB; b++) acc[b] = 0.f;
    int c = lane;
    for (; c + 96 < kc; c += 128) {
        uint4 wv[4];
#pragma unroll
        for (int u = 0; u < 4; u++) wv[u] = __ldg(wr + c + 32 * u);
#pragma unroll
        for (int b = 0; b < MAXB; b++) {
            if (b < B) {
                const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)b * K);
#pragma unroll
                for (int u = 0; u < 4; u++) dot8(acc[b], wv[u], __ldg(xr + c + 32 * u));
            }
        }
    }
    for (; c < kc; c += 32) {
        uint4 wv = __ldg(wr + c);
#pragma unroll
        for (int b = 0; b < MAXB; b++) {
            if (b < B) dot8(acc[b], wv, __ldg(reinterpret_cast<const uint4*>(x + (size_t)b * K) + c));
        }
    }
#pragma unroll
    for (int b = 0; b < MAXB; b++) {
        if (b < B) {
            float v = acc[b];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) y[(size_t)b * ldy + n] = __float2bfloat16(v);
        }
    }
}

// The MLP's gate/up projection with SiLU-and-mul fused in: w is [gate; up] as [2I, K];
// y[b, n] = bf16(silu(bf16(x_b . w[n]))) * bf16(x_b . w[I + n]) for n < I (the same roundings
// as gemv_bf16 followed by silu_and_mul). One warp per n: it reads both rows. Grid (ceil(I/8)),
// block 256.
extern "C" __global__ void __launch_bounds__(256) gemv_gate_up_silu(__nv_bfloat16* __restrict__ y,
                                                                    const __nv_bfloat16* __restrict__ x,
                                                                    const __nv_bfloat16* __restrict__ w,
                                                                    int B, int I, int K) {
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
                uint4 x0 = __ldg(xr + c), x1 = __ldg(xr + c + 32);
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
                uint4 x0 = __ldg(reinterpret_cast<const uint4*>(x + (size_t)b * K) + c);
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
