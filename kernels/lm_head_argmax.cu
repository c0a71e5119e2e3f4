// Greedy decoding's LM head with the argmax folded in: out[m] = argmax_v sum_k x[m, k] W[v, k]
// for M <= 64 rows, W [V, K] bf16 row-major (the LM head or tied embedding), f32 accumulation on
// tensor cores (mma.sync m16n8k16). The [M, V] f32 logits are never written: cuBLAS + the
// multi-block argmax wrote 39 MB and read them back at 64 rows (134 + 19 us on the H100 for
// 311 MB of weights, ~100 us at the bandwidth the LM-head GEMV reaches).
//
// One CTA per SM (persistent) owns an even share of the vocabulary's n8 tiles (8 consecutive W
// rows: 8 K bf16 contiguous bytes). The CTA streams its tiles through a ring of NS shared-memory
// slots with cp.async, every thread copying consecutive 16-byte pieces, so memory sees long
// contiguous reads (run 17: warps streaming 32 rows 64-128 bytes at a time each, from registers
// or per-warp rings, read the weights at only 2.1-2.7 TB/s). The 8 warps split K: warp w holds
// its K/8 slice of every x row as mma A fragments in registers for the whole kernel (MT K / 32
// registers: width 1024 at up to 64 rows, 2048 at up to 32) and multiplies it with the matching
// slice of the tile (k is permuted identically in both operands, as in gemm_skinny.cu: lane
// (g, t) takes the 16 bytes at k0 + 8t of row g, the first 4 values feeding one mma and the last
// 4 the next). The 8 partial [rows x 8] tiles are summed through shared memory in warp order
// (one barrier per tile, partials double-buffered), each thread folding its (row, column)
// outputs into a running (value, index). (Run 17 also tried warps owning one 16-row tile and a
// quarter or half of K, which reads each B fragment 2-4 times and halves the partials: 169 us
// against 141 at 64 rows.)
// The CTA's candidates, then every CTA's (scratch), are reduced with `better` (ties to the lower
// index: a total order, so the order of reduction does not matter); the last CTA to finish
// (counter) writes the token per row and, with last_token, last_token[rows[m]]
// (store_last_token's work), and re-arms the counter (graph-replayable).
//
// NaN logits count as -inf; a row of only -inf/NaN gives token 0 (as argmax_rows_split).

#define LA_THREADS 256
#define LA_WARPS 8
#define LA_MAX_M 64
#define LA_NO_IDX 0x7fffffff

// Byte offset of 16-byte piece c of row r in a tile slot (rows of K bf16): odd rows swap the
// halves of each 128-byte line so the 8 lanes of a quarter-warp (rows g, g + 1; pieces c0 ..
// c0 + 3) hit 8 distinct bank groups.
__device__ __forceinline__ unsigned la_off(int r, int c, int K) {
    return (unsigned)r * (unsigned)K * 2u + (unsigned)((c ^ ((r & 1) << 2)) * 16);
}

// Floats per partial column (the row count plus 4: conflict-free stores from the fragments).
#define LA_RS(ROWS) ((ROWS) + 4)

