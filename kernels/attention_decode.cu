// Decode attention (one query token per entry) over the paged KV cache: split-KV flash-decoding.
//
// Pass 1 (the attention_decode_v3* kernels, and the tensor-core ones in attention_decode_mma.cu
// and attention_decode_rmma.cu): block (split, kv head, entry) covers one contiguous range of the
// entry's keys for all q heads of the GQA group, so each K/V row is read once per group, and
// writes the unnormalised partial output with its (max, sum), or merges the splits itself in the
// last block of each (entry, kv head) when given counters.
// Pass 2 (attention_decode_combine): merges the splits of each (entry, q head) and writes bf16.
// The split count is a launch parameter and key ranges come from kv_len on the device, so one
// captured CUDA graph serves any sequence lengths.
#include <cuda_bf16.h>

#define NW 4
#define MAXG 8  // largest GQA group (nq / nk) supported
#define UNROLL 8

// out: [T, nq*D] bf16, row q_tok[b]. Grid (nq, B), block 128.
template <int D>
__device__ void decode_combine_impl(__nv_bfloat16* __restrict__ out,
                                    const float* __restrict__ part_o,
                                    const float* __restrict__ part_ml,
                                    const int* __restrict__ q_tok, int nq, int splits) {
    const int h = blockIdx.x, b = blockIdx.y;
    const size_t base = ((size_t)b * nq + h) * splits;
    float M = -INFINITY;
    for (int s = 0; s < splits; s++) M = fmaxf(M, part_ml[(base + s) * 2]);
    float Ms = M == -INFINITY ? 0.f : M;
    float L = 0.f;
    for (int s = 0; s < splits; s++) L += part_ml[(base + s) * 2 + 1] * exp2f(part_ml[(base + s) * 2] - Ms);
    float inv = L > 0.f ? 1.f / L : 0.f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float O = 0.f;
        for (int s = 0; s < splits; s++) O += part_o[(base + s) * D + d] * exp2f(part_ml[(base + s) * 2] - Ms);
        out[(size_t)q_tok[b] * nq * D + h * D + d] = __float2bfloat16(O * inv);
    }
}

