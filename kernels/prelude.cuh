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

// A 16-byte load of weights read once: through L2 only, not allocated in L1 (the skinny GEMM's
// and the LM-head argmax's weight stream).
__device__ __forceinline__ uint4 ld_stream(const __nv_bfloat16* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// A (value, index) candidate of a greedy argmax (sampling.cu, lm_head_argmax.cu).
struct ArgMax {
    float v;
    int i;
};

// Larger value wins; ties go to the lower index (torch.argmax's choice). A total order, so any
// reduction order gives the same winner. Callers map NaN to -inf first.
__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) {
    if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
    return a;
}

// The best candidate over a warp's lanes (every lane gets it).
__device__ __forceinline__ ArgMax warp_argmax(ArgMax a) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        ArgMax b;
        b.v = __shfl_xor_sync(0xffffffffu, a.v, o);
        b.i = __shfl_xor_sync(0xffffffffu, a.i, o);
        a = better(a, b);
    }
    return a;
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

// c += a b for one m16n8k8 tile (bf16 in, f32 accumulate): a holds two registers.
__device__ __forceinline__ void mma_bf16_k8(float* c, const unsigned* a, unsigned b0) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
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

// The tensor-core attention tile (mma.sync m16n8k16, online softmax in exp2 units), shared by
// the GQA-packed extend attention and the tensor-core decode attention.
__device__ __forceinline__ void ldsm_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ float ex2(float x) {  // 2^x; ex2(-inf) = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// One key tile of the GQA kernel for one warp: S = Q K^T, online softmax, O += P V. M: the tile
// reaches past this warp's first query (causal mask; key sub-tiles wholly past its last query
// are skipped).
template <int D, int BN, bool QREG, bool M>
__device__ __forceinline__ void gqa_tile_math(float (&o)[D / 8][4], float (&mrow)[2],
                                              float (&lrow)[2], const unsigned (&qa)[QREG ? D / 16 : 1][4],
                                              unsigned q_lane, unsigned sk, unsigned sv, int n0,
                                              int wmax, int qp0, int qp1, float sl2, int lane) {
    constexpr int ROWB = (D + 8) * 2;
    const int tig = lane & 3;
    float s[BN / 8][4];
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kp = 0; kp < D / 32; kp++) {
        unsigned a0[4], a1[4];
        if constexpr (QREG) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                a0[i] = qa[2 * kp][i];
                a1[i] = qa[2 * kp + 1][i];
            }
        } else {
            ldsm_x4(a0, q_lane + kp * 64);
            ldsm_x4(a1, q_lane + kp * 64 + 32);
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
            if (M && n0 + nt * 8 > wmax) continue;  // all masked for this warp
            unsigned kb[4];
            ldsm_x4(kb, sk + (nt * 8 + (lane & 7)) * ROWB + kp * 64 + (lane >> 3) * 16);
            mma_bf16(s[nt], a0, kb[0], kb[1]);
            mma_bf16(s[nt], a1, kb[2], kb[3]);
        }
    }
    float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float v = s[nt][e] * sl2;
            if (M) {
                const int key = n0 + nt * 8 + tig * 2 + (e & 1);
                if (key > (e < 2 ? qp0 : qp1)) v = -INFINITY;
            }
            s[nt][e] = v;
            mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
    }
    float msub[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        msub[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // no key yet: avoid inf - inf
        const float alpha = ex2(mrow[r] - msub[r]);
        mrow[r] = mx[r];
        lrow[r] *= alpha;
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            o[i][2 * r] *= alpha;
            o[i][2 * r + 1] *= alpha;
        }
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float p = ex2(s[nt][e] - msub[e >> 1]);
            s[nt][e] = p;
            lrow[e >> 1] += p;
        }
    }
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
        if (M && n0 + kk * 16 > wmax) continue;  // P is 0 there
        unsigned pa[4];
        pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        const unsigned vrow = sv + (kk * 16 + (lane & 15)) * ROWB + (lane >> 4) * 16;
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            unsigned vb[4];
            ldsm_x4_t(vb, vrow + dp * 32);
            mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
            mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
        }
    }
}

