"""quantcc runtime: load generated kernels and run them on torch tensors."""
from .loader import load_kernel_module

__all__ = ["load_kernel_module"]
