// KV store into the paged cache.
//
// Layout (see kernels/README.md): per layer, one K buffer and one V buffer, each
// [num_slots, nk, D] bf16; slot s holds one token's K (resp. V) for all kv heads. A token's
// slot is the same in every layer, so slot s across all layers' buffers is that token's KV.
#include <cuda_bf16.h>

// k_cache[slots[t]] = k of token t, v_cache[slots[t]] = v of token t, where token t's k heads
// sit at columns [nq*D, (nq+nk)*D) and v heads at [(nq+nk)*D, (nq+2nk)*D) of qkv [T, row_stride].
// Grid (T), block 128; 16-byte copies (nk*D multiple of 8).
extern "C" __global__ void kv_store(__nv_bfloat16* __restrict__ k_cache,
                                    __nv_bfloat16* __restrict__ v_cache,
                                    const __nv_bfloat16* __restrict__ qkv,
                                    const unsigned int* __restrict__ slots, int num_tokens,
                                    int nq, int nk, int head_dim, int row_stride) {
    pdl_enter();
    int t = blockIdx.x;
    if (t >= num_tokens) return;
    int kw = nk * head_dim;
    size_t slot = slots[t];
    const uint4* k = reinterpret_cast<const uint4*>(qkv + (size_t)t * row_stride + (size_t)nq * head_dim);
    const uint4* v = reinterpret_cast<const uint4*>(qkv + (size_t)t * row_stride + (size_t)(nq + nk) * head_dim);
    uint4* kd = reinterpret_cast<uint4*>(k_cache + slot * kw);
    uint4* vd = reinterpret_cast<uint4*>(v_cache + slot * kw);
    for (int i = threadIdx.x; i < kw / 8; i += blockDim.x) {
        kd[i] = k[i];
        vd[i] = v[i];
    }
}

// Request-table writes: table[rows[i] * stride + cols[i]] = vals[i]. Applies a plan's
// table_writes and out_slots, flattened on the host into one list. Grid ceil(n/256), block 256.
extern "C" __global__ void table_scatter(unsigned int* __restrict__ table,
                                         const unsigned int* __restrict__ rows,
                                         const unsigned int* __restrict__ cols,
                                         const unsigned int* __restrict__ vals, int n,
                                         int stride) {
    pdl_enter();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) table[(size_t)rows[i] * stride + cols[i]] = vals[i];
}
