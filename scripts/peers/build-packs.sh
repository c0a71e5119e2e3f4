#!/usr/bin/env bash
# Here, after fetch.sh: install each peer's wheels into a staging folder, prune what an H100 never
# loads (ENGINE-prune.txt), and pack it as ENGINE-site.tar.xz cut into parts small enough to carry
# (the device tool carries 64 MiB a call, working tree included). Also packs the CPython 3.12
# headers (pyinc.tar.xz): triton compiles a small C launcher and the GPU machine lacks Python.h.
#   bash scripts/peers/build-packs.sh [vllm] [sglang]
# Env: PEERS (default REPO/.peers), XFER (where the parts go, default $PEERS/xfer), PART_MIB (12),
#      XZ_LEVEL (6). Writes scripts/peers/SHA256SUMS, which gpu.sh checks the carried parts against.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-$ROOT/.peers}
XFER=${XFER:-$PEERS/xfer}
PART_MIB=${PART_MIB:-12}
XZ_LEVEL=${XZ_LEVEL:-6}
GPU_PY=/opt/torch/.venv/bin/python3   # the GPU machine's interpreter (docs/peers.md)
mkdir -p "$PEERS/stage" "$PEERS/pack" "$XFER"
PLAT=()
for n in 17 24 27 28 31 34 35; do PLAT+=(--platform "manylinux_2_${n}_x86_64"); done
PLAT+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)

pack_dir() {  # $1 = folder to pack, $2 = output .tar.xz; same bytes for the same files (fixed mtime/owner/order)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$1" -cf - . \
    | xz -"$XZ_LEVEL" -T2 > "$2.tmp"
  mv "$2.tmp" "$2"
}

for e in ${@:-vllm sglang}; do
  wheels=$PEERS/wheels/$e
  ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "build-packs.sh: no wheels in $wheels: run fetch.sh $e" >&2; exit 1; }
  site=$PEERS/stage/site_$e
  rm -rf "$site"
  # installed for the GPU machine's CPython 3.12 on x86-64 glibc, whatever python3 runs pip here
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
    --python-version 3.12 --implementation cp --only-binary=:all: "${PLAT[@]}" "$wheels"/*.whl
  python3 "$HERE/prune.py" "$site" "$HERE/$e-prune.txt"
  # pip records where each wheel came from (this checkout's path) in direct_url.json: drop it and
  # its RECORD line, so the packs' bytes do not depend on where the checkout lives
  find "$site" -path '*.dist-info/direct_url.json' -delete
  sed -i '/\.dist-info\/direct_url\.json,/d' "$site"/*.dist-info/RECORD
  # console scripts: shebangs point at the GPU machine's interpreter (bin/ninja is an ELF binary)
  for f in "$site"/bin/*; do
    if [ "$(head -c 2 "$f")" = '#!' ]; then sed -i "1s|^#!.*python.*\$|#!$GPU_PY|" "$f"; fi
  done
  pack_dir "$site" "$PEERS/pack/$e-site.tar.xz"
  rm -f "$XFER/$e-site.tar.xz.part"*
  size=$(stat -c %s "$PEERS/pack/$e-site.tar.xz")
  # parts of equal size, none over PART_MIB
  split -n $(( (size + PART_MIB * 1048576 - 1) / (PART_MIB * 1048576) )) -d -a 2 \
    "$PEERS/pack/$e-site.tar.xz" "$XFER/$e-site.tar.xz.part"
  echo "$e: $(du -sm "$site" | cut -f1) MiB installed -> $(( size / 1048576 )) MiB packed," \
       "$(ls "$XFER/$e-site.tar.xz.part"* | wc -l) parts"
done

# CPython 3.12 headers (any 3.12.x: the C API of a minor version is stable); pyenv keeps them here
inc=${PYINC:-$(ls -d /root/.pyenv/versions/3.12*/include/python3.12 2>/dev/null | head -1)}
[ -n "$inc" ] && [ -f "$inc/Python.h" ] || { echo "build-packs.sh: no CPython 3.12 headers (set PYINC=DIR/python3.12)" >&2; exit 1; }
rm -rf "$PEERS/pyinc" && mkdir -p "$PEERS/pyinc" && cp -r "$inc" "$PEERS/pyinc/python3.12"
pack_dir "$PEERS/pyinc" "$XFER/pyinc.tar.xz"

(cd "$XFER" && sha256sum ./*-site.tar.xz.part* pyinc.tar.xz | sed 's| \./| |') > "$HERE/SHA256SUMS"
ls -l "$XFER" | awk 'NR>1{printf "%8.2f MiB  %s\n", $5/1048576, $9}'
