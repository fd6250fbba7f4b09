"""quantcc runtime: QuantLinear and quantize_model, checkpoints, importers, and the generated-kernel loaders."""
from . import importers
from .checkpoint import CheckpointError, load_quantized, save_quantized
from .linear import QuantLinear
from .loader import load_kernel_module
from .op import quant_linear
from .recipe import SKIP, QuantizeReport, Recipe, quantize_model, unsloth_dynamic_4bit

__all__ = [
    "SKIP", "CheckpointError", "QuantLinear", "QuantizeReport", "Recipe", "importers", "load_kernel_module",
    "load_quantized", "quant_linear", "quantize_model", "save_quantized", "unsloth_dynamic_4bit",
]
