// Prefill / extend attention, GQA-packed (docs/cuda.md, "Prefill attention"): mma.sync m16n8k16,
// online softmax in exp2 units.
#include <cuda_bf16.h>

#define BM 64

// ---------------------------------------------------------------------------------------------
// A block owns 64 rows of one (entry, kv head), a row being
// one (new token, q head of the group) pair, token-major: row f of an entry is token f / G and q
// head kvh * G + f % G (a token's G heads are adjacent in q and out, so a row group is one
// contiguous read). Every K/V tile the block brings into shared memory therefore serves all the
// q heads that read it, and the tiles are fetched with cp.async into a ring of STAGES buffers, so
// the next tiles' loads are in flight during this tile's tensor-core work (the register prefetch
// of an earlier version cost 230 registers; cp.async costs none). Per warp, key tiles wholly after the warp's
// last query are skipped, and only the diagonal tile computes the causal mask.
// Tile list (host): tile i is rows [tile_f0[i], +64) of entry tile_entry[i]; entries with the
// heaviest tile (most keys) first, each entry's tiles heaviest first, so long blocks do not form
// the tail and an entry's blocks run close together (its K/V stays in L2). Grid num_tiles * nk,
// block 128, dynamic shared memory (64 + 2 * STAGES * BN) * (D + 8) * 2 bytes.
// ---------------------------------------------------------------------------------------------

// Qwen3's q RMSNorm (when w is given) and NeoX RoPE on one Q row in shared memory, with the
// roundings of qk_norm_rope_store (bf16 after the norm, bf16 after the rotation). Two threads
// per row (partner = lane ^ 1); thread `half` owns the rotation pairs (i, i + D/2) for i in
// [half * D/4, (half + 1) * D/4). c/sn: this thread's cos and sin values, loaded into registers
// at block start so their latency overlaps the Q load.
template <int D>
__device__ __forceinline__ void q_norm_rope_row(__nv_bfloat16* rowp, int half, bool valid,
                                                const __nv_bfloat16* __restrict__ w,
                                                const float (&c)[D / 4], const float (&sn)[D / 4],
                                                float eps) {
    constexpr int HALF = D / 2, PAIRS = D / 4;
    const int i0 = half * PAIRS;
    float ss = 0.f;
    if (valid) {
#pragma unroll
        for (int i = 0; i < PAIRS; i += 8) {
            uint4 ua = *reinterpret_cast<const uint4*>(rowp + i0 + i);
            uint4 ub = *reinterpret_cast<const uint4*>(rowp + HALF + i0 + i);
            const __nv_bfloat16* a = reinterpret_cast<const __nv_bfloat16*>(&ua);
            const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&ub);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float x = __bfloat162float(a[j]), y = __bfloat162float(b[j]);
                ss += x * x + y * y;
            }
        }
    }
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    if (!valid) return;
    const float inv = rsqrtf(ss / D + eps);
#pragma unroll
    for (int i = 0; i < PAIRS; i += 8) {
        uint4 ua = *reinterpret_cast<const uint4*>(rowp + i0 + i);
        uint4 ub = *reinterpret_cast<const uint4*>(rowp + HALF + i0 + i);
        __nv_bfloat16* a = reinterpret_cast<__nv_bfloat16*>(&ua);
        __nv_bfloat16* b = reinterpret_cast<__nv_bfloat16*>(&ub);
        uint4 uwa = make_uint4(0, 0, 0, 0), uwb = make_uint4(0, 0, 0, 0);
        if (w != nullptr) {
            uwa = *reinterpret_cast<const uint4*>(w + i0 + i);
            uwb = *reinterpret_cast<const uint4*>(w + HALF + i0 + i);
        }
        const __nv_bfloat16* wa = reinterpret_cast<const __nv_bfloat16*>(&uwa);
        const __nv_bfloat16* wb = reinterpret_cast<const __nv_bfloat16*>(&uwb);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float x = __bfloat162float(a[j]), y = __bfloat162float(b[j]);
            if (w != nullptr) {
                x = __bfloat162float(__float2bfloat16(x * inv * __bfloat162float(wa[j])));
                y = __bfloat162float(__float2bfloat16(y * inv * __bfloat162float(wb[j])));
            }
            a[j] = __float2bfloat16(x * c[i + j] - y * sn[i + j]);
            b[j] = __float2bfloat16(y * c[i + j] + x * sn[i + j]);
        }
        *reinterpret_cast<uint4*>(rowp + i0 + i) = ua;
        *reinterpret_cast<uint4*>(rowp + HALF + i0 + i) = ub;
    }
}

