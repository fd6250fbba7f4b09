"""GGUF (llama.cpp) tensors into the gguf_* formats: a quantized tensor's data bytes are our `blocks`.

GGUF lists a tensor's dims innermost first (ne = [K, N] for a linear weight of torch shape (N, K)); each of
the N rows is K // block_size blocks back to back, exactly the canonical [N, K // block_size * type_size]
uint8 layout (Q4_0 and Q8_0 are repacked into GPTQ int4 / int8 group 32 by default: see from_gguf_file). Supported GGML types:
Q4_0, Q8_0, Q4_K, Q2_K; F32/F16/BF16/F64/I8-I64 tensors (norms,
biases, unquantized layers) come back as plain torch tensors; any other type is refused with the list of
what is supported (or skipped when asked). Reading needs the `gguf` package (llama.cpp's gguf-py).

Mapping GGUF names ('blk.0.attn_q') to a torch model's modules is the caller's (Imported.apply's `rename`).
llama.cpp's converter permutes the rows of attn_q/attn_k for its RoPE layout; an HF-style model needs the
inverse row permutation (rows are independent blocks, so it is a row gather, not a re-quantization).
"""
from __future__ import annotations

import numpy as np
import torch

import ir
from ir import QuantizedTensor, SpecError
from ir.convert import convert, repack_target

from .common import Imported, claim_biases

GGUF_FORMATS = ("gguf_q4_0", "gguf_q8_0", "gguf_q4_k", "gguf_q2_k")
_PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}


def _formats_by_type() -> dict[str, str]:
    """GGML type name -> our format name, read from the specs (decode param ggml_type)."""
    return {ir.get_format(f).param("ggml_type"): f for f in GGUF_FORMATS}


def _type_name(ggml_type) -> str:
    if isinstance(ggml_type, str):
        return ggml_type.upper()
    if hasattr(ggml_type, "name"):  # gguf.GGMLQuantizationType
        return ggml_type.name
    if isinstance(ggml_type, int) and not isinstance(ggml_type, bool):
        from gguf import GGMLQuantizationType
        try:
            return GGMLQuantizationType(ggml_type).name
        except ValueError:
            raise SpecError(f"GGML type id {ggml_type} is unknown to gguf-py") from None
    raise SpecError(f"ggml_type {ggml_type!r} is invalid; expected a GGMLQuantizationType, its name or its id")


def from_gguf(raw, ggml_type, shape: tuple[int, int]) -> QuantizedTensor:
    """One GGUF tensor's data bytes as a QuantizedTensor.

    raw: the tensor's bytes (uint8 torch tensor or numpy array of any shape, or bytes); ggml_type: a
    GGMLQuantizationType, its name ('Q4_K') or id; shape: (N, K) = (out_features, in_features), torch order
    (GGUF's ne lists it reversed: [K, N]). The tensor keeps its GGUF blocks; a Q4_0 or Q8_0 weight runs faster repacked
    (`ir.convert.convert(qt, ir.convert.repack_target(qt.spec))`, bit-exact), as from_gguf_file does by default."""
    name = _type_name(ggml_type)
    formats = _formats_by_type()
    if name not in formats:
        raise SpecError(f"GGML type {name} is not supported; supported quantized types: {sorted(formats)} "
                        f"(plain F32/F16/BF16 tensors load as torch tensors)")
    spec = ir.get_format(formats[name])
    if len(shape) != 2:
        raise SpecError(f"GGUF {name} tensor of shape {tuple(shape)}: only 2-D (N, K) weights are supported")
    N, K = (int(s) for s in shape)
    spec.check_shape(N, K)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, dtype=np.uint8)
    data = torch.from_numpy(np.array(raw, copy=True)) if isinstance(raw, np.ndarray) else raw.detach().cpu()
    if data.dtype != torch.uint8:
        raise SpecError(f"GGUF {name} data must be uint8 bytes, got {data.dtype}")
    row_bytes = K // spec.param("block_size") * spec.param("type_size")
    if data.numel() != N * row_bytes:
        raise SpecError(f"GGUF {name} tensor of shape (N={N}, K={K}) needs {N * row_bytes} bytes, got {data.numel()}")
    return QuantizedTensor(spec, (N, K), {"blocks": data.reshape(N, row_bytes).contiguous()})


def _plain(t, type_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    data = np.array(t.data, copy=True)
    if type_name == "BF16":  # gguf-py hands BF16 over as raw bytes
        return torch.from_numpy(data.view(np.uint8)).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(data).reshape(shape).to(_PLAIN[type_name])


def from_gguf_file(path, on_unsupported: str = "raise", repack: bool = True) -> Imported:
    """Every tensor of a GGUF file: quantized 2-D weights of a supported type as layers (named by the tensor
    name without '.weight'), plain tensors in `tensors`. Tensors of other GGML types are refused all at once
    (on_unsupported='raise') or listed in `skipped` (on_unsupported='skip'). With `repack`, Q4_0 layers whose
    out_features is a multiple of 8 are repacked once here into GPTQ v2 int4 group 32 with float32 dequant, and
    Q8_0 layers (out_features a multiple of 4) into GPTQ v2 int8 group 32 (ir.convert: the same dequantized
    weight, bit for bit), which run on the GPTQ-layout kernels (ir.convert.repack_target says what each gains)."""
    if on_unsupported not in ("raise", "skip"):
        raise SpecError(f"on_unsupported = {on_unsupported!r} is invalid; expected 'raise' or 'skip'")
    from gguf import GGUFReader
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as e:
        raise SpecError(f"{path}: cannot read it as GGUF ({e}); truncated or not a GGUF file?") from e
    if reader.byte_order != "I":
        raise SpecError(f"{path}: big-endian GGUF files are not supported (block fp16 fields would be swapped)")
    formats = _formats_by_type()
    imp = Imported(source=str(path))
    for t in reader.tensors:
        type_name = t.tensor_type.name
        shape = tuple(reversed([int(d) for d in t.shape]))  # torch order
        if type_name in _PLAIN:
            imp.tensors[t.name] = _plain(t, type_name, shape)
        elif type_name not in formats:
            imp.skipped[t.name] = f"GGML type {type_name} is not supported (supported: {sorted(formats)})"
        elif len(shape) != 2:
            imp.skipped[t.name] = f"{len(shape)}-D {type_name} tensor; only 2-D linear weights are supported"
        else:
            layer = t.name.removesuffix(".weight")
            try:
                qt = from_gguf(t.data, type_name, shape)
                target = repack_target(qt.spec) if repack else None
                if target is not None and shape[0] % target.n_multiple == 0:
                    qt = convert(qt, target)
                imp.layers[layer] = qt
            except SpecError as e:
                raise SpecError(f"{path}: tensor {t.name!r}: {e}") from e
    if imp.skipped and on_unsupported == "raise":
        listed = "; ".join(f"{n}: {why}" for n, why in list(imp.skipped.items())[:8])
        raise SpecError(f"{path}: {len(imp.skipped)} tensor(s) cannot be imported ({listed}); pass "
                        f"on_unsupported='skip' to import the rest")
    return claim_biases(imp)
