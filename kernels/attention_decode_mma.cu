// Decode attention on tensor cores (docs/cuda.md, "Decode attention"): the same split-KV plan, arguments, q/k pass and
// outputs as the V3 kernels (attention_decode.cu), with the math of the GQA extend attention.
//
// The V3 kernels spend ~55 issued instructions per key and head group on CUDA-core dot products,
// shuffles and the softmax (ncu at batch 64: the SMs issue half the time, so the loads' latency
// is poorly hidden). Here the group's q heads are rows of a 16-row mma tile (rows past the group
// are zero), and each warp streams 16-key K/V tiles into its own ring of shared-memory stages
// with cp.async (no registers held by loads in flight) and runs gqa_tile_math (prelude.cuh) on
// them: ~10 instructions per key. Warp w takes the block's 16-key tiles w, w + 4, w + 8, ...
// (neighbouring warps read neighbouring keys); the warps' states merge as in V3.
//
// The newest key (kv_len - 1) is never read from the cache by the ring: with the q/k pass
// folded in this block computes it, else the previous kernel just wrote it, so after the wait it
// is put in shared memory (sm_kv) and patched into its tile. Everything else the ring reads was
// written steps ago, so with DECODE_EARLY_KV the first tiles are requested before the wait.
#include <cuda_bf16.h>

#define MMA_WARPS 4
#define MMA_BN 16  // keys per warp tile (the k extent of the P V mma)

// Dynamic shared memory (host: (16 + 4 * 3 * 2 * 16) * (D + 8) * 2 bytes, S = 3): the Q tile, then per
// warp S stages of a K tile and a V tile; rows padded by 8 elements (conflict-free ldmatrix). The
// end reuses the ring for the warps' softmax states.
template <int D, int MG, int S>
__device__ void decode_mma_impl(DECODE_IMPL_PARAMS) {
    constexpr int BN = MMA_BN, NWM = MMA_WARPS;
    constexpr int ROWB = (D + 8) * 2;
    constexpr int CH = D / 8;  // 16-byte chunks per row
    constexpr int RING = 16 * ROWB;
    static_assert((2 * NWM * MG + NWM * MG * D) * 4 <= NWM * S * 2 * BN * ROWB, "states fit the ring");
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ __align__(16) __nv_bfloat16 sm_kv[2][D];
    const unsigned s_q = smem_addr(smem);
    {
        // The host sizes the ring (decode_mma_smem): fail loudly, not past the end, if it differs.
        unsigned dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (unsigned)(RING + NWM * S * 2 * BN * ROWB)) __trap();
    }

    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, splits = gridDim.x;
    const int G = nq / nk;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvl = kv_len[b];
    // As V3: at least min_keys keys per split, so a short sequence leaves launched splits empty.
    const int chunk = max(min_keys, (kvl + splits - 1) / splits);
    const int k_begin = split * chunk, k_end = min(kvl, k_begin + chunk);
    const unsigned int* trow = table + (size_t)row[b] * table_stride;
    const float sl2 = scale * 1.4426950408889634f;
    const bool post_on = (post.flags & DECODE_POST) != 0;
    const int t = q_tok[b];
    const int fresh = k_begin < k_end && k_end == kvl ? kvl - 1 : -1;
    const int pos_t = post_on ? post.positions[t] : 0;
    const unsigned int new_slot = post_on && fresh >= 0 ? post.slots[t] : 0u;
    const size_t kvw = (size_t)nk * D;

    decode_prefetch_kv<D>(k_cache, v_cache, trow, k_begin, k_end, kvh, nk, post.pf_keys);
    // The Q tile's rows past the group: zero, so their scores stay finite (never stored).
    for (int i = threadIdx.x; i < (16 - G) * CH; i += blockDim.x)
        *reinterpret_cast<uint4*>(smem + (G + i / CH) * ROWB + (i % CH) * 16) = make_uint4(0u, 0u, 0u, 0u);

    // This warp's tiles: the i-th starts at key k_begin + (warp + 4 i) * 16. Lane -> row lane / 2
    // of a tile, 16-byte chunks (lane & 1) + 2j of its K and V rows.
    const int span = k_end - k_begin - warp * BN;
    const int ntw = span > 0 ? (span + NWM * BN - 1) / (NWM * BN) : 0;
    const int kr = lane >> 1, kc0 = lane & 1;
    auto tile_off = [&](int i) { return RING + ((warp * S + i % S) * 2 * BN) * ROWB; };
    auto slot_of = [&](int i) -> long long {
        const int key = k_begin + (warp + NWM * i) * BN + kr;
        return key < k_end && key != kvl - 1 ? (long long)trow[key] : -1ll;
    };
    auto issue = [&](int i, long long slot) {
        const unsigned dk = s_q + tile_off(i) + kr * ROWB, dv = dk + BN * ROWB;
        const bool ok = slot >= 0;  // else zeros: past the range, or the newest key (patched)
        const size_t off = ok ? (size_t)slot * kvw + (size_t)kvh * D : 0;
#pragma unroll
        for (int j = 0; j < CH / 2; j++) {
            const int c = kc0 + 2 * j;
            cp_async16(dk + c * 16, k_cache + off + c * 8, ok ? 16 : 0);
            cp_async16(dv + c * 16, v_cache + off + c * 8, ok ? 16 : 0);
        }
    };
    long long slot_next = ntw > 0 ? slot_of(0) : -1ll;
    // The first S - 1 tiles, one commit group each (empty past the warp's tiles).
    auto first_tiles = [&]() {
#pragma unroll
        for (int i = 0; i < S - 1; i++) {
            if (i < ntw) {
                issue(i, slot_next);
                slot_next = i + 1 < ntw ? slot_of(i + 1) : -1ll;
            }
            cp_commit();
        }
    };
    const bool early = (post.flags & DECODE_EARLY_KV) != 0;
    if (early) first_tiles();
    pdl_enter();

    if (post_on) {
        // The q/k pass: the group's q heads into the Q tile, the newest key's k and v (if this
        // block holds it) into sm_kv and the caches.
        decode_qk_pass<D, NWM>(post, q, k_cache, v_cache, t, q_stride, kvh, G, nq, nk, fresh >= 0,
                               new_slot, pos_t, reinterpret_cast<__nv_bfloat16*>(smem), ROWB / 2,
                               &sm_kv[0][0]);
    } else {
        // q and the newest key's K/V come from the previous kernel: through L2.
        for (int i = threadIdx.x; i < G * CH; i += blockDim.x) {
            const int r = i / CH, c = i % CH;
            *reinterpret_cast<uint4*>(smem + r * ROWB + c * 16) = __ldcg(reinterpret_cast<const uint4*>(
                q + (size_t)t * q_stride + (size_t)(kvh * G + r) * D + c * 8));
        }
        if (fresh >= 0) {
            const size_t off = (size_t)trow[fresh] * kvw + (size_t)kvh * D;
            for (int i = threadIdx.x; i < 2 * CH; i += blockDim.x) {
                const __nv_bfloat16* c = (i < CH ? k_cache : v_cache) + off + (i % CH) * 8;
                *reinterpret_cast<uint4*>(&sm_kv[i / CH][(i % CH) * 8]) =
                    __ldcg(reinterpret_cast<const uint4*>(c));
            }
        }
    }
    if (!early) first_tiles();
    __syncthreads();

    unsigned qa[D / 16][4];
    {
        const unsigned q_lane = s_q + (lane & 15) * ROWB + (lane >> 4) * 16;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) ldsm_x4(qa[ks], q_lane + ks * 32);
    }
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};

    for (int i = 0; i < ntw; i++) {
        const int in = i + S - 1;
        if (in < ntw) {
            issue(in, slot_next);
            slot_next = in + 1 < ntw ? slot_of(in + 1) : -1ll;
        }
        cp_commit();
        cp_wait<S - 1>();  // tile i has landed for this lane ...
        __syncwarp();      // ... and for the whole warp
        const int n0 = k_begin + (warp + NWM * i) * BN;
        const int off = tile_off(i);
        if (fresh >= n0 && fresh < n0 + BN) {
            unsigned char* rk = smem + off + (fresh - n0) * ROWB;
            for (int c = lane; c < 2 * CH; c += 32)
                *reinterpret_cast<uint4*>(rk + (c / CH) * BN * ROWB + (c % CH) * 16) =
                    *reinterpret_cast<const uint4*>(&sm_kv[c / CH][(c % CH) * 8]);
            __syncwarp();
        }
        const unsigned sk = s_q + off, sv = sk + BN * ROWB;
        if (n0 + BN <= k_end)
            gqa_tile_math<D, BN, true, false>(o, mrow, lrow, qa, 0u, sk, sv, n0, 0, 0, 0, sl2, lane);
        else  // the range ends inside this tile: keys past k_end - 1 masked
            gqa_tile_math<D, BN, true, true>(o, mrow, lrow, qa, 0u, sk, sv, n0, k_end - 1, k_end - 1,
                                             k_end - 1, sl2, lane);
        __syncwarp();  // every lane is done with the stage before it is refilled
    }

    // Each lane summed its own columns: the row's sum over its 4 lanes (the max is the row's).
