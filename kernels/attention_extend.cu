// Prefill / extend attention over a paged KV cache, flash-attention style on tensor cores.
//
// Each block computes a 64-row tile of queries of one entry for one q head: Q lives in
// registers as mma A-fragments, K/V tiles of 32 keys are gathered from the cache through the
// request's row of the slot table (so a cached prefix that spans arbitrary slots is read the same
// way as the new tokens, whose K/V the kv_store kernel wrote before this kernel runs), S = QK^T and
// O += PV use mma.sync m16n8k16 bf16 -> f32, and the softmax is the online (running max) one.
// Causal within the new tokens: query i of an entry sits at position prefix + i and sees keys
// 0..=prefix+i. GQA: q head h reads kv head h / (nq / nk).
#include <cuda_bf16.h>

#define BM 64

// Tile list (built on the host): tile i covers query rows [tile_m0[i], tile_m0[i] + BM) of entry
// tile_entry[i]. Per entry b: q_start[b] (first token row in q/out), q_len[b] (new tokens),
// kv_len[b] (prefix + new), row[b] (its row of the slot table).
// q: [T, q_stride] (q heads at column h*D); k_cache/v_cache: [slots, nk*D]; out: [T, nq*D].
// Grid (num_tiles, nq), block 128.
// PF: software pipelining — the next K/V tile's global loads are issued into registers right
// after the current tile is stored to shared memory, so their latency overlaps this tile's
// tensor-core work instead of stalling the block at the top of every iteration.
template <int D, int BN, bool LDMATRIX, bool PF>
__device__ void attention_extend_impl(__nv_bfloat16* __restrict__ out,
                                      const __nv_bfloat16* __restrict__ q,
                                      const __nv_bfloat16* __restrict__ k_cache,
                                      const __nv_bfloat16* __restrict__ v_cache,
                                      const unsigned int* __restrict__ table,
                                      const int* __restrict__ tile_entry,
                                      const int* __restrict__ tile_m0,
                                      const int* __restrict__ q_start, const int* __restrict__ q_len,
                                      const int* __restrict__ kv_len, const int* __restrict__ row,
                                      int nq, int nk, int q_stride, int table_stride, float scale) {
    constexpr int LD = D + 8;  // padded row: conflict-free fragment loads and ldmatrix rows
    // Q is staged through the K buffer: once its fragments are in registers the space holds K
    // tiles (the barrier at the top of the key loop separates the two uses).
    constexpr int QK_ROWS = BM > BN ? BM : BN;
    __shared__ __align__(16) __nv_bfloat16 QKs[QK_ROWS][LD];
    __shared__ __align__(16) __nv_bfloat16 Vs[BN][LD];
    auto& Qs = QKs;
    auto& Ks = QKs;

    const int tile = blockIdx.x, qh = blockIdx.y;
    const int b = tile_entry[tile], m0 = tile_m0[tile];
    const int qs = q_start[b], ql = q_len[b], kvl = kv_len[b];
    const int prefix = kvl - ql;
    const int kvh = qh / (nq / nk);
    const unsigned int* trow = table + (size_t)row[b] * table_stride;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tig = lane & 3;
    constexpr int CH = D / 8;  // 16-byte chunks per row

    for (int i = tid; i < BM * CH; i += blockDim.x) {
        int r = i / CH, c = i % CH;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (m0 + r < ql)
            v = *reinterpret_cast<const uint4*>(q + (size_t)(qs + m0 + r) * q_stride + qh * D + c * 8);
        *reinterpret_cast<uint4*>(&Qs[r][c * 8]) = v;
    }
    __syncthreads();

    unsigned qa[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
        int r = warp * 16 + g, c = ks * 16 + tig * 2;
        qa[ks][0] = *reinterpret_cast<const unsigned*>(&Qs[r][c]);
        qa[ks][1] = *reinterpret_cast<const unsigned*>(&Qs[r + 8][c]);
        qa[ks][2] = *reinterpret_cast<const unsigned*>(&Qs[r][c + 8]);
        qa[ks][3] = *reinterpret_cast<const unsigned*>(&Qs[r + 8][c + 8]);
    }

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
    const float sl2 = scale * 1.4426950408889634f;
    // Query positions of this thread's two rows.
    const int qpos0 = prefix + m0 + warp * 16 + g, qpos1 = qpos0 + 8;
    const int kv_end = prefix + min(m0 + BM, ql);  // causal: no key beyond the tile's last query

    constexpr int PER = BN * CH / 128;  // 16-byte chunks per thread per tile (block of 128)
    uint4 pk[PF ? PER : 1], pv[PF ? PER : 1];
    auto fetch = [&](int t0) {
#pragma unroll
        for (int j = 0; j < PER; j++) {
            int i = tid + j * 128, r = i / CH, c = i % CH;
            pk[j] = pv[j] = make_uint4(0, 0, 0, 0);
            if (t0 + r < kv_end) {
                size_t off = (size_t)trow[t0 + r] * nk * D + kvh * D + c * 8;
                pk[j] = *reinterpret_cast<const uint4*>(k_cache + off);
                pv[j] = *reinterpret_cast<const uint4*>(v_cache + off);
            }
        }
    };
    if constexpr (PF) fetch(0);

    for (int n0 = 0; n0 < kv_end; n0 += BN) {
        __syncthreads();  // previous tile's K/V fully consumed
        if constexpr (PF) {
#pragma unroll
            for (int j = 0; j < PER; j++) {
                int i = tid + j * 128, r = i / CH, c = i % CH;
                *reinterpret_cast<uint4*>(&Ks[r][c * 8]) = pk[j];
                *reinterpret_cast<uint4*>(&Vs[r][c * 8]) = pv[j];
            }
            if (n0 + BN < kv_end) fetch(n0 + BN);
        } else {
            for (int i = tid; i < BN * CH; i += blockDim.x) {
                int r = i / CH, c = i % CH;
                uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
                if (n0 + r < kv_end) {
                    size_t off = (size_t)trow[n0 + r] * nk * D + kvh * D + c * 8;
                    kv = *reinterpret_cast<const uint4*>(k_cache + off);
                    vv = *reinterpret_cast<const uint4*>(v_cache + off);
                }
                *reinterpret_cast<uint4*>(&Ks[r][c * 8]) = kv;
                *reinterpret_cast<uint4*>(&Vs[r][c * 8]) = vv;
            }
        }
        __syncthreads();

        float s[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ks++) {
                unsigned b0 = *reinterpret_cast<const unsigned*>(&Ks[nt * 8 + g][ks * 16 + tig * 2]);
                unsigned b1 = *reinterpret_cast<const unsigned*>(&Ks[nt * 8 + g][ks * 16 + 8 + tig * 2]);
                mma_bf16(s[nt], qa[ks], b0, b1);
            }
        }
        // Mask, scale into log2 units, running max per row.
        float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = n0 + nt * 8 + tig * 2 + (e & 1);
                int qp = e < 2 ? qpos0 : qpos1;
                float v = (key < kvl && key <= qp) ? s[nt][e] * sl2 : -INFINITY;
                s[nt][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        }
        float alpha[2], msub[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            msub[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a row with no key yet: avoid inf - inf
            alpha[r] = exp2f(mrow[r] - msub[r]);
            mrow[r] = mx[r];
            lrow[r] *= alpha[r];
        }
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            o[i][0] *= alpha[0];
            o[i][1] *= alpha[0];
            o[i][2] *= alpha[1];
            o[i][3] *= alpha[1];
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = exp2f(s[nt][e] - msub[e >> 1]);
                s[nt][e] = p;
                lrow[e >> 1] += p;
            }
        }
        // O += P V: P's accumulator layout over two 8-key tiles is an A fragment over 16 keys.
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            unsigned pa[4];
            pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                unsigned b0, b1;
                if (LDMATRIX) {
                    unsigned addr = (unsigned)__cvta_generic_to_shared(&Vs[kk * 16 + (lane & 15)][dt * 8]);
                    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                                 : "=r"(b0), "=r"(b1)
                                 : "r"(addr));
                } else {
                    int k0 = kk * 16 + tig * 2, d = dt * 8 + g;
                    __nv_bfloat162 h0, h1;
                    h0.x = Vs[k0][d];
                    h0.y = Vs[k0 + 1][d];
                    h1.x = Vs[k0 + 8][d];
                    h1.y = Vs[k0 + 9][d];
                    b0 = *reinterpret_cast<unsigned*>(&h0);
                    b1 = *reinterpret_cast<unsigned*>(&h1);
                }
                mma_bf16(o[dt], pa, b0, b1);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
        lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
        lrow[r] = lrow[r] > 0.f ? 1.f / lrow[r] : 0.f;
    }
    const int r0 = m0 + warp * 16 + g;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int r = r0 + half * 8;
        if (r < ql) {
            __nv_bfloat16* dst = out + (size_t)(qs + r) * nq * D + qh * D + tig * 2;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++)
                *reinterpret_cast<__nv_bfloat162*>(dst + dt * 8) = __floats2bfloat162_rn(
                    o[dt][half * 2] * lrow[half], o[dt][half * 2 + 1] * lrow[half]);
        }
    }
}

