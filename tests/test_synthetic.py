"""Synthetic stored tensors (used for GPU checks and benchmarks at real shapes) are valid for every format."""
import pytest
import torch

import ir
from ir.synthetic import synthetic_quantized


@pytest.mark.parametrize("name", ir.list_formats())
def test_synthetic_tensors_are_valid_and_decode_finite(name):
    spec = ir.get_format(name)
    N = spec.n_multiple * max(1, 32 // spec.n_multiple)
    K = spec.k_multiple * max(1, 256 // spec.k_multiple)
    qt = synthetic_quantized(spec, N, K, seed=3)      # validate_tensors runs in QuantizedTensor
    W = ir.dequantize(qt)
    assert torch.isfinite(W).all(), name
    assert W.abs().max() > 0, f"{name}: synthetic weights are all zero"
    again = synthetic_quantized(spec, N, K, seed=3)
    assert all(torch.equal(again.tensors[k], v) for k, v in qt.tensors.items()), "synthetic data must be seeded"
