// Token embedding gather and row gather.
//
// bf16 storage; rows are copied with 16-byte vector accesses, so the hidden size must be a
// multiple of 8 (checked by the host wrapper).
#include <cuda_bf16.h>

// Placeholder id meaning "the token this request sampled last step" (doppel_core::FUTURE_TOKEN).
#define FUTURE_TOKEN 0xFFFFFFFFu

// out[t, :] = table[id(t), :] where id(t) = ids[t], or last_token[tok_row[t]] when ids[t] is
// FUTURE_TOKEN (the overlap loop's placeholder: the previous step's sample, already on the device).
// Each resolved id is written back into ids so later kernels and the host see the real token.
// An id outside the vocabulary yields a zero row (the host validates ids; this only avoids an
// out-of-bounds read). Grid: (T), block: 128.
extern "C" __global__ void embedding_gather(__nv_bfloat16* __restrict__ out,
                                            const __nv_bfloat16* __restrict__ table,
                                            unsigned int* __restrict__ ids,
                                            const unsigned int* __restrict__ tok_row,
                                            const unsigned int* __restrict__ last_token,
                                            int num_tokens, int hidden, int vocab) {
    pdl_enter();
    int t = blockIdx.x;
    if (t >= num_tokens) return;
    unsigned int id = ids[t];
    if (id == FUTURE_TOKEN) {
        id = last_token[tok_row[t]];
        __syncthreads();
        if (threadIdx.x == 0) ids[t] = id;
    }
    uint4* dst = reinterpret_cast<uint4*>(out + (size_t)t * hidden);
    int n = hidden / 8;
    if (id >= (unsigned int)vocab) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = make_uint4(0, 0, 0, 0);
        return;
    }
    const uint4* src = reinterpret_cast<const uint4*>(table + (size_t)id * hidden);
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// out[i, :] = x[rows[i], :] for i < n: picks the rows whose logits are needed. Grid: (n), block 128.
extern "C" __global__ void gather_rows(__nv_bfloat16* __restrict__ out,
                                       const __nv_bfloat16* __restrict__ x,
                                       const unsigned int* __restrict__ rows, int n, int width) {
    pdl_enter();
    int i = blockIdx.x;
    if (i >= n) return;
    const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)rows[i] * width);
    uint4* dst = reinterpret_cast<uint4*>(out + (size_t)i * width);
    for (int j = threadIdx.x; j < width / 8; j += blockDim.x) dst[j] = src[j];
}

// last_token[rows[i]] = tokens[i]: records each request's sample for the next step's FUTURE_TOKEN.
extern "C" __global__ void store_last_token(unsigned int* __restrict__ last_token,
                                            const unsigned int* __restrict__ rows,
                                            const unsigned int* __restrict__ tokens, int n) {
    pdl_enter();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) last_token[rows[i]] = tokens[i];
}
