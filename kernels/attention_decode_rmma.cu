// Decode attention on tensor cores fed from registers (docs/cuda.md, "Decode attention"): the V3 kernels' split plan,
// arguments, folded q/k pass and outputs (attention_decode.cu), with each warp's 8-key tiles
// loaded straight from global memory into mma fragments, with no shared-memory staging.
//
// The V3 kernels spend ~55 issued instructions per key on CUDA-core dot products, shuffles and
// the softmax; the shared-memory tensor-core kernel (attention_decode_mma.cu) needs 109 KB per
// block, so at 16-64 rows too few warps are in flight. Here a warp's 8-key tile is:
//   S = Q K^T      (m16n8k16 over D / 16 k-chunks; A = the group's q heads as rows, the rest
//                   zero; B = K)
//   O^T += V^T P^T (m16n8k8 over D / 16 m-tiles; A = V^T; B = P^T straight from S's
//                   accumulators)
// Both products run over permuted dims, which the sums do not see. Lane (r = lane / 4,
// j = lane % 4):
//   - K: key r of the tile, dims 32 qi + 8 j + [0, 8) for qi < D / 32 (16-byte loads; each
//     4-lane group reads 64 contiguous bytes of its key); words 2c and 2c + 1 of those are B's
//     registers for k-chunk c. Q is read in the same layout (rows r < G; zero above).
//   - V: keys 2j and 2j + 1 of the tile, dims 64 qi + 8 r + [0, 8) for qi < D / 64 (each 8-lane
//     group reads 128 contiguous bytes); word t holds dims d(t), d(t) + 1 = rows r, r + 8 of
//     m-tile t, and one byte_perm interleaves the two keys' words into an A register.
//   - S's accumulators c0, c1 hold P[head r][keys 2j, 2j + 1]: exactly B's register of the
//     P V product for head column r. The output holds O[heads 2j, 2j + 1][d(t), d(t) + 1].
// ~4M instructions at batch 64 (Qwen3-0.6B shape) against V3's 8.2M, but no faster there: ncu
// shows both stalled on their loads at ~1.7 TB/s (docs/cuda.md, "Decode attention"). The 16-key tile
// (m16n8k16 for P V: more bytes in flight) spilled at 128 registers and was slower; so was
// requesting the next tile before this one's math.
#include <cuda_bf16.h>

#define RM_WARPS 4
#define RM_MG 8  // the largest GQA group; sizes the shared merge arrays
#define RM_TK 8  // keys per warp tile