// MT 16-row tiles of x, KS = K / 256 k-steps of 32 per warp, NS ring slots.
template <int MT, int KS, int NS>
__device__ __forceinline__ void la_body(unsigned int* __restrict__ out, const __nv_bfloat16* __restrict__ x,
                                        const __nv_bfloat16* __restrict__ w, unsigned int* __restrict__ scratch,
                                        int M, int V, unsigned int* __restrict__ last_token,
                                        const unsigned int* __restrict__ rows) {
    constexpr int ROWS = MT * 16, K = KS * 32 * LA_WARPS, SLOT = 8 * K * 2, RS = LA_RS(ROWS);
    constexpr int OUTS = ROWS * 8, PER = (OUTS + LA_THREADS - 1) / LA_THREADS;
    constexpr int KP = K / 8 / LA_WARPS;  // 16-byte pieces of a row per warp
    constexpr int PART = LA_WARPS * 8 * RS;  // floats of one partial buffer
    // [ring: NS slots of one tile][partials: 2 x 8 warps x 8 columns x RS floats]
    extern __shared__ __align__(16) unsigned char la_smem[];
    float* part = reinterpret_cast<float*>(la_smem + NS * SLOT);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    // This CTA's n8 tiles [ta, tb).
    const long long tiles = (V + 7) / 8;
    const int ta = (int)(tiles * blockIdx.x / gridDim.x), tb = (int)(tiles * (blockIdx.x + 1) / gridDim.x);
    const int n = tb - ta;

    // Tile st of this CTA into ring slot `slot`; one commit group per call (empty past the end)
    // so the waits count uniformly. Rows past V are zero-filled.
    auto issue = [&](int st, int slot) {
        if (st < n) {
            const int row0 = 8 * (ta + st);
            const __nv_bfloat16* src = w + (size_t)row0 * K;
            unsigned char* dst = la_smem + slot * SLOT;
#pragma unroll
            for (int q = 0; q < K / LA_THREADS; q++) {
                const int e = threadIdx.x + q * LA_THREADS;  // 16-byte piece of the tile
                const int r = e / (K / 8), c = e % (K / 8);
                const bool ok = row0 + r < V;
                cp_async16(smem_addr(dst + la_off(r, c, K)), ok ? src + (size_t)e * 8 : w, ok ? 16 : 0);
            }
        }
        cp_commit();
    };
    // The weights depend on no earlier kernel: the first NS - 1 tiles are requested before the
    // wait.
#pragma unroll
    for (int st = 0; st < NS - 1; st++) issue(st, st);
    pdl_enter();

    // This warp's K slice of the x rows (rows >= M zero) as A fragments: piece (w KP + 4s + t)
    // of rows 16i + g and 16i + 8 + g.
    uint4 xa[MT][KS][2];
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int s = 0; s < KS; s++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = 16 * i + 8 * h + g;
                const int c = warp * KP + 4 * s + t;
                xa[i][s][h] = m < M ? __ldg(reinterpret_cast<const uint4*>(x + (size_t)m * K) + c) : zero;
            }

    // Output q of this thread: o = tid + 256 q, row o % ROWS, column slot o / ROWS of each tile.
    ArgMax best[PER];
#pragma unroll
    for (int q = 0; q < PER; q++) best[q] = ArgMax{-INFINITY, LA_NO_IDX};
    // Sum tile st's 8 partials (buffer st & 1) in warp order into the running candidates.
    auto fold = [&](int st) {
        const float* pb = part + (st & 1) * PART;
#pragma unroll
        for (int q = 0; q < PER; q++) {
            const int o = threadIdx.x + q * LA_THREADS;
            if (o < OUTS) {
                const int m = o % ROWS, cs = o / ROWS;
                float v = 0.f;
#pragma unroll
                for (int wi = 0; wi < LA_WARPS; wi++) v += pb[(wi * 8 + cs) * RS + m];
                const int col = 8 * (ta + st) + cs;
                if (v != v) v = -INFINITY;
                if (col < V && m < M) best[q] = better(best[q], ArgMax{v, col});
            }
        }
    };

    int rd = 0;  // ring slot of tile st, kept without a modulo
    for (int st = 0; st < n; st++) {
        // Tile st has landed (for every thread's copies, after the barrier); every warp is done
        // with tile st - 1's slot (refilled below) and partial buffer (st - 1) & 1's readers
        // with tile st - 2's.
        cp_wait<NS - 2>();
        __syncthreads();
        if (st > 0) fold(st - 1);
        issue(st + NS - 1, rd == 0 ? NS - 1 : rd - 1);  // into tile st - 1's slot
        const unsigned char* slot = la_smem + rd * SLOT;
        rd = rd + 1 == NS ? 0 : rd + 1;
        float acc[MT][4];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][e] = 0.f;
