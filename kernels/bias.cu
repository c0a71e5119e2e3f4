// Bias add on the qkv projection's output (Qwen2's q/k/v biases): x[t, c] = bf16(x[t, c] +
// bias[c]) in f32. torch's bf16 Linear adds the bias before its one rounding; here the GEMM's
// output is already rounded, so each element takes one bf16 rounding more (half an ulp).
#include <cuda_bf16.h>

// Grid (ceil(width / 2 / 256), min(rows, 65535)), block 256, blocks striding over the rows (a
// grid's y is at most 65535); width even and rows `ld` elements apart (checked by the host).
extern "C" __global__ void add_bias_rows(__nv_bfloat16* __restrict__ x,
                                         const __nv_bfloat16* __restrict__ bias,
                                         int rows, int width, int ld) {
    pdl_enter();
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // index of a bf16 pair
    if (2 * i >= width) return;
    float2 b = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(bias)[i]);
    for (int t = blockIdx.y; t < rows; t += gridDim.y) {
        __nv_bfloat162* row = reinterpret_cast<__nv_bfloat162*>(x + (size_t)t * ld);
        float2 a = __bfloat1622float2(row[i]);
        row[i] = __floats2bfloat162_rn(a.x + b.x, a.y + b.y);
    }
}