// Version 3 of pass 1 (the default): the same partial outputs, read with 16-byte loads. A key's
// D-wide row is read by LPK = D/8 lanes (8 dims each), so a warp covers KPW = 32/LPK keys per
// load and U loads of K and of V are in flight per lane before their first use; the score needs
// only a log2(LPK)-step reduction. Each KPW-lane subgroup keeps its own running softmax state
// (its lanes hold identical scores), merged across subgroups with shuffles and across the 4 warps
// in shared memory. MG (>= the GQA group, a power of two) sizes the per-head register arrays.
// With a counter buffer (one zeroed u32 per entry and kv head) the last split block also does
// pass 2 and writes `out`; with counters == nullptr it leaves that to attention_decode_combine.
// PIPE: the next iteration's K/V rows are requested before this iteration's math (two register
// buffers of U keys), so a warp always has loads in flight; without it a warp requests U keys,
// waits, computes, and only then requests the next ones.
template <int D, int MG, int U, bool PIPE = false>
__device__ void decode_split_v3_impl(DECODE_IMPL_PARAMS) {
    constexpr int LPK = D / 8;
    constexpr int KPW = 32 / LPK;
    constexpr int KPI = U * KPW;  // keys per warp iteration (<= 32: one slot per lane)
    static_assert(KPI <= 32, "one slot per lane");
    __shared__ float sm_m[NW][MG], sm_l[NW][MG];
    __shared__ float sm_o[NW][MG][D];

    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, splits = gridDim.x;
    const int G = nq / nk;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, dl = lane % LPK;
    const int kvl = kv_len[b];
    // At least min_keys keys per split: a short sequence uses fewer of the launched splits (the
    // rest write empty partials), as a CUDA graph launches the splits of its longest context.
    const int chunk = max(min_keys, (kvl + splits - 1) / splits);
    const int k_begin = split * chunk, k_end = min(kvl, k_begin + chunk);
    const unsigned int* trow = table + (size_t)row[b] * table_stride;
    const float sl2 = scale * 1.4426950408889634f;
    // The q/k pass folded in (post_on): see below.
    const bool post_on = (post.flags & DECODE_POST) != 0;
    __shared__ __align__(16) __nv_bfloat16 sm_q[MG][D];
    __shared__ __align__(16) __nv_bfloat16 sm_kv[2][D];
    const int t = q_tok[b];
    const int fresh_key = post_on && k_begin < k_end && k_end == kvl ? kvl - 1 : -1;
    // Step inputs, not the previous kernel's: read before waiting for it.
    const int pos_t = post_on ? post.positions[t] : 0;
    const unsigned int new_slot = fresh_key >= 0 ? post.slots[t] : 0u;
    // Before waiting for the previous kernel (PDL, prelude.cuh): the lengths and the slot table
    // were written before it started, so this block's K and V rows can be asked into L2 now.
    // Only q and the newest token's K/V come from that kernel (a prefetch of a row it is still
    // writing is harmless: L2 is where the writes land).
    decode_prefetch_kv<D>(k_cache, v_cache, trow, k_begin, k_end, kvh, nk, post.pf_keys);
    const size_t kvw = (size_t)nk * D;
    const __nv_bfloat16* kb = k_cache + kvh * D + dl * 8;
    const __nv_bfloat16* vb = v_cache + kvh * D + dl * 8;
    // Lane u < KPI holds the slot of key k0 + u.
    int k0 = k_begin + warp * KPI;
    unsigned int my_slot = 0u;
    // Request the U keys of the iteration at kk (slots in my_slot), then read the slots of the
    // iteration after it. `early` (before the wait) leaves the newest key (kvl - 1) at zero:
    // this block or the previous kernel writes it, and it is filled in after the wait.
    auto load_kv = [&](uint4 (&kr)[U], uint4 (&vr)[U], int kk, bool early) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            unsigned int slot = __shfl_sync(0xffffffffu, my_slot, u * KPW + sub);
            const int key = kk + u * KPW + sub;
            if (key == fresh_key && !early) {
                kr[u] = *reinterpret_cast<const uint4*>(&sm_kv[0][dl * 8]);
                vr[u] = *reinterpret_cast<const uint4*>(&sm_kv[1][dl * 8]);
            } else if (key < k_end && key != kvl - 1) {
                kr[u] = __ldg(reinterpret_cast<const uint4*>(kb + (size_t)slot * kvw));
                vr[u] = __ldg(reinterpret_cast<const uint4*>(vb + (size_t)slot * kvw));
            } else if (key < k_end && !early) {
                // The newest key without the q/k pass: the previous kernel wrote it while this
                // one may already have been running (PDL), so not through the read-only path.
                kr[u] = __ldcg(reinterpret_cast<const uint4*>(kb + (size_t)slot * kvw));
                vr[u] = __ldcg(reinterpret_cast<const uint4*>(vb + (size_t)slot * kvw));
            } else {
                kr[u] = vr[u] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        const int kn = kk + NW * KPI;
        my_slot = (lane < KPI && kn + lane < k_end) ? trow[kn + lane] : 0u;
    };
    uint4 kr[U], vr[U];
    // (The host asks for it only without the q/k pass; with it the kernel is equally correct.)
    const bool before_wait = (post.flags & DECODE_EARLY_KV) != 0;
    // The same request after the wait but ahead of the q/k pass (DECODE_KV_BEFORE_QK): the
    // keys arrive while the pass runs, without loading DRAM while the previous kernel finishes.
    const bool early_kv = before_wait || (post.flags & DECODE_KV_BEFORE_QK) != 0;
    // The first iteration's keys, the newest one left at zero (filled in below).
    auto request_first = [&]() {
        my_slot = (lane < KPI && k0 + lane < k_end) ? trow[k0 + lane] : 0u;
        if (k0 < k_end) load_kv(kr, vr, k0, true);
    };
    if (before_wait) request_first();
    if ((post.flags & DECODE_PF_NEXT_EARLY) != 0) decode_prefetch_next(post);
    pdl_enter();
    if (early_kv && !before_wait) request_first();

    // The q/k pass folded in (post_on): q holds the raw projection (q_stride = the qkv width).
    // The group's q heads are normalised and rotated into shared memory by every split block;
    // the block holding the new token's key (the last one) also normalises and rotates its k
    // head and copies its v head, into the cache for later steps and into shared memory, which
    // is where this block reads that key from (its cache row is being written here).
    if (post_on) {
        decode_qk_pass<D, NW>(post, q, k_cache, v_cache, t, q_stride, kvh, G, nq, nk, fresh_key >= 0,
                              new_slot, pos_t, &sm_q[0][0], D, &sm_kv[0][0]);
        __syncthreads();
    }

    float qv[MG][8], acc[MG][8], m[MG], l[MG];
#pragma unroll
    for (int g = 0; g < MG; g++) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = qv[g][e] = 0.f;
        if (g < G) {
            const uint4 u = post_on ? *reinterpret_cast<const uint4*>(&sm_q[g][dl * 8])
                                    : *reinterpret_cast<const uint4*>(q + (size_t)t * q_stride +
                                                                      (size_t)(kvh * G + g) * D + dl * 8);
            const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float2 f = __bfloat1622float2(h2[j]);
                qv[g][2 * j] = f.x * sl2;
                qv[g][2 * j + 1] = f.y * sl2;
            }
        }
    }

    if (!early_kv) {
        my_slot = (lane < KPI && k0 + lane < k_end) ? trow[k0 + lane] : 0u;
        if (k0 < k_end) load_kv(kr, vr, k0, false);
    } else {
        // The newest key, if the early request skipped it: from shared memory (written here)
        // or through L2 (the previous kernel wrote it; visible after the wait).
        if (k0 < k_end && k_end == kvl && k0 + KPI > kvl - 1) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (k0 + u * KPW + sub != kvl - 1) continue;
                if (fresh_key >= 0) {
                    kr[u] = *reinterpret_cast<const uint4*>(&sm_kv[0][dl * 8]);
                    vr[u] = *reinterpret_cast<const uint4*>(&sm_kv[1][dl * 8]);
                } else {
                    const size_t off = (size_t)trow[kvl - 1] * kvw;
                    kr[u] = __ldcg(reinterpret_cast<const uint4*>(kb + off));
                    vr[u] = __ldcg(reinterpret_cast<const uint4*>(vb + off));
                }
            }
        }
    }
    // The online softmax over the U keys of one warp iteration starting at kk (this lane's dims
    // of key kk + u * KPW + sub in kr[u] / vr[u]).
    auto consume = [&](const uint4 (&kr)[U], const uint4 (&vr)[U], int kk) {
#pragma unroll
        for (int g = 0; g < MG; g++) {
            if (g < G) {
                float s[U];
                float mx = m[g];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&kr[u]);
                    float d = 0.f;
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float2 f = __bfloat1622float2(k2[j]);
                        d = fmaf(qv[g][2 * j], f.x, d);
                        d = fmaf(qv[g][2 * j + 1], f.y, d);
                    }
#pragma unroll
                    for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                    s[u] = kk + u * KPW + sub < k_end ? d : -INFINITY;
                    mx = fmaxf(mx, s[u]);
                }
                // A subgroup past the end has seen no key yet: keep exp2 away from inf - inf.
                const float ms = mx == -INFINITY ? 0.f : mx;
                const float alpha = exp2f(m[g] - ms);
                m[g] = mx;
                l[g] *= alpha;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] *= alpha;
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const float p = exp2f(s[u] - ms);
                    l[g] += p;
                    const __nv_bfloat162* v2 = reinterpret_cast<const __nv_bfloat162*>(&vr[u]);
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float2 f = __bfloat1622float2(v2[j]);
                        acc[g][2 * j] = fmaf(p, f.x, acc[g][2 * j]);
                        acc[g][2 * j + 1] = fmaf(p, f.y, acc[g][2 * j + 1]);
                    }
                }
            }
        }
    };
    for (; k0 < k_end; k0 += NW * KPI) {
        uint4 kr2[U], vr2[U];
        if constexpr (PIPE) load_kv(kr2, vr2, k0 + NW * KPI, false);
        consume(kr, vr, k0);
        if constexpr (PIPE) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                kr[u] = kr2[u];
                vr[u] = vr2[u];
            }
        } else if (k0 + NW * KPI < k_end) {
            load_kv(kr, vr, k0 + NW * KPI, false);
        }
    }

    if ((post.flags & DECODE_PF_NEXT_EARLY) == 0) decode_prefetch_next(post);
    // Merge the subgroups of the warp (they hold the same dims of different keys).
