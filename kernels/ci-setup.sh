# Sourced by scripts/test (not executed: it exports variables for `cargo test`).
# Installs NVRTC and the CUDA headers from pip wheels (no GPU or CUDA toolkit needed) so that
# exec/tests/cuda_nvrtc.rs really compiles every kernel. Pinned to 13.0.x: PTX from a newer NVRTC
# may not load on the GPU machines' CUDA 13.0 driver.
_doppel_wheels="$(pwd)/target/nvrtc-wheels"
if [ ! -f "$_doppel_wheels/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$_doppel_wheels" \
        nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 \
        || echo "kernels/ci-setup.sh: pip install of the NVRTC wheels failed; the NVRTC test will skip"
fi
if [ -f "$_doppel_wheels/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    export LD_LIBRARY_PATH="$_doppel_wheels/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export DOPPEL_CUDA_INCLUDE="$_doppel_wheels/nvidia/cu13/include"
    export DOPPEL_REQUIRE_NVRTC=1
fi
unset _doppel_wheels
