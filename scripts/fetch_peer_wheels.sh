#!/usr/bin/env bash
# Wheels of the benchmark peers that the GPU machine lacks, into .whl/ (git-ignored), for `python -m bench run`
# there (the device tool carries .whl when a run names it in `carry`):
#   gemlite       pure Python; PyPI ships only an sdist, so it is built into a py3-none-any wheel here.
#                 It needs numpy, tqdm and triton>=3.6, which the GPU image already has.
#   bitsandbytes  manylinux x86_64 (torch, numpy, packaging: already there). The wheel holds one library per
#                 CUDA/ROCm/XPU version (43 MB); it is repacked with the CPU and CUDA 13.x libraries only
#                 (the GPU image's torch is cu130), so the carried tree stays well under 64 MiB.
# Usage: scripts/fetch_peer_wheels.sh [DEST]     (env: GEMLITE_VERSION, BNB_VERSION, BNB_KEEP_CUDA="130 132")
# On the GPU machine, before `python -m bench run`:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
GEMLITE_VERSION=${GEMLITE_VERSION:-0.6.0.post2}
BNB_VERSION=${BNB_VERSION:-0.50.2}
BNB_KEEP_CUDA=${BNB_KEEP_CUDA:-"130 132"}
PY=${PYTHON:-python3}

mkdir -p "$DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -f "$DEST"/gemlite-*.whl "$DEST"/bitsandbytes-*.whl   # one version of each: two stop the whole install

# gemlite: sdist -> wheel (pure Python, no compiler involved)
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp/src" "gemlite==$GEMLITE_VERSION"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$tmp"/src/gemlite-*.tar.gz

# bitsandbytes: the manylinux wheel for CPython 3.12 on x86_64
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$tmp/bnb" "bitsandbytes==$BNB_VERSION"

# repack it without the native libraries the GPU machine will not load (RECORD lines of dropped files removed;
# the kept files and their hashes are unchanged)
"$PY" - "$tmp"/bnb/bitsandbytes-*.whl "$DEST" "$BNB_KEEP_CUDA" <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

src, dest, keep = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split()
wanted = {f"libbitsandbytes_cpu.so"} | {f"libbitsandbytes_cuda{v}.so" for v in keep}


def dropped(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return re.fullmatch(r"libbitsandbytes_\w+\.(so|dll|dylib)", base) is not None and base not in wanted


with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest / src.name, "w", zipfile.ZIP_DEFLATED) as zout:
    names = zin.namelist()
    missing = wanted - {n.rsplit("/", 1)[-1] for n in names}
    if missing:
        sys.exit(f"{src.name} has no {sorted(missing)}; set BNB_KEEP_CUDA to versions it ships")
    for info in zin.infolist():
        if dropped(info.filename):
            continue
        data = zin.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(line for line in data.decode().splitlines(keepends=True)
                           if not dropped(line.split(",", 1)[0])).encode()
        zout.writestr(info, data)
print(f"{src.name}: kept {sorted(wanted)}")
EOF

ls -l "$DEST"
du -ch "$DEST"/*.whl | tail -1