#pragma unroll
    for (int g = 0; g < MG; g++) {
        if (g < G) {
#pragma unroll
            for (int o = LPK; o < 32; o <<= 1) {
                const float m2 = __shfl_xor_sync(0xffffffffu, m[g], o);
                const float l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
                const float M = fmaxf(m[g], m2);
                const float Ms = M == -INFINITY ? 0.f : M;
                const float f1 = exp2f(m[g] - Ms), f2 = exp2f(m2 - Ms);
                l[g] = l[g] * f1 + l2 * f2;
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    const float a2 = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
                    acc[g][e] = acc[g][e] * f1 + a2 * f2;
                }
                m[g] = M;
            }
            if (sub == 0) {
                if (dl == 0) {
                    sm_m[warp][g] = m[g];
                    sm_l[warp][g] = l[g];
                }
#pragma unroll
                for (int e = 0; e < 8; e++) sm_o[warp][g][dl * 8 + e] = acc[g][e];
            }
        }
    }
    __syncthreads();
    decode_merge_store<D, MG, NW>(&sm_m[0][0], &sm_l[0][0], &sm_o[0][0][0], part_o, part_ml, out,
                                  counters, t, b, kvh, G, nq, nk, split, splits);
}

#define DECODE_V3(NAME, D, MG, U, MINB, PIPE) \
    DECODE_ENTRY(NAME, MINB, decode_split_v3_impl<D, MG, U, PIPE>)