// QREG: Q fragments held in registers for the whole key loop (32 registers at D=128) rather
// than re-read from shared memory with ldmatrix for every key tile.
// KVH_FAST: block x is (tile, kv head) with the kv head fastest, so the nk blocks of a tile run
// together and read whole q rows and whole K/V cache slots between them (DRAM locality);
// otherwise tile fastest (measured slower).
// q_rope: q in qkv is raw (before q norm and RoPE): apply them while loading (the fused
// qk_norm_rope_store then only handles k and v).
template <int D, int BN, int STAGES, bool QREG, bool KVH_FAST>
__device__ void attention_extend_gqa_impl(__nv_bfloat16* __restrict__ out,
                                          const __nv_bfloat16* __restrict__ q,
                                          const __nv_bfloat16* __restrict__ k_cache,
                                          const __nv_bfloat16* __restrict__ v_cache,
                                          const unsigned int* __restrict__ table,
                                          const int* __restrict__ tile_entry,
                                          const int* __restrict__ tile_f0,
                                          const int* __restrict__ q_start,
                                          const int* __restrict__ q_len,
                                          const int* __restrict__ kv_len,
                                          const int* __restrict__ row, int nq, int nk,
                                          int q_stride, int table_stride, float scale,
                                          int q_rope, const __nv_bfloat16* __restrict__ q_norm_w,
                                          const int* __restrict__ positions,
                                          const float* __restrict__ cos_sin, float eps) {
    constexpr int CH = D / 8;              // 16-byte chunks per row
    constexpr int ROWB = (D + 8) * 2;      // padded smem row: conflict-free ldmatrix
    constexpr int TPR = 128 / BN;          // threads per K/V row
    constexpr int CPT = CH / TPR;          // chunks per thread per K/V row
    static_assert(CPT >= 1, "tile too large for the block");
    extern __shared__ __align__(16) unsigned char smem[];
    const unsigned s_q = (unsigned)__cvta_generic_to_shared(smem);
    const unsigned s_k = s_q + BM * ROWB;
    const unsigned s_v = s_k + STAGES * BN * ROWB;

    const int ntile_all = gridDim.x / nk;
    const int tile = KVH_FAST ? blockIdx.x / nk : blockIdx.x % ntile_all;
    const int kvh = KVH_FAST ? blockIdx.x % nk : blockIdx.x / ntile_all;
    const int b = tile_entry[tile], f0 = tile_f0[tile];
    const int G = nq / nk;
    const int qs = q_start[b], ql = q_len[b], kvl = kv_len[b];
    const int prefix = kvl - ql;
    const int rows_valid = ql * G - f0;  // rows of the entry from f0 on (may exceed BM)
    const int kv_end = prefix + (f0 + min(BM, rows_valid) - 1) / G + 1;  // causal bound
    const int ntiles = (kv_end + BN - 1) / BN;
    const unsigned int* trow = table + (size_t)row[b] * table_stride;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tig = lane & 3;
    const size_t slot_elems = (size_t)nk * D;

    // q norm + RoPE: this thread's row's cos/sin values, requested before anything else.
    constexpr int PAIRS = D / 4;
    float rc[PAIRS], rs[PAIRS];
    const bool rope_row = q_rope && (tid >> 1) < rows_valid;
    if (rope_row) {
        const int f = f0 + (tid >> 1);
        const float* cs = cos_sin + (size_t)positions[qs + f / G] * D + (tid & 1) * PAIRS;
#pragma unroll
        for (int i = 0; i < PAIRS; i += 4) {
            const float4 c4 = *reinterpret_cast<const float4*>(cs + i);
            const float4 s4 = *reinterpret_cast<const float4*>(cs + D / 2 + i);
            rc[i] = c4.x, rc[i + 1] = c4.y, rc[i + 2] = c4.z, rc[i + 3] = c4.w;
            rs[i] = s4.x, rs[i + 1] = s4.y, rs[i + 2] = s4.z, rs[i + 3] = s4.w;
        }
    }

    // Q rows: thread -> row tid / 2, chunks (tid & 1) + 2j. Its own cp.async group.
    {
        const int r = tid >> 1, f = f0 + r;
        const bool ok = r < rows_valid;
        const __nv_bfloat16* src =
            ok ? q + (size_t)(qs + f / G) * q_stride + (size_t)(kvh * G + f % G) * D : q;
#pragma unroll
        for (int j = 0; j < CH / 2; j++) {
            const int c = (tid & 1) + 2 * j;
            cp_async16(s_q + r * ROWB + c * 16, src + c * 8, ok ? 16 : 0);
        }
        cp_commit();
    }

    // K/V rows: thread -> row tid / TPR of the tile, chunks tid % TPR + TPR * j: one slot per
    // thread per tile, read one tile ahead so the table load's latency is hidden too.
    const int kr = tid / TPR, kc0 = tid % TPR;
    auto slot_of = [&](int t) -> long long {
        const int key = t * BN + kr;
        return key < kv_end ? (long long)trow[key] : -1ll;
    };
    auto issue = [&](int t, long long slot) {
        const int st = t % STAGES;
        const unsigned dk = s_k + (st * BN + kr) * ROWB, dv = s_v + (st * BN + kr) * ROWB;
        const bool ok = slot >= 0;
        const size_t off = ok ? (size_t)slot * slot_elems + (size_t)kvh * D : 0;
#pragma unroll
        for (int j = 0; j < CPT; j++) {
            const int c = kc0 + TPR * j;
            cp_async16(dk + c * 16, k_cache + off + c * 8, ok ? 16 : 0);
            cp_async16(dv + c * 16, v_cache + off + c * 8, ok ? 16 : 0);
        }
    };
    long long slot_next = slot_of(0);
#pragma unroll
    for (int t = 0; t < STAGES - 1; t++) {
        if (t < ntiles) {
            issue(t, slot_next);
            slot_next = slot_of(t + 1);
        }
        cp_commit();
    }

    if (q_rope) {  // Q landed (the K/V groups after it may still be in flight): transform it
        cp_wait<STAGES - 1>();
        __syncthreads();
        q_norm_rope_row<D>(reinterpret_cast<__nv_bfloat16*>(smem + (tid >> 1) * ROWB), tid & 1,
                           rope_row, q_norm_w, rc, rs, eps);
        // The key loop's first barrier orders these writes before any warp's Q reads.
    }

    // This warp's rows and query positions (padding rows past the entry get positions past
    // its end: they see extra zero keys, and their output is not stored).
    const int wf = f0 + warp * 16;
    const int wmin = prefix + wf / G, wmax = prefix + (wf + 15) / G;
    const int qp0 = prefix + (wf + g) / G, qp1 = prefix + (wf + g + 8) / G;
    const unsigned q_lane = s_q + (warp * 16 + (lane & 15)) * ROWB + (lane >> 4) * 16;

    unsigned qa[QREG ? D / 16 : 1][4];
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
    const float sl2 = scale * 1.4426950408889634f;

    for (int t = 0; t < ntiles; t++) {
        // Refill the buffer tile t - 1 used (every warp left it at the barrier ending t - 1).
        const int tn = t + STAGES - 1;
        if (tn < ntiles) {
            issue(tn, slot_next);
            slot_next = slot_of(tn + 1);
        }
        cp_commit();
        cp_wait<STAGES - 1>();  // tile t (and Q) has landed for this thread
        __syncthreads();              // ... and for every thread
        if constexpr (QREG) {
            if (t == 0) {
#pragma unroll
                for (int ks = 0; ks < D / 16; ks++) ldsm_x4(qa[ks], q_lane + ks * 32);
            }
        }
        const int n0 = t * BN, st = t % STAGES;
        const unsigned sk = s_k + st * BN * ROWB, sv = s_v + st * BN * ROWB;
        if (n0 <= wmax) {
            if (n0 + BN - 1 <= wmin)
                gqa_tile_math<D, BN, QREG, false>(o, mrow, lrow, qa, q_lane, sk, sv, n0, wmax, qp0,
                                                  qp1, sl2, lane);
            else
                gqa_tile_math<D, BN, QREG, true>(o, mrow, lrow, qa, q_lane, sk, sv, n0, wmax, qp0,
                                                 qp1, sl2, lane);
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
        lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
        lrow[r] = lrow[r] > 0.f ? 1.f / lrow[r] : 0.f;
    }
    // Stage O through this warp's own Q rows (only this warp ever reads them), then store
    // whole 16-byte chunks.
    __nv_bfloat16* qw = reinterpret_cast<__nv_bfloat16*>(smem + warp * 16 * ROWB);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        __nv_bfloat16* dst = qw + (g + half * 8) * (ROWB / 2) + tig * 2;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++)
            *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) = __floats2bfloat162_rn(
                o[dt][half * 2] * lrow[half], o[dt][half * 2 + 1] * lrow[half]);
    }
    __syncwarp();
