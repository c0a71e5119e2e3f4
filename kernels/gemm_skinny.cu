// Skinny tensor-core GEMM for decode batches (M <= 64 tokens): y[m, n] = sum_k x[m, k] * W[n, k],
// W [N, K] row-major as stored in checkpoints, bf16 in, f32 accumulation (mma.sync m16n8k16).
//
// At M <= 64 the projections are weight-bandwidth bound (cuBLAS launched N/128 CTAs and read the
// weights at ~1 TB/s). Here every CTA streams a 32*WN-column x K/S slab of W straight from global
// memory into registers with 16-byte loads (two to four k-steps in flight per lane), so the grid has
// (N / (32*WN)) * S CTAs, S being the split of K over CTAs.
//
// No shared memory for W: the sum over k is order-free, so k is permuted identically for both
// operands. In a 32-wide k-step, lane (g = lane/4, t = lane%4) loads W[n0 + g][k0 + 8t .. +8]:
// its first 4 values are the B fragment of the step's first mma (logical k 2t, 2t+1, 2t+8, 2t+9),
// its last 4 that of the second. The A fragments are the matching 16 bytes of activation rows g
// and g + 8 of each 16-row tile, read through L1 (the WN warps sharing a k range share them).
// Run 6 measured the activation loads as the limit at M = 64 when each 16-row tile's loads
// waited for the previous tile's mmas (time linear in M/16), hence the per-step prefetch below.
//
// 8 warps per CTA: WN along N (32 columns = four n8 tiles each), WK = 8 / WN along K (interleaved
// k-steps). The WK partial tiles are summed in shared memory in a fixed order; with S > 1 each
// CTA writes its f32 partial and the last CTA of a column tile (counter) sums the S partials in
// split order and applies the epilogue, then re-arms the counter (graph-replayable). Results are
// deterministic.
//
// Epilogues: PLAIN y = bf16(acc); RESADD y = bf16(bf16(acc) + y) (the residual add of
// fused_add_rmsnorm, in place); SILU for the [gate; up] weight (2I rows): a warp's first two n8
// tiles are gate rows, its last two the matching up rows, y[m, i] = bf16(bf16(silu(bf16(g))) *
// bf16(u)) (the roundings of gemv_gate_up_silu).
#include <cuda_bf16.h>

#define SK_THREADS 256
#define SK_PAD 40  // floats per row of the reduction buffer (32 + 8: conflict-free float2 stores)

enum { SK_PLAIN = 0, SK_RESADD = 1, SK_SILU = 2 };

__device__ __forceinline__ void mma16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float bfr(float v) { return __bfloat162float(__float2bfloat16(v)); }

// W row of warp-local n8 tile j (0..3) for output column base o0 (SILU: gate rows, then up rows
// at +I); `valid` says whether the output column exists.
template <int MODE>
__device__ __forceinline__ int sk_row(int o0, int j, int g, int Nout, bool& valid) {
    if constexpr (MODE == SK_SILU) {
        const int o = o0 + 8 * (j & 1) + g;
        valid = o < Nout;
        return (j < 2) ? o : Nout + o;
    } else {
        const int o = o0 + 8 * j + g;
        valid = o < Nout;
        return o;
    }
}