// Key loads in flight per lane (U) shrink as the group grows, to keep registers for 4 blocks/SM.
DECODE_V3(attention_decode_v3_d64_g4, 64, 4, 4, 4, false)
DECODE_V3(attention_decode_v3_d64_g8, 64, 8, 4, 2, false)
DECODE_V3(attention_decode_v3_d128_g4, 128, 4, 4, 4, false)
DECODE_V3(attention_decode_v3_d128_g8, 128, 8, 4, 2, false)
// Pipelined (two register buffers): the next keys are requested before the math on the current
// ones. Groups 1-2 keep 4 keys a buffer; groups 3-4 take 2 (two buffers of 4 would not leave the
// registers for 4 blocks/SM), the plan's choice by group (KernelChoice::decode_pipelined_max_group).
DECODE_V3(attention_decode_v3p_d64_g1, 64, 1, 4, 4, true)
DECODE_V3(attention_decode_v3p_d64_g2, 64, 2, 4, 4, true)
DECODE_V3(attention_decode_v3p_d64_g4, 64, 4, 2, 4, true)
DECODE_V3(attention_decode_v3p_d128_g1, 128, 1, 4, 4, true)
DECODE_V3(attention_decode_v3p_d128_g2, 128, 2, 4, 4, true)
DECODE_V3(attention_decode_v3p_d128_g4, 128, 4, 2, 4, true)

#define DECODE_ENTRIES(D)                                                                          \
    extern "C" __global__ void attention_decode_combine_d##D(__nv_bfloat16* out,                   \
                                                             const float* part_o,                  \
                                                             const float* part_ml,                 \
                                                             const int* q_tok, int nq, int splits) { \
        pdl_enter();                                                                                 \
        decode_combine_impl<D>(out, part_o, part_ml, q_tok, nq, splits);                           \
    }

DECODE_ENTRIES(64)
DECODE_ENTRIES(128)