#pragma unroll
    for (int j = 0; j < 16 * CH / 32; j++) {
        const int i = lane + 32 * j, r = i / CH, c = i % CH;
        const int lr = warp * 16 + r;
        if (lr < rows_valid) {
            const int f = f0 + lr;
            __nv_bfloat16* dst =
                out + (size_t)(qs + f / G) * nq * D + (size_t)(kvh * G + f % G) * D + c * 8;
            *reinterpret_cast<uint4*>(dst) =
                *reinterpret_cast<const uint4*>(qw + r * (ROWB / 2) + c * 8);
        }
    }
}

// MINB: blocks per SM the register allocation must allow (__launch_bounds__).
#define ATTN_EXTEND_GQA_ENTRY(NAME, D, BN, STAGES, QREG, KVH_FAST, MINB)                        \
    extern "C" __global__ void __launch_bounds__(128, MINB) NAME(                               \
        __nv_bfloat16* out, const __nv_bfloat16* q, const __nv_bfloat16* k_cache,                \
        const __nv_bfloat16* v_cache, const unsigned int* table, const int* tile_entry,         \
        const int* tile_f0, const int* q_start, const int* q_len, const int* kv_len,            \
        const int* row, int nq, int nk, int q_stride, int table_stride, float scale,            \
        int q_rope, const __nv_bfloat16* q_norm_w, const int* positions, const float* cos_sin,  \
        float eps) {                                                                            \
        pdl_enter();                                                                            \
        attention_extend_gqa_impl<D, BN, STAGES, QREG, KVH_FAST>(                               \
            out, q, k_cache, v_cache, table, tile_entry, tile_f0, q_start, q_len, kv_len, row,  \
            nq, nk, q_stride, table_stride, scale, q_rope, q_norm_w, positions, cos_sin, eps);  \
    }

ATTN_EXTEND_GQA_ENTRY(attention_extend_gqa_d64, 64, 32, 2, true, true, 4)
ATTN_EXTEND_GQA_ENTRY(attention_extend_gqa_d128, 128, 32, 2, true, true, 3)
