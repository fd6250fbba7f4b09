#!/usr/bin/env bash
# Build the TVM artifact folders that tests/test_runtime_gpu.py::test_tvm_backend_* loads on the GPU machine
# (which has no TVM): gptq and bnb_nf4 at N,K = 256,512 for M = 1 and 16, sm90, into the git-ignored
# quantcc_out/tvm_runtime_test/<format>. Needs apache-tvm and nvcc (the build machine). Carry the folder
# to the GPU machine with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-quantcc_out/tvm_runtime_test}
for fmt in gptq bnb_nf4; do
    rm -rf "$OUT/$fmt"
    python -m codegen build "$fmt" --arch sm90 --backend tvm --shapes 256,512 --batches 1 16 --out "$OUT/$fmt"
done
