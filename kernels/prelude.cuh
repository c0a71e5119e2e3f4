// Put before every kernel source by exec/src/cuda/compile.rs (not compiled on its own): the
// programmatic dependent launch helpers and the small device helpers several kernels share.
//
// Programmatic dependent launch (sm_90+). A kernel launched with the PDL attribute may start
// while the kernel before it in the stream is still running, so it must call pdl_wait() before
// it reads anything an earlier kernel writes or writes anything an earlier kernel reads; what it
// does before (prefetching weights, which nothing writes) overlaps the previous kernel's tail.
// pdl_trigger() lets the next kernel launch once every block of this one has called it. Both
// are no-ops before sm_90 and in launches without the attribute, so every caller stays correct
// on every architecture.
#include <cuda_bf16.h>

#ifndef INFINITY  // NVRTC has no <math.h>
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Both at a kernel's start: wait for the previous kernel, then let the next one launch (it will
// wait for this one in turn, so at most two kernels overlap).
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_trigger();
}

// Ask the copy engine to bring `bytes` (a multiple of 16, 16-byte aligned) at `p` into L2: one
// instruction per weight row, issued before pdl_wait() so the row arrives during the previous
// kernel. A hint: nothing waits for it.
__device__ __forceinline__ void prefetch_l2(const void* p, unsigned int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Reductions and bf16 packing several kernels share.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (every thread gets it); blockDim.x a multiple of 32, at most 1024.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // part[] may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.f;
    return warp_sum(v);
}

// 8 bf16 (one 16-byte load) to floats and back.
__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

__device__ __forceinline__ uint4 pack8(const float* f) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return u;
}

// Two floats as a bf16x2 register (an mma operand).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}

// c += a b for one m16n8k16 tile (bf16 in, f32 accumulate): the extend attention kernels' mma.
__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Split K over CTAs: call after this CTA has written its partial (every thread of the CTA).
// Counts the CTA in at its tile's counter and says whether it arrived last of the `splits`; the
// last one then sees every partial and must re-arm the counter to 0 when done (graph replays).
__device__ __forceinline__ bool last_of_splits(unsigned int* counter, int splits) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == (unsigned int)(splits - 1);
    __syncthreads();
    if (last) __threadfence();
    return last;
}

// One warp's per-head RMSNorm (w == nullptr: none) and neox RoPE of a head of D elements, on
// registers: lane holds a[j] = x[i0 + j] and b[j] = x[D/2 + i0 + j] (i0 = lane * D/64) and gets
// the rotated halves back in place. The normalised values are rounded to bf16 before RoPE, as
// the unfused qk_rmsnorm stores them; cs is the position's cos/sin row. Shared by the q/k passes
// (rope.cu, gemv.cu) and the decode attention that folds the pass in.
template <int D>
__device__ __forceinline__ void head_norm_rope(float* a, float* b, const __nv_bfloat16* w,
                                               const float* cs, int i0, float eps) {
    constexpr int HALF = D / 2, EPH = D / 64;
    if (w != nullptr) {
        float ss = 0.f;
#pragma unroll
        for (int j = 0; j < EPH; j++) ss += a[j] * a[j] + b[j] * b[j];
        const float inv = rsqrtf(warp_sum(ss) / D + eps);
#pragma unroll
        for (int j = 0; j < EPH; j++) {
            a[j] = __bfloat162float(__float2bfloat16(a[j] * inv * __bfloat162float(w[i0 + j])));
            b[j] = __bfloat162float(__float2bfloat16(b[j] * inv * __bfloat162float(w[HALF + i0 + j])));
        }
    }
#pragma unroll
    for (int j = 0; j < EPH; j++) {
        const float c = cs[i0 + j], s = cs[HALF + i0 + j];
        const float lo = a[j] * c - b[j] * s, hi = b[j] * c + a[j] * s;
        a[j] = lo;
        b[j] = hi;
    }
}

// Asynchronous 16-byte global -> shared copies (sm_80+) through L2 only: `bytes` 0 fills zeros
// (rows past the end: V * 0 stays finite). Shared by the tiled GEMM and both attentions.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Wait until at most N of this thread's commit groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
