"""quantcc IR: quantization formats as frozen data, with bit-exact reference codecs."""
from .registry import format_options, format_summary, get_codec, get_format, list_formats, register_codec, register_format
from .spec import (SCHEMA_VERSION, ActQuant, Decode, FormatSpec, KernelConfig, Packing, ScaleLevel, SpecError,
                   TensorField, Transform)
from .tensor import QuantizedTensor, dequantize, quantize

__all__ = [
    "SCHEMA_VERSION", "ActQuant", "Decode", "FormatSpec", "KernelConfig", "Packing", "QuantizedTensor",
    "ScaleLevel", "SpecError", "TensorField", "Transform", "dequantize", "format_options", "format_summary",
    "get_codec", "get_format", "list_formats", "quantize", "register_codec", "register_format",
]