// Output column of warp-local column c (0..31) for non-SILU modes; SILU pairs c and c + 16.
template <int MT, int WN, int MODE>
__device__ __forceinline__ void sk_body(__nv_bfloat16* __restrict__ y, const __nv_bfloat16* __restrict__ x,
                                        const __nv_bfloat16* __restrict__ w, float* __restrict__ part,
                                        unsigned int* __restrict__ counters, int M, int N, int K, int ldy,
                                        int S, int pf) {
    constexpr int WK = 8 / WN;
    constexpr int ROWS = MT * 16;
    constexpr int OC = (MODE == SK_SILU) ? 16 : 32;  // output columns per warp
    __shared__ float red[(WK / 2) * WN * ROWS * SK_PAD];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int wn = warp % WN, kw = warp / WN;
    const int Nout = (MODE == SK_SILU) ? N / 2 : N;
    const int tile = blockIdx.x, split = blockIdx.y;
    const int o0 = (tile * WN + wn) * OC;

    // This lane's four W rows (one per n8 tile).
    const __nv_bfloat16* wrow[4];
    bool wok[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int r = sk_row<MODE>(o0, j, g, Nout, wok[j]);
        wrow[j] = w + (size_t)(wok[j] ? r : 0) * K;
    }
    // This lane's activation rows (g and g + 8 of each 16-row tile).
    const __nv_bfloat16* xrow[MT][2];
    bool xok[MT][2];
#pragma unroll
    for (int i = 0; i < MT; i++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int m = 16 * i + 8 * h + g;
            xok[i][h] = m < M;
            xrow[i][h] = x + (size_t)(xok[i][h] ? m : 0) * K;
        }
    }

    float acc[MT][4][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    const int steps = (K + 31) / 32;
    const int per = (steps + S - 1) / S;
    const int sb = split * per;
    const int se = min(steps, sb + per);
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    // Programmatic dependent launch: with pf set (the whole weight fits in half the L2), the first
    // k-warp of each warp column asks for its 32 W rows' share of this split in L2 (weights depend
    // on nothing), then every thread waits for the previous kernel before touching x, y, part or
    // counters.
    if (pf && kw == 0) {
        const int c = (MODE == SK_SILU) ? (lane & 15) : lane;
        const int row = (MODE == SK_SILU && lane >= 16 ? Nout : 0) + o0 + c;
        const int k0 = sb * 32, k1 = min(K, se * 32);
        if (o0 + c < Nout && k1 > k0) prefetch_l2(w + (size_t)row * K + k0, (unsigned int)(k1 - k0) * 2u);
    }
    pdl_enter();
    // A round covers U of this warp's k-steps: all U steps' weights are requested first (4U
    // 16-byte loads in flight per lane), then the activations step by step, each step's loads
    // issued before the previous step's mmas so one L2 latency overlaps the tensor-core work.
    constexpr int U = MT <= 2 ? 4 : 2;
    auto load_x = [&](uint4 (&xv)[MT][2], int st) {
        const int k = st * 32 + 8 * t;
        const bool kok = st < se && k < K;
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                xv[i][h] = (kok && xok[i][h]) ? __ldg(reinterpret_cast<const uint4*>(xrow[i][h] + k)) : zero;
    };
    for (int s = sb + kw; s < se; s += U * WK) {
        uint4 wv[U][4];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int k = (s + u * WK) * 32 + 8 * t;
            const bool kok = (s + u * WK) < se && k < K;
#pragma unroll
            for (int j = 0; j < 4; j++) wv[u][j] = (kok && wok[j]) ? ld_stream(wrow[j] + k) : zero;
        }
        uint4 xv[MT][2];
        load_x(xv, s);
#pragma unroll
        for (int u = 0; u < U; u++) {
            uint4 xn[MT][2];
            if (u + 1 < U) load_x(xn, s + (u + 1) * WK);
#pragma unroll
            for (int i = 0; i < MT; i++) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    mma16816(acc[i][j], xv[i][0].x, xv[i][1].x, xv[i][0].y, xv[i][1].y, wv[u][j].x, wv[u][j].y);
                    mma16816(acc[i][j], xv[i][0].z, xv[i][1].z, xv[i][0].w, xv[i][1].w, wv[u][j].z, wv[u][j].w);
                }
            }
            if (u + 1 < U) {
#pragma unroll
                for (int i = 0; i < MT; i++) {
                    xv[i][0] = xn[i][0];
                    xv[i][1] = xn[i][1];
                }
            }
        }
    }

    // Sum the WK k-warps' tiles: the upper half stores, the lower half adds its own and stores
    // back, then every thread sums the WK/2 slots in order.
    auto slot = [&](int j2, int wn2, int m, int c) -> float& {
        return red[((j2 * WN + wn2) * ROWS + m) * SK_PAD + c];
    };
    if (kw >= WK / 2) {
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float* p = &slot(kw - WK / 2, wn, 16 * i + 8 * h + g, 8 * j + 2 * t);
                    *reinterpret_cast<float2*>(p) = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                }
    }
    __syncthreads();
    if (kw < WK / 2) {
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float* p = &slot(kw, wn, 16 * i + 8 * h + g, 8 * j + 2 * t);
                    float2 o = *reinterpret_cast<float2*>(p);
                    o.x += acc[i][j][2 * h];
                    o.y += acc[i][j][2 * h + 1];
                    *reinterpret_cast<float2*>(p) = o;
                }
    }
    __syncthreads();
    auto cta_sum = [&](int wn2, int m, int c) -> float {
        float v = 0.f;
#pragma unroll
        for (int j2 = 0; j2 < WK / 2; j2++) v += slot(j2, wn2, m, c);
        return v;
    };
    // W row (= raw output column before SILU) of warp-local column c of warp column wn2.
    auto raw_col = [&](int wn2, int c, bool& ok) -> int {
        const int ob = (tile * WN + wn2) * OC;
        if constexpr (MODE == SK_SILU) {
            const int o = ob + (c & 15);
            ok = o < Nout;
            return c < 16 ? o : Nout + o;
        } else {
            const int o = ob + c;
            ok = o < Nout;
            return o;
        }
    };
    auto epilogue = [&](int wn2, int m, int c, float v, float u) {
        const int o = (tile * WN + wn2) * OC + c;
        if (o >= Nout) return;
        __nv_bfloat16* p = y + (size_t)m * ldy + o;
        if constexpr (MODE == SK_PLAIN) {
            *p = __float2bfloat16(v);
        } else if constexpr (MODE == SK_RESADD) {
            *p = __float2bfloat16(bfr(v) + __bfloat162float(*p));
        } else {
            const float gg = bfr(v), uu = bfr(u);
            *p = __float2bfloat16(bfr(gg / (1.f + __expf(-gg))) * uu);
        }
    };
    const int total = WN * M * OC;  // output elements of this CTA
    if (S == 1) {
        for (int e = threadIdx.x; e < total; e += SK_THREADS) {
            const int c = e % OC, m = (e / OC) % M, wn2 = e / (OC * M);
            epilogue(wn2, m, c, cta_sum(wn2, m, c), MODE == SK_SILU ? cta_sum(wn2, m, c + 16) : 0.f);
        }
        return;
    }
    // Split K over CTAs: publish this CTA's partial, the last CTA of the column tile finishes.
    for (int e = threadIdx.x; e < WN * M * 32; e += SK_THREADS) {
        const int c = e % 32, m = (e / 32) % M, wn2 = e / (32 * M);
        bool ok;
        const int col = raw_col(wn2, c, ok);
        if (ok) part[((size_t)split * M + m) * N + col] = cta_sum(wn2, m, c);
    }
    if (!last_of_splits(counters + tile, S)) return;
    // Every thread sums EPT elements over the splits with all their loads issued together (the
    // adds stay in split order): a one-load-at-a-time tail measured ~10 us.
    constexpr int EPT = 4, MAXS = 8;
    for (int e0 = threadIdx.x; e0 < total; e0 += EPT * SK_THREADS) {
        float v[EPT], u[EPT];
        int col[EPT], mm[EPT], cc[EPT], ww[EPT];
        bool ok[EPT];
#pragma unroll
        for (int q = 0; q < EPT; q++) {
            const int e = e0 + q * SK_THREADS;
            cc[q] = e % OC;
            mm[q] = (e / OC) % M;
            ww[q] = e / (OC * M);
            col[q] = raw_col(ww[q], cc[q], ok[q]);
            ok[q] = ok[q] && e < total;
            v[q] = 0.f;
            u[q] = 0.f;
        }
#pragma unroll
        for (int s2 = 0; s2 < MAXS; s2++) {
#pragma unroll
            for (int q = 0; q < EPT; q++) {
                if (s2 < S && ok[q]) {
                    const float* row = part + ((size_t)s2 * M + mm[q]) * N;
                    v[q] += __ldcg(row + col[q]);
                    if constexpr (MODE == SK_SILU) u[q] += __ldcg(row + col[q] + Nout);
                }
            }
        }
#pragma unroll
        for (int q = 0; q < EPT; q++)
            if (ok[q]) epilogue(ww[q], mm[q], cc[q], v[q], u[q]);
    }
    if (threadIdx.x == 0) counters[tile] = 0u;
}

