"""quantcc benchmarks: kernels vs fp16 cuBLAS, the read floor and peers, measured in the same run."""