template <int D>
__device__ void decode_rmma_impl(DECODE_IMPL_PARAMS) {
    constexpr int NWM = RM_WARPS, MG = RM_MG, TK = RM_TK;
    constexpr int KQ = D / 32;    // 16-byte K loads per lane and tile
    constexpr int VQ = D / 64;    // 16-byte V loads per lane and key
    constexpr int MT = D / 16;    // k-chunks of S = m-tiles of O^T
    constexpr int TPR = 32 / TK;  // tiles whose slots one table read covers
    __shared__ float sm_m[NWM][MG], sm_l[NWM][MG];
    __shared__ float sm_o[NWM][MG][D];
    __shared__ __align__(16) __nv_bfloat16 sm_q[MG][D];
    // The q/k pass's copy of the newest key (this kernel reads that key from the cache).
    __shared__ __align__(16) __nv_bfloat16 sm_kv[2][D];

    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, splits = gridDim.x;
    const int G = nq / nk;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = lane >> 2, j = lane & 3;
    const int kvl = kv_len[b];
    // As V3: at least min_keys keys per split, so a short sequence leaves launched splits empty.
    const int chunk = max(min_keys, (kvl + splits - 1) / splits);
    const int k_begin = split * chunk, k_end = min(kvl, k_begin + chunk);
    const unsigned int* trow = table + (size_t)row[b] * table_stride;
    const float sl2 = scale * 1.4426950408889634f;
    const bool post_on = (post.flags & DECODE_POST) != 0;
    const int t = q_tok[b];
    const int fresh = post_on && k_begin < k_end && k_end == kvl ? kvl - 1 : -1;
    const int pos_t = post_on ? post.positions[t] : 0;
    const unsigned int new_slot = fresh >= 0 ? post.slots[t] : 0u;
    const size_t kvw = (size_t)nk * D;

    decode_prefetch_kv<D>(k_cache, v_cache, trow, k_begin, k_end, kvh, nk, post.pf_keys);
    // This warp's tiles: the i-th starts at key k_begin + (warp + 4 i) * TK. The slots of TPR
    // tiles come in one table read (lane l: tile g * TPR + l / TK, key l % TK), the next group's
    // read while the current one's are in use.
    const int span = k_end - k_begin - warp * TK;
    const int ntw = span > 0 ? (span + NWM * TK - 1) / (NWM * TK) : 0;
    auto slots_of = [&](int g) -> unsigned int {
        const int i = g * TPR + lane / TK;
        const int key = k_begin + (warp + NWM * i) * TK + lane % TK;
        return i < ntw && key < k_end ? trow[key] : 0u;
    };
    unsigned int sg_cur = slots_of(0), sg_next = slots_of(1);
    const __nv_bfloat16* kb = k_cache + kvh * D + 8 * j;
    const __nv_bfloat16* vb = v_cache + kvh * D + 8 * r;
    // Tile i's K row (key r) and V rows (keys 2j, 2j + 1); zeros past the range. Every key
    // through L2 (each is read once per block, so L1 would only add a hop).
    uint4 kr[KQ], vr[2][VQ];
    auto load_tile = [&](int i) {
        const int n0 = k_begin + (warp + NWM * i) * TK, sl0 = (i % TPR) * TK;
        {
            const __nv_bfloat16* p = kb + (size_t)__shfl_sync(0xffffffffu, sg_cur, sl0 + r) * kvw;
            const bool ok = n0 + r < k_end;
#pragma unroll
            for (int qi = 0; qi < KQ; qi++)
                kr[qi] = ok ? __ldcg(reinterpret_cast<const uint4*>(p + 32 * qi)) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int v = 0; v < 2; v++) {
            const int kk = 2 * j + v;
            const __nv_bfloat16* p = vb + (size_t)__shfl_sync(0xffffffffu, sg_cur, sl0 + kk) * kvw;
            const bool ok = n0 + kk < k_end;
#pragma unroll
            for (int qi = 0; qi < VQ; qi++)
                vr[v][qi] = ok ? __ldcg(reinterpret_cast<const uint4*>(p + 64 * qi)) : make_uint4(0u, 0u, 0u, 0u);
        }
    };
    if ((post.flags & DECODE_PF_NEXT_EARLY) != 0) decode_prefetch_next(post);
    pdl_enter();
    // DECODE_KV_BEFORE_QK: tile 0 is requested after the wait (the previous kernel's newest
    // key is visible) but before the q/k pass, so it arrives while the pass runs. The key this
    // block's pass writes (fresh) is read again after the barrier below.
    const bool tile0_early = (post.flags & DECODE_KV_BEFORE_QK) != 0 && ntw > 0;
    if (tile0_early) load_tile(0);

    if (post_on) {
        decode_qk_pass<D, NWM>(post, q, k_cache, v_cache, t, q_stride, kvh, G, nq, nk, fresh >= 0,
                               new_slot, pos_t, &sm_q[0][0], D, &sm_kv[0][0]);
    } else {
        // q comes from the previous kernel: through L2.
        for (int i = threadIdx.x; i < G * (D / 8); i += blockDim.x) {
            const int g = i / (D / 8), c = i % (D / 8);
            *reinterpret_cast<uint4*>(&sm_q[g][c * 8]) = __ldcg(reinterpret_cast<const uint4*>(
                q + (size_t)t * q_stride + (size_t)(kvh * G + g) * D + c * 8));
        }
    }
    __syncthreads();

    // Q in K's layout (A of S: rows r < G, the rest zero), read from shared memory per k-chunk.
    const __nv_bfloat16* q_lane = &sm_q[r < G ? r : 0][8 * j];
    const unsigned q_on = r < G ? 0xffffffffu : 0u;
    // The newest key is read from the cache too: the previous kernel wrote it (visible after the
    // wait), or this block's q/k pass did (visible after the barrier above).
    float o[MT][4];
#pragma unroll
    for (int i = 0; i < MT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float mrow = -INFINITY, lrow = 0.f;

    for (int i = 0; i < ntw; i++) {
        // Tiles go in order, so the slot groups advance here.
        if (i > 0 && i % TPR == 0) {
            sg_cur = sg_next;
            sg_next = slots_of(i / TPR + 1);
        }
        const int n0 = k_begin + (warp + NWM * i) * TK;
        if (i > 0 || !tile0_early) {
            load_tile(i);
        } else if (fresh >= n0 && fresh < n0 + TK) {
            // Tile 0 holds the key the q/k pass wrote after it was requested: read it again.
            if (n0 + r == fresh) {
                const __nv_bfloat16* p = kb + (size_t)new_slot * kvw;
#pragma unroll
                for (int qi = 0; qi < KQ; qi++) kr[qi] = __ldcg(reinterpret_cast<const uint4*>(p + 32 * qi));
            }
#pragma unroll
            for (int v = 0; v < 2; v++) {
                if (n0 + 2 * j + v != fresh) continue;
                const __nv_bfloat16* p = vb + (size_t)new_slot * kvw;
#pragma unroll
                for (int qi = 0; qi < VQ; qi++) vr[v][qi] = __ldcg(reinterpret_cast<const uint4*>(p + 64 * qi));
            }
        }

        // S = Q K^T: s[0..1] = scores of head r for keys 2j, 2j + 1 (s[2..3]: the zero rows).
        float s[4] = {0.f, 0.f, 0.f, 0.f};
        const unsigned* kw = reinterpret_cast<const unsigned*>(&kr[0]);
#pragma unroll
        for (int c = 0; c < MT; c++) {
            const uint2 qw = *reinterpret_cast<const uint2*>(q_lane + 32 * (c >> 1) + 4 * (c & 1));
            const unsigned a[4] = {qw.x & q_on, 0u, qw.y & q_on, 0u};
            mma_bf16(s, a, kw[2 * c], kw[2 * c + 1]);
        }
        // The online softmax of head r over the tile (its scores sit in lanes 4r..4r+3).
        float mx = mrow;
#pragma unroll
        for (int e = 0; e < 2; e++) {
            s[e] = n0 + 2 * j + e < k_end ? s[e] * sl2 : -INFINITY;
            mx = fmaxf(mx, s[e]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // Key n0 is in range, so mx is finite.
        const float alpha = ex2(mrow - mx);
        mrow = mx;
        lrow *= alpha;
#pragma unroll
        for (int e = 0; e < 2; e++) {
            s[e] = ex2(s[e] - mx);
            lrow += s[e];
        }
        // This lane's output columns are heads 2j and 2j + 1: their rescale factors.
        const float a_lo = __shfl_sync(0xffffffffu, alpha, 8 * j);
        const float a_hi = __shfl_sync(0xffffffffu, alpha, 8 * j + 4);
        const unsigned pb = pack_bf16(s[0], s[1]);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const int qi = mt >> 2, e = mt & 3;
            const unsigned w0 = reinterpret_cast<const unsigned*>(&vr[0][qi])[e];
            const unsigned w1 = reinterpret_cast<const unsigned*>(&vr[1][qi])[e];
            const unsigned a[2] = {__byte_perm(w0, w1, 0x5410), __byte_perm(w0, w1, 0x7632)};
            o[mt][0] *= a_lo;
            o[mt][1] *= a_hi;
            o[mt][2] *= a_lo;
            o[mt][3] *= a_hi;
            mma_bf16_k8(o[mt], a, pb);
        }
    }

    if ((post.flags & DECODE_PF_NEXT_EARLY) == 0) decode_prefetch_next(post);
    // Each lane summed its own keys: the row's sum over its 4 lanes.
    lrow += __shfl_xor_sync(0xffffffffu, lrow, 1);
    lrow += __shfl_xor_sync(0xffffffffu, lrow, 2);
    if (r < G && j == 0) {
        sm_m[warp][r] = mrow;
        sm_l[warp][r] = lrow;
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const int d = (mt >> 2) * 64 + 8 * r + 2 * (mt & 3);
        if (2 * j < G) {
            sm_o[warp][2 * j][d] = o[mt][0];
            sm_o[warp][2 * j][d + 1] = o[mt][2];
        }
        if (2 * j + 1 < G) {
            sm_o[warp][2 * j + 1][d] = o[mt][1];
            sm_o[warp][2 * j + 1][d + 1] = o[mt][3];
        }
    }
    __syncthreads();
    decode_merge_store<D, MG, NWM>(&sm_m[0][0], &sm_l[0][0], &sm_o[0][0][0], part_o, part_ml, out,
                                   counters, t, b, kvh, G, nq, nk, split, splits);
}

// The V3 kernels' entry point and arguments (the host launches either through one wrapper).
DECODE_ENTRY(attention_decode_rmma_d64, 4, decode_rmma_impl<64>)
DECODE_ENTRY(attention_decode_rmma_d128, 4, decode_rmma_impl<128>)