// y: [M, ldy] bf16; x: [M, K] bf16; w: [N, K] bf16 (SILU: [gate; up], N = 2I, y is [M, I]);
// part: f32 [S, M, N] (S > 1 only); counters: one per column tile, zero before the first launch;
// pf: nonzero to prefetch the CTA's W slab into L2 before the PDL wait.
// Grid (ceil(Nout / (OC * WN)), S), block 256. K % 8 == 0, M <= 16 * MT.
#define SK_ENTRY(NAME, MT, WN, MODE)                                                                 \
    extern "C" __global__ void __launch_bounds__(SK_THREADS, 1)                                      \
        NAME(__nv_bfloat16* y, const __nv_bfloat16* x, const __nv_bfloat16* w, float* part,         \
             unsigned int* counters, int M, int N, int K, int ldy, int S, int pf) {                  \
        sk_body<MT, WN, MODE>(y, x, w, part, counters, M, N, K, ldy, S, pf);                         \
    }
#define SK_MODES(MT, WN)                                                  \
    SK_ENTRY(gemm_skinny_plain_m##MT##_w##WN, MT, WN, SK_PLAIN)           \
    SK_ENTRY(gemm_skinny_resadd_m##MT##_w##WN, MT, WN, SK_RESADD)         \
    SK_ENTRY(gemm_skinny_silu_m##MT##_w##WN, MT, WN, SK_SILU)
#define SK_WN(MT) SK_MODES(MT, 1) SK_MODES(MT, 2) SK_MODES(MT, 4)

SK_WN(1)
SK_WN(2)
SK_WN(3)
SK_WN(4)
