// RMSNorm variants: plain, fused residual add, and Qwen3's per-head q/k norm.
//
// bf16 storage, f32 accumulation. Rows are read with 16-byte vectors: widths must be multiples
// of 8 (checked by the host wrappers).
#include <cuda_bf16.h>

// out[t] = x[r] / rms(x[r]) * w with r = rows[t], or r = t when rows is null (a gather of the
// rows that need logits folded into the final norm). Grid (T), block 128..1024.
extern "C" __global__ void rmsnorm(__nv_bfloat16* __restrict__ out,
                                   const __nv_bfloat16* __restrict__ x,
                                   const __nv_bfloat16* __restrict__ w, int num_tokens,
                                   int hidden, float eps, const unsigned int* __restrict__ rows) {
    pdl_enter();
    int t = blockIdx.x;
    if (t >= num_tokens) return;
    const size_t r = rows != nullptr ? rows[t] : (unsigned int)t;
    const uint4* xr = reinterpret_cast<const uint4*>(x + r * hidden);
    const uint4* wr = reinterpret_cast<const uint4*>(w);
    uint4* o = reinterpret_cast<uint4*>(out + (size_t)t * hidden);
    int n = hidden / 8;
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float f[8];
        unpack8(xr[i], f);
#pragma unroll
        for (int j = 0; j < 8; j++) ss += f[j] * f[j];
    }
    float inv = rsqrtf(block_sum(ss) / hidden + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float f[8], g[8];
        unpack8(xr[i], f);
        unpack8(wr[i], g);
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = f[j] * inv * g[j];
        o[i] = pack8(f);
    }
}

// residual[t] = bf16(x[t] + residual[t]); x[t] = residual[t] / rms(residual[t]) * w.
// The sum is rounded to bf16 before the norm, as a bf16 framework does. Grid (T), block 128..1024.
extern "C" __global__ void fused_add_rmsnorm(__nv_bfloat16* __restrict__ x,
                                             __nv_bfloat16* __restrict__ residual,
                                             const __nv_bfloat16* __restrict__ w,
                                             int num_tokens, int hidden, float eps) {
    pdl_enter();
    int t = blockIdx.x;
    if (t >= num_tokens) return;
    uint4* xr = reinterpret_cast<uint4*>(x + (size_t)t * hidden);
    uint4* rr = reinterpret_cast<uint4*>(residual + (size_t)t * hidden);
    const uint4* wr = reinterpret_cast<const uint4*>(w);
    int n = hidden / 8;
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float a[8], b[8];
        unpack8(xr[i], a);
        unpack8(rr[i], b);
#pragma unroll
        for (int j = 0; j < 8; j++) a[j] += b[j];
        uint4 s = pack8(a);
        rr[i] = s;
        unpack8(s, a);
#pragma unroll
        for (int j = 0; j < 8; j++) ss += a[j] * a[j];
    }
    float inv = rsqrtf(block_sum(ss) / hidden + eps);
    // Each thread re-reads only the residual chunks it wrote itself: no barrier needed.
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float f[8], g[8];
        unpack8(rr[i], f);
        unpack8(wr[i], g);
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = f[j] * inv * g[j];
        xr[i] = pack8(f);
    }
}

// Qwen3's per-head RMSNorm of q and k, in place in the fused qkv buffer
// [T, row_stride]: q heads at columns [0, nq*D), k heads at [nq*D, (nq+nk)*D).
// One warp per (token, head). head_dim must be a multiple of 64 and at most 256.
// Grid (ceil(T*(nq+nk)/4)), block 128.
extern "C" __global__ void qk_rmsnorm(__nv_bfloat16* __restrict__ qkv,
                                      const __nv_bfloat16* __restrict__ wq,
                                      const __nv_bfloat16* __restrict__ wk, int num_tokens,
                                      int nq, int nk, int head_dim, int row_stride, float eps) {
    pdl_enter();
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    int heads = nq + nk;
    if (warp >= num_tokens * heads) return;
    int t = warp / heads, h = warp % heads;
    __nv_bfloat16* p = qkv + (size_t)t * row_stride + (size_t)h * head_dim;
    const __nv_bfloat16* w = h < nq ? wq : wk;
    // Each lane owns head_dim/32 consecutive elements, read as bf16 pairs.
    int per = head_dim / 32;  // 2, 4, 6 or 8
    float v[8];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
        if (j < per) {
            float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p + lane * per + j));
            v[j] = f.x;
            v[j + 1] = f.y;
            ss += f.x * f.x + f.y * f.y;
        }
    }
    float inv = rsqrtf(warp_sum(ss) / head_dim + eps);
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
        if (j < per) {
            float2 g = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(w + lane * per + j));
            *reinterpret_cast<__nv_bfloat162*>(p + lane * per + j) =
                __floats2bfloat162_rn(v[j] * inv * g.x, v[j + 1] * inv * g.y);
        }
    }
}

// out[r, c] = bf16(w[r, c] * nw[c]): an RMSNorm weight folded into the columns of the projection
// after it, so that (x / rms(x) * nw) Wᵀ = (x Wᵀ') / rms(x) and the projection can run on the raw
// rows, the 1 / rms(x) applied by whoever reads its output (the decode attention's q/k pass).
// Done once at load. cols % 8 == 0. Grid-stride over 8-element chunks, block 256.
// out may alias w (the fold runs in place at load): each element is read, then written, by one thread.
extern "C" __global__ void scale_cols(__nv_bfloat16* out, const __nv_bfloat16* w,
                                      const __nv_bfloat16* __restrict__ nw, int rows, int cols) {
    pdl_enter();
    const size_t n = (size_t)rows * cols / 8;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)((i * 8) % (size_t)cols);
        float f[8], g[8];
        unpack8(reinterpret_cast<const uint4*>(w)[i], f);
        unpack8(*reinterpret_cast<const uint4*>(nw + c), g);
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] *= g[j];
        reinterpret_cast<uint4*>(out)[i] = pack8(f);
    }
}