// The q/k pass (rope.cu's qk_norm_rope_store) folded into the decode kernels: per-head q/k norm
// weights (null: none), each token's position and new KV slot, the RoPE cos/sin table.
#define DECODE_POST 1
#define DECODE_EARLY_KV 4
#define DECODE_KV_BEFORE_QK 8
#define DECODE_PF_NEXT_EARLY 16
struct DecodePost {
    // DECODE_POST: the q/k pass is on; DECODE_EARLY_KV:
    // request the first keys before waiting for the previous kernel; DECODE_KV_BEFORE_QK:
    // request them after the wait but before the q/k pass, so they arrive while it runs;
    // DECODE_PF_NEXT_EARLY: the pf_next prefetch below at the block's start, not its end.
    int flags;
    const __nv_bfloat16* wq;
    const __nv_bfloat16* wk;
    const int* positions;
    const float* cos_sin;
    const unsigned int* slots;
    float eps;
    // Non-null: q/k/v came from the raw residual stream xres ([T, hidden]) through the qkv
    // weights with the input RMSNorm's weight folded in; the pass scales them by the token's
    // 1 / rms(xres row) (eps xeps) first.
    const __nv_bfloat16* xres;
    int hidden;
    float xeps;
    // Non-null: the next kernel's weights (pf_bytes, a multiple of 16), which the blocks ask
    // into L2 in equal shares, as the attention leaves DRAM bandwidth unused.
    const char* pf_next;
    unsigned int pf_bytes;
    // decode_prefetch_kv: the first pf_keys keys of the block's range (0: no KV prefetch).
    int pf_keys;
};

// This block's share of post.pf_next into L2: one bulk prefetch, by thread 0.
__device__ __forceinline__ void decode_prefetch_next(const DecodePost& post) {
    if (post.pf_next == nullptr || threadIdx.x != 0) return;
    const unsigned int nb = gridDim.x * gridDim.y * gridDim.z;
    const unsigned int id = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned int share = ((post.pf_bytes + nb - 1) / nb + 127u) & ~127u;
    const unsigned long long begin = (unsigned long long)id * share;
    if (begin >= post.pf_bytes) return;
    prefetch_l2(post.pf_next + begin, min(share, post.pf_bytes - (unsigned int)begin));
}

// The parameters of every decode attention implementation DECODE_ENTRY instantiates (V3,
// tensor cores through shared memory, tensor cores fed from registers), in its call order.
#define DECODE_IMPL_PARAMS                                                                     \
    float* __restrict__ part_o, float* __restrict__ part_ml, const __nv_bfloat16* __restrict__ q, \
        __nv_bfloat16* __restrict__ k_cache, __nv_bfloat16* __restrict__ v_cache,              \
        const unsigned int* __restrict__ table, const int* __restrict__ q_tok,                 \
        const int* __restrict__ kv_len, const int* __restrict__ row, int nq, int nk,           \
        int q_stride, int table_stride, float scale, __nv_bfloat16* __restrict__ out,          \
        unsigned int* __restrict__ counters, int min_keys, const DecodePost post

// A decode attention entry point (attention_decode.cu, attention_decode_mma.cu,
// attention_decode_rmma.cu): the argument list the kernel families share, the trailing q/k-pass
// and next-weights arguments gathered into a DecodePost,
// then the implementation instance given as the variadic tail (a template-id with commas).
#define DECODE_ENTRY(NAME, MINB, ...)                                                              \
    extern "C" __global__ void __launch_bounds__(128, MINB) NAME(                                  \
        float* part_o, float* part_ml, const __nv_bfloat16* q, __nv_bfloat16* k_cache,             \
        __nv_bfloat16* v_cache, const unsigned int* table, const int* q_tok, const int* kv_len,    \
        const int* row, int nq, int nk, int q_stride, int table_stride, float scale,               \
        __nv_bfloat16* out, unsigned int* counters, int min_keys, const __nv_bfloat16* wq,         \
        const __nv_bfloat16* wk, const int* positions, const float* cos_sin,                       \
        const unsigned int* slots, float eps, int flags, const __nv_bfloat16* xres, int hidden,    \
        float xeps, const char* pf_next, unsigned int pf_bytes, int pf_keys) {                     \
        const DecodePost post{flags, wq,   wk,     positions, cos_sin,  slots,                     \
                              eps,   xres, hidden, xeps,      pf_next,  pf_bytes, pf_keys};        \
        __VA_ARGS__(part_o, part_ml, q, k_cache, v_cache, table, q_tok, kv_len, row, nq, nk,       \
                    q_stride, table_stride, scale, out, counters, min_keys, post);                 \
    }