#pragma unroll
        for (int s = 0; s < KS; s++) {
            const uint4 b = *reinterpret_cast<const uint4*>(slot + la_off(g, warp * KP + 4 * s + t, K));
#pragma unroll
            for (int i = 0; i < MT; i++) {
                const unsigned a0[4] = {xa[i][s][0].x, xa[i][s][1].x, xa[i][s][0].y, xa[i][s][1].y};
                const unsigned a1[4] = {xa[i][s][0].z, xa[i][s][1].z, xa[i][s][0].w, xa[i][s][1].w};
                mma_bf16(acc[i], a0, b.x, b.y);
                mma_bf16(acc[i], a1, b.z, b.w);
            }
        }
        // This warp's partial: column 2t + (e & 1), row 16i + g + 8 (e >> 1).
        float* pb = part + (st & 1) * PART + warp * 8 * RS;
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) pb[(2 * t + (e & 1)) * RS + 16 * i + g + 8 * (e >> 1)] = acc[i][e];
    }
    cp_wait<0>();
    __syncthreads();
    if (n > 0) fold(n - 1);

    // The CTA's candidate per row over the 8 column slots (through the ring's space), then its
    // entry in scratch [1 + 2 (cta * 64 + m)] (value bits, index).
    ArgMax* cand = reinterpret_cast<ArgMax*>(la_smem);  // [8 column slots][ROWS]
    __syncthreads();
#pragma unroll
    for (int q = 0; q < PER; q++) {
        const int o = threadIdx.x + q * LA_THREADS;
        if (o < OUTS) cand[(o / ROWS) * ROWS + o % ROWS] = best[q];
    }
    __syncthreads();
    if (threadIdx.x < M) {
        ArgMax a = cand[threadIdx.x];
#pragma unroll
        for (int cs = 1; cs < 8; cs++) a = better(a, cand[cs * ROWS + threadIdx.x]);
        unsigned int* p = scratch + 1 + 2 * ((size_t)blockIdx.x * LA_MAX_M + threadIdx.x);
        p[0] = __float_as_uint(a.v);
        p[1] = (unsigned int)a.i;
    }
    if (!last_of_splits(scratch, gridDim.x)) return;
    // The last CTA: warp w reduces rows w, w + 8, ... over every CTA's candidate.
    for (int m = warp; m < M; m += LA_WARPS) {
        ArgMax a = {-INFINITY, LA_NO_IDX};
        for (int b = lane; b < (int)gridDim.x; b += 32) {
            const unsigned int* p = scratch + 1 + 2 * ((size_t)b * LA_MAX_M + m);
            a = better(a, ArgMax{__uint_as_float(__ldcg(p)), (int)__ldcg(p + 1)});
        }
        a = warp_argmax(a);
        if (lane == 0) {
            const unsigned int tok = a.i == LA_NO_IDX ? 0u : (unsigned int)a.i;
            out[m] = tok;
            if (last_token != nullptr) last_token[rows[m]] = tok;
        }
    }
    if (threadIdx.x == 0) scratch[0] = 0u;
}

// out: [M] u32; x: [M, K] bf16; w: [V, K] bf16; scratch: 1 + 2 * 64 * gridDim.x u32s, the first
// (the counter) zero before the first launch; last_token/rows: null or the store's targets.
// Dynamic shared memory NS * 16 K + 2 * 8 * 8 * (16 MT + 4) * 4 bytes (exec/src/cuda/lm_argmax.rs,
// lm_argmax_smem). Grid (CTAs <= the scratch's), block 256. 1 <= M <= 16 MT.
#define LA_ENTRY(MT, K, NS)                                                                                \
    extern "C" __global__ void __launch_bounds__(LA_THREADS, 1)                                            \
        lm_head_argmax_m##MT##_k##K(unsigned int* out, const __nv_bfloat16* x, const __nv_bfloat16* w,     \
                                    unsigned int* scratch, int M, int V, unsigned int* last_token,         \
                                    const unsigned int* rows) {                                            \
        la_body<MT, K / 256, NS>(out, x, w, scratch, M, V, last_token, rows);                              \
    }

// Slots: 16 KB tiles at width 1024, 32 KB at 2048, as many as fit 227 KB beside the partials.
LA_ENTRY(1, 1024, 12)
LA_ENTRY(2, 1024, 12)
LA_ENTRY(3, 1024, 12)
LA_ENTRY(4, 1024, 12)
LA_ENTRY(1, 2048, 6)
LA_ENTRY(2, 2048, 6)
