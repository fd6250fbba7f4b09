"""quantcc runtime: QuantLinear and quantize_model, checkpoints, importers, and the generated-kernel loaders."""
from . import importers
from .checkpoint import CheckpointError, load_quantized, save_quantized
from .linear import QuantLinear
from .loader import load_kernel_module
from .op import get_backend, quant_linear, set_backend
from .recipe import SKIP, QuantizeReport, Recipe, quantize_model, unsloth_dynamic_4bit
from .tvm_artifacts import TvmArtifactError, clear_tvm_artifacts, use_tvm_artifacts

__all__ = [
    "SKIP", "CheckpointError", "QuantLinear", "QuantizeReport", "Recipe", "TvmArtifactError", "clear_tvm_artifacts",
    "get_backend", "importers", "load_kernel_module", "load_quantized", "quant_linear", "quantize_model",
    "save_quantized", "set_backend", "unsloth_dynamic_4bit", "use_tvm_artifacts",
]