// The end of the decode kernels (attention_decode.cu, _mma.cu, _rmma.cu): merge the
// NWARPS warps' online-softmax states of the block's G q heads (sm_m, sm_l: [NWARPS][MG]; sm_o:
// [NWARPS][MG][D]; maxima in log2 units). With counters and one split the block normalises and
// writes bf16 `out` itself; otherwise it writes this split's partial (part_o: [B, nq, splits, D],
// part_ml: [B, nq, splits, 2]) and, with counters, the last of the (entry, kv head)'s split
// blocks to finish merges every split into `out` and re-arms the counter (pass 2 folded in: one
// launch per layer instead of two). t: the entry's token row.
template <int D, int MG, int NWARPS>
__device__ __forceinline__ void decode_merge_store(const float* sm_m, const float* sm_l, const float* sm_o,
                                   float* __restrict__ part_o, float* __restrict__ part_ml,
                                   __nv_bfloat16* __restrict__ out,
                                   unsigned int* __restrict__ counters, int t, int b, int kvh,
                                   int G, int nq, int nk, int split, int splits) {
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        int g = i / D, d = i % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < NWARPS; w++) M = fmaxf(M, sm_m[w * MG + g]);
        float Ms = M == -INFINITY ? 0.f : M;
        float L = 0.f, O = 0.f;
#pragma unroll
        for (int w = 0; w < NWARPS; w++) {
            float f = exp2f(sm_m[w * MG + g] - Ms);
            L += sm_l[w * MG + g] * f;
            O += sm_o[(w * MG + g) * D + d] * f;
        }
        if (counters != nullptr && splits == 1) {
            // The only split: normalise and write here (what the fused tail would compute).
            out[(size_t)t * nq * D + (kvh * G + g) * D + d] = __float2bfloat16(L > 0.f ? O / L : 0.f);
            continue;
        }
        size_t base = ((size_t)b * nq + kvh * G + g) * splits + split;
        part_o[base * D + d] = O;
        if (d == 0) {
            part_ml[base * 2] = M;
            part_ml[base * 2 + 1] = L;
        }
    }
    if (counters == nullptr || splits == 1) return;
    if (!last_of_splits(counters + (size_t)b * nk + kvh, splits)) return;
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int g = i / D, d = i % D, h = kvh * G + g;
        const size_t base = ((size_t)b * nq + h) * splits;
        float M = -INFINITY;
        for (int s2 = 0; s2 < splits; s2++) M = fmaxf(M, __ldcg(part_ml + (base + s2) * 2));
        const float Ms = M == -INFINITY ? 0.f : M;
        float L = 0.f, O = 0.f;
        for (int s2 = 0; s2 < splits; s2++) {
            const float f = exp2f(__ldcg(part_ml + (base + s2) * 2) - Ms);
            L += __ldcg(part_ml + (base + s2) * 2 + 1) * f;
            O += __ldcg(part_o + (base + s2) * D + d) * f;
        }
        out[(size_t)t * nq * D + h * D + d] = __float2bfloat16(L > 0.f ? O / L : 0.f);
    }
    if (threadIdx.x == 0) counters[(size_t)b * nk + kvh] = 0u;
}

// Every decode kernel, before the PDL wait, with pf_keys > 0: ask L2 for the first pf_keys of
// the block's keys [k_begin, k_end) (the lengths and the slot table were written before the
// previous kernel started) as whole rows (all kv heads of a slot, contiguous), each by one of the
// nk blocks that share this key range: fewer, longer reads than each block asking for its own
// head's part of every row. The host bounds pf_keys so that the resident blocks' requests fit
// the L2 (beyond it they evict each other unread). pf_keys = 0: nothing (keys are only loaded).
template <int D>
__device__ __forceinline__ void decode_prefetch_kv(const __nv_bfloat16* k_cache,
                                                   const __nv_bfloat16* v_cache,
                                                   const unsigned int* trow, int k_begin, int k_end,
                                                   int kvh, int nk, int pf_keys) {
    if (pf_keys <= 0) return;
    const int end = k_end - k_begin > pf_keys ? k_begin + pf_keys : k_end;
    for (int k = k_begin + kvh + (int)threadIdx.x * nk; k < end; k += blockDim.x * nk) {
        const size_t off = (size_t)trow[k] * nk * D;
        prefetch_l2(k_cache + off, nk * D * 2);
        prefetch_l2(v_cache + off, nk * D * 2);
    }
}

