// Put before every kernel source by exec/src/cuda/compile.rs (not compiled on its own).
//
// Programmatic dependent launch (sm_90+). A kernel launched with the PDL attribute may start
// while the kernel before it in the stream is still running, so it must call pdl_wait() before
// it reads anything an earlier kernel writes or writes anything an earlier kernel reads; what it
// does before (prefetching weights, which nothing writes) overlaps the previous kernel's tail.
// pdl_trigger() lets the next kernel launch once every block of this one has called it. Both
// are no-ops before sm_90 and in launches without the attribute, so every caller stays correct
// on every architecture.
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