#define ATTN_EXTEND_ENTRY(NAME, D, BN, LDM, PF)                                                         \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                     \
        __nv_bfloat16* out, const __nv_bfloat16* q, const __nv_bfloat16* k_cache,                \
        const __nv_bfloat16* v_cache, const unsigned int* table, const int* tile_entry,         \
        const int* tile_m0, const int* q_start, const int* q_len, const int* kv_len,            \
        const int* row, int nq, int nk, int q_stride, int table_stride, float scale) {          \
        pdl_enter();                                                                            \
        attention_extend_impl<D, BN, LDM, PF>(out, q, k_cache, v_cache, table, tile_entry, tile_m0,     \
                                      q_start, q_len, kv_len, row, nq, nk, q_stride,            \
                                      table_stride, scale);                                     \
    }

// 32-key tiles: measured faster than 64 on the H100 (105.6 vs 138.2 us per layer for a 64 x 128
// prefill of Qwen3-0.6B; docs/cuda.md), so they are the default.
ATTN_EXTEND_ENTRY(attention_extend_d64, 64, 32, true, false)
ATTN_EXTEND_ENTRY(attention_extend_d128, 128, 32, true, false)
// The same with the next K/V tile prefetched into registers (being measured against the above).
ATTN_EXTEND_ENTRY(attention_extend_d64_pf, 64, 32, true, true)
ATTN_EXTEND_ENTRY(attention_extend_d128_pf, 128, 32, true, true)
// 64-key tiles: kept as a cross-check and for future tuning.
ATTN_EXTEND_ENTRY(attention_extend_d128_bn64, 128, 64, true, false)
// V fragments assembled from scalar shared loads instead of ldmatrix.trans: a cross-check of
// the fast path's fragment layout.
ATTN_EXTEND_ENTRY(attention_extend_d128_scalar_v, 128, 32, false, false)