// The q/k pass folded into both decode kernels (after the wait), on the raw projection row t of
// q (the qkv buffer): warp w of NWARPS takes jobs w, w + NWARPS, ...; job j < G normalises and
// rotates q head kvh * G + j into q_dst + j * q_ld; with `fresh` (the block holds the newest
// key), job G does the same to k head kvh and job G + 1 copies v head kvh, each into kv_dst
// (+ D for v) and into the caches at new_slot. Same roundings as qk_norm_rope_store.
template <int D, int NWARPS>
__device__ __forceinline__ void decode_qk_pass(const DecodePost& post, const __nv_bfloat16* q,
                                               __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                                               int t, int q_stride, int kvh, int G, int nq, int nk,
                                               bool fresh, unsigned int new_slot, int pos_t,
                                               __nv_bfloat16* q_dst, int q_ld,
                                               __nv_bfloat16* kv_dst) {
    constexpr int HALF = D / 2, EPH = D / 64;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int i0 = lane * EPH;
    const __nv_bfloat16* src = q + (size_t)t * q_stride;
    const float* cs = post.cos_sin + (size_t)pos_t * D;
    const int jobs = G + (fresh ? 2 : 0);
    float x0[EPH], x1[EPH];
    auto load = [&](int j) {
        const int col = j < G ? (kvh * G + j) * D : (nq + (j - G) * nk + kvh) * D;
#pragma unroll
        for (int e = 0; e < EPH; e++) {
            x0[e] = __bfloat162float(src[col + i0 + e]);
            x1[e] = __bfloat162float(src[col + HALF + i0 + e]);
        }
    };
    // Each warp's first job is requested before the row scale's reduction, so the two reads
    // from L2 overlap.
    if (warp < jobs) load(warp);
    // The input RMSNorm's row scale, when the projection ran on the raw residual row: every
    // warp sums the whole row itself (2 KB at hidden 1024), so no block barrier is needed.
    float rs = 1.f;
    if (post.xres != nullptr) {
        const __nv_bfloat16* xr = post.xres + (size_t)t * post.hidden;
        float ss = 0.f;
#pragma unroll 4
        for (int i = 8 * lane; i < post.hidden; i += 8 * 32) {
            float f[8];
            unpack8(*reinterpret_cast<const uint4*>(xr + i), f);
#pragma unroll
            for (int e = 0; e < 8; e++) ss += f[e] * f[e];
        }
        rs = rsqrtf(warp_sum(ss) / post.hidden + post.xeps);
    }
    for (int j = warp; j < jobs; j += NWARPS) {
        if (j != warp) load(j);
#pragma unroll
        for (int e = 0; e < EPH; e++) {
            x0[e] *= rs;
            x1[e] *= rs;
        }
        if (j <= G) head_norm_rope<D>(x0, x1, j < G ? post.wq : post.wk, cs, i0, post.eps);
        __nv_bfloat16* dst = j < G ? q_dst + j * q_ld : kv_dst + (j - G) * D;
#pragma unroll
        for (int e = 0; e < EPH; e++) {
            dst[i0 + e] = __float2bfloat16(x0[e]);
            dst[HALF + i0 + e] = __float2bfloat16(x1[e]);
        }
        if (j >= G) {
            __nv_bfloat16* c = (j == G ? k_cache : v_cache) + (size_t)new_slot * nk * D + (size_t)kvh * D;
#pragma unroll
            for (int e = 0; e < EPH; e++) {
                c[i0 + e] = dst[i0 + e];
                c[HALF + i0 + e] = dst[HALF + i0 + e];
            }
        }
    }
}
