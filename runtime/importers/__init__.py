"""Importers: real-world quantized checkpoints into quantcc's canonical layouts, without converting bytes.

Each format's canonical layout is byte-compatible with its origin, so importing is reading the right
tensors, naming the spec that describes them, and checking shapes:
  gguf   from_gguf_file(path), from_gguf(raw_uint8, ggml_type, shape)      (Q4_0, Q8_0, Q4_K, Q2_K)
  gptq   from_gptq(path_or_state_dict, quantize_config)                    (GPTQ/GPTQModel v1, v2, act-order;
         AutoRound; AutoAWQ GEMM), from_efficientqat(path, bits, group_size) (EfficientQAT native)
  bnb    from_bnb_state_dict(state_dict)                                   (bitsandbytes NF4/FP4 Linear4bit)
  compressed_tensors  from_compressed_tensors(path_or_state_dict, config)  (llm-compressor W4A16/W8A16 int into
         gptq; W8A8 int8/fp8 with static input scales into w8a8_static; dynamic activations are refused)
Each returns an `Imported`: the quantized layers by module name, their biases, every other tensor, and what
was skipped and why. `Imported.apply(model)` swaps the named nn.Linear layers for QuantLinear and loads the
rest.
"""
from .bnb import from_bnb_state_dict
from .common import Imported
from .compressed_tensors import from_compressed_tensors
from .gguf import from_gguf, from_gguf_file
from .gptq import from_efficientqat, from_gptq

__all__ = ["Imported", "from_bnb_state_dict", "from_compressed_tensors", "from_efficientqat", "from_gguf",
           "from_gguf_file", "from_gptq"]