#pragma unroll
    for (int r = 0; r < 2; r++) {
        lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
        lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
    }
    __syncthreads();  // every warp is done with its ring: the states go there
    float* sm_m = reinterpret_cast<float*>(smem + RING);
    float* sm_l = sm_m + NWM * MG;
    float* sm_o = sm_l + NWM * MG;
    const int g = lane >> 2, tig = lane & 3;
    if (g < G) {
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            sm_o[(warp * MG + g) * D + dt * 8 + 2 * tig] = o[dt][0];
            sm_o[(warp * MG + g) * D + dt * 8 + 2 * tig + 1] = o[dt][1];
        }
        if (tig == 0) {
            sm_m[warp * MG + g] = mrow[0];
            sm_l[warp * MG + g] = lrow[0];
        }
    }
    __syncthreads();
    decode_merge_store<D, MG, NWM>(sm_m, sm_l, sm_o, part_o, part_ml, out, counters, t, b, kvh, G,
                                   nq, nk, split, splits);
}

// The V3 kernels' entry point (the host launches either through one wrapper).
#define DECODE_MMA(NAME, D, MG, S, MINB) DECODE_ENTRY(NAME, MINB, decode_mma_impl<D, MG, S>)

// Three stages per warp: 109 KB of shared memory at D = 128 (two blocks per SM), 58 KB at D = 64.
// On the H100 three beat two (74 KB, three blocks per SM) at every batch size measured (H100).
DECODE_MMA(attention_decode_mma_d64_g1, 64, 1, 3, 3)
DECODE_MMA(attention_decode_mma_d64_g2, 64, 2, 3, 3)
DECODE_MMA(attention_decode_mma_d64_g4, 64, 4, 3, 3)
DECODE_MMA(attention_decode_mma_d64_g8, 64, 8, 3, 3)
DECODE_MMA(attention_decode_mma_d128_g1, 128, 1, 3, 2)
DECODE_MMA(attention_decode_mma_d128_g2, 128, 2, 3, 2)
DECODE_MMA(attention_decode_mma_d128_g4, 128, 4, 3, 2)
DECODE_MMA(attention_decode_mma_d128_g8, 128, 8, 3, 2)
