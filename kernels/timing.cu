// spin_ns: keeps the stream busy for `ns` nanoseconds of GPU time. `doppel exec profile` queues
// one before a measured step so that all of the step's kernels are launched before the GPU
// reaches them: the step's CUDA-event span is then its device time without host launch gaps.
// Grid 1, block 1.
extern "C" __global__ void spin_ns(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}
