# Sourced by the scripts in scripts/gpu on the GPU machine: the CUDA libraries and headers of its
# install, and a kernel cache that outlives one process (each may be set beforehand).
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
export DOPPEL_CUDA_INCLUDE=${DOPPEL_CUDA_INCLUDE:-/usr/local/cuda/include}
export DOPPEL_KERNEL_CACHE=${DOPPEL_KERNEL_CACHE:-/tmp/doppel-kernels}
