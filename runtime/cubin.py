"""Run a TVM-built quantcc kernel (a cubin plus launch metadata in manifest.json) on torch tensors.

Imports only the standard library, torch and (at launch) cuda.core: no TVM, no quantcc. The TVM backend
copies this file into every artifact folder as `tvm_launcher.py`, so the folder works on its own:

    import tvm_launcher                                    # with the folder on sys.path
    kern = tvm_launcher.load("path/to/folder", tvm_launcher.find("path/to/folder", M=1, N=4096, K=4096))
    y = kern(x, tensors, N)                                # y = x @ W^T (+ bias)

x is float16/bfloat16 of shape (..., K) on a CUDA device; `tensors` maps the format's canonical tensor
names to tensors on the same device; N is out_features. Every argument is checked (dtype, shape,
contiguity, device, int32 index range) before the launch, which goes to torch's current stream.

Formats with online transforms (launch metadata `input_transforms` / `output_transforms`, the spec's
Transform dicts in spec order) get them around the kernel exactly as the Triton entry point applies them
(templates/triton/base.py.jinja `run()`): on x before the launch (hadamard: blockwise Sylvester by the fast
Walsh-Hadamard butterfly in fp32, back to x's dtype; permutation: x[:, idx], int16 indices read as uint16;
signs / col_scale: an fp32 multiply, back to x's dtype), on y after it (hadamard; else an fp32 multiply),
and then the bias, which the kernel does not add when there are output transforms.

Formats that quantize activations (launch metadata `act_quant`) get x quantized here, after the input
transforms, exactly as ir.actquant.quantize_codes does (IEEE x / act_scale in fp32; int: round half to even and
clamp, as int8; fp8: clamp to +-448 and round to e4m3, passed as its uint8 bits); the kernel reads the codes and
scales its sums by act_scale * row scale.
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import torch

_INT32_MAX = 2 ** 31 - 1


def _eval(expr: str, env: dict) -> int:
    return int(eval(expr, {"__builtins__": {}}, env))  # noqa: S307 - manifest shape/grid expressions


def hadamard(v: torch.Tensor, size: int, normalized: bool) -> torch.Tensor:
    """Sylvester Hadamard over consecutive blocks of `size` along the last dim, in fp32, by the fast
    Walsh-Hadamard butterfly, returned in v's dtype (twin of the Triton entry point's `_hadamard`)."""
    shape = v.shape
    y = v.float().reshape(-1, size)
    h = 1
    while h < size:
        y = y.view(-1, size // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    y = y.reshape(shape)
    return (y / size ** 0.5 if normalized else y).to(v.dtype)


def transform_input(transforms: list, x2: torch.Tensor, tensors: dict) -> torch.Tensor:
    """The online input transforms (spec order) on x2 (M, K), each rounded back to x2's dtype; contiguous."""
    for tr in transforms:
        if tr["kind"] == "hadamard":
            x2 = hadamard(x2, tr["size"] or x2.shape[-1], tr["normalized"])
        elif tr["kind"] == "permutation":
            t = tensors[tr["tensor"]]
            idx = t.long() & 0xFFFF if t.dtype == torch.int16 else t.long()  # uint16 indices stored in int16
            x2 = x2[:, idx]
        else:  # signs, col_scale
            x2 = (x2.float() * tensors[tr["tensor"]].float()).to(x2.dtype)
    return x2.contiguous()


def transform_output(transforms: list, y: torch.Tensor, tensors: dict) -> torch.Tensor:
    """The online output transforms (spec order) on y (M, N): hadamard in y's dtype, else an fp32 multiply."""
    for tr in transforms:
        if tr["kind"] == "hadamard":
            y = hadamard(y, tr["size"] or y.shape[-1], tr["normalized"])
        else:
            y = y.float() * tensors[tr["tensor"]].float()
    return y


def quantize_activation(aq: dict, x2: torch.Tensor, tensors: dict) -> torch.Tensor:
    """x2 (M, K) -> the static activation codes the kernel reads (launch metadata act_quant), contiguous."""
    v = x2.float() / tensors[aq["tensor"]].float().reshape(-1)[0]
    if aq["kind"] == "int":
        return torch.round(v).clamp(aq["qmin"], aq["qmax"]).to(torch.int8)
    return v.clamp(aq["qmin"], aq["qmax"]).to(torch.float8_e4m3fn).view(torch.uint8)


def run_transformed(meta: dict, x, tensors: dict, N: int, bias, out, launch):
    """y = T_out(kernel(Q(T_in(x)))) (+ bias): the transforms, the activation quantization Q (if any), y's
    allocation and the bias placement around `launch(x2, y, has_bias)`, which runs the kernel on the contiguous
    (M, K) x2 (x's dtype, or the activation codes) into the (M, N) y."""
    before, after = meta.get("input_transforms", []), meta.get("output_transforms", [])
    K = x.shape[-1]
    x2 = transform_input(before, x.reshape(-1, K), tensors)
    if meta.get("act_quant"):
        x2 = quantize_activation(meta["act_quant"], x2, tensors)
    M = x2.shape[0]
    if meta["zero_init_y"]:
        y = torch.zeros((M, N), device=x.device, dtype=torch.float32)
    elif out is not None and not after:
        y = out.view(M, N)
    else:
        y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M > 0:
        launch(x2, y, bias is not None and not after)
    y = transform_output(after, y, tensors)
    if after and bias is not None:  # after the output transforms: the bias belongs to y, not the rotated product
        y = y.float() + bias.float()
    y = y.reshape(*x.shape[:-1], N)
    if out is not None:
        if y.data_ptr() != out.data_ptr():
            out.copy_(y)
        return out
    return y.to(x.dtype)


def _manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.json in {folder}; build the folder with "
                                f"`python -m codegen build FORMAT --backend tvm --out {folder}`")
    return json.loads(path.read_text())


def find(folder: str | Path, M: int, N: int, K: int) -> str:
    """Name of the folder's TVM kernel built for the case (M, N, K); else the one built for the nearest M."""
    kernels = [k for k in _manifest(folder)["kernels"] if k["backend"] == "tvm"]
    if not kernels:
        raise KeyError(f"{folder} holds no TVM kernels")
    best = min(((abs(c["M"] - M), c["N"] != N or c["K"] != K, k["name"]) for k in kernels for c in k["cases"]))
    return best[2]


def load(folder: str | Path, name: str) -> "CubinKernel":
    for k in _manifest(folder)["kernels"]:
        if k["backend"] == "tvm" and k["name"] == name:
            return CubinKernel(Path(folder), k)
    raise KeyError(f"{folder}/manifest.json has no TVM kernel {name!r}")


class CubinKernel:
    """One generated kernel: `kern(x, tensors, N, bias=None, out=None)` returns y of shape (..., N) in x's dtype."""

    def __init__(self, folder: Path, entry: dict):
        self.name = entry["name"]
        self.meta = entry["launch"]
        self.cubin_path = Path(folder) / entry["files"]["cubin"]
        self.needed = ({p["name"] for p in self.meta["params"] if p["kind"] == "pointer"} - {"x", "y", "bias"}) | {
            tr["tensor"] for tr in (*self.meta.get("input_transforms", ()), *self.meta.get("output_transforms", ()))
            if tr["tensor"]}
        self._kernels: dict = {}
        self._devices: dict = {}
        self._shapes: dict = {}

    # -- checks -------------------------------------------------------------------------------------------
    def expected_shapes(self, N: int, K: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """{tensor: (shape, dtype)} of the canonical tensors for (N, K), evaluated once per (N, K)."""
        if (N, K) not in self._shapes:
            env = dict(self.meta["shape_params"], N=N, K=K)
            self._shapes[(N, K)] = {name: (tuple(_eval(e, env) for e in f["shape"]), f["dtype"])
                                    for name, f in self.meta["tensor_schema"].items()}
        return self._shapes[(N, K)]

    def check(self, x, tensors: dict, N: int, bias=None, out=None) -> None:
        """Raise TypeError / KeyError / ValueError naming the first bad argument."""
        dtypes = [getattr(torch, d) for d in self.meta["x_dtypes"]]
        if not isinstance(x, torch.Tensor) or x.dtype not in dtypes:
            raise TypeError(f"{self.name}: x must be a torch tensor of dtype {self.meta['x_dtypes']}, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        K = x.shape[-1]
        if not isinstance(N, int) or N <= 0 or N % self.meta["n_multiple"] or K % self.meta["k_multiple"]:
            raise ValueError(f"{self.name}: N={N}, K={K} must be positive multiples of "
                             f"{self.meta['n_multiple']} and {self.meta['k_multiple']}")
        if max(N * K, x.numel(), (x.numel() // max(K, 1)) * N) > _INT32_MAX:
            raise ValueError(f"{self.name}: the kernel indexes with int32; N*K, M*K and M*N must stay below 2**31")
        for name, (shape, dtype) in self.expected_shapes(N, K).items():
            if name not in tensors:
                if name in self.needed:
                    raise KeyError(f"{self.name}: missing tensor {name!r}; expected {sorted(self.meta['tensor_schema'])}")
                continue
            t = tensors[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != getattr(torch, dtype):
                raise ValueError(f"{self.name}: tensor {name!r} has shape {tuple(getattr(t, 'shape', ()))} dtype "
                                 f"{getattr(t, 'dtype', type(t).__name__)}; expected {shape} torch.{dtype} for N={N}, K={K}")
            if t.device != x.device:
                raise ValueError(f"{self.name}: tensor {name!r} is on {t.device} but x is on {x.device}")
            if not t.is_contiguous():
                raise ValueError(f"{self.name}: tensor {name!r} must be contiguous")
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (N,)
                                 or bias.dtype != x.dtype or bias.device != x.device or not bias.is_contiguous()):
            raise ValueError(f"{self.name}: bias must be a contiguous {x.dtype} tensor of shape ({N},) on {x.device}")
        if out is not None and (not isinstance(out, torch.Tensor) or tuple(out.shape) != (*x.shape[:-1], N)
                                or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous()):
            raise ValueError(f"{self.name}: out must be a contiguous {x.dtype} tensor of shape "
                             f"{(*x.shape[:-1], N)} on {x.device}")
        if x.device.type != "cuda":
            raise ValueError(f"{self.name}: x must be on a CUDA device (the kernel is a cubin), got {x.device}")

    # -- launch -------------------------------------------------------------------------------------------
    def _kernel(self, device: torch.device, dtype: torch.dtype):
        key = (device.index, dtype)
        if key not in self._kernels:
            from cuda.core import Device, ObjectCode
            dev = self._devices.get(device.index)
            if dev is None:
                dev = self._devices[device.index] = Device(device.index)
                dev.set_current()  # the primary context, the one torch uses
            code = ObjectCode.from_cubin(self.cubin_path.read_bytes(), name=self.name)
            self._kernels[key] = code.get_kernel(self.meta["symbols"][str(dtype).removeprefix("torch.")])
        return self._kernels[key]

    def __call__(self, x, tensors: dict, N: int, bias=None, out=None):
        self.check(x, tensors, N, bias, out)
        return run_transformed(self.meta, x, tensors, N, bias, out, self._launcher(x, tensors, N, bias))

    def _launcher(self, x, tensors: dict, N: int, bias):
        def run_kernel(x2, y, has_bias):
            from cuda.core import LaunchConfig, Stream, launch
            M, K = x2.shape
            env = {"M": M, "N": N, "K": K}
            values = {"M": M, "N": N, "K": K, "has_bias": int(has_bias),
                      "x": x2, "y": y, "bias": bias if bias is not None else x2, **tensors}
            args = [values[p["name"]].data_ptr() if p["kind"] == "pointer" else ctypes.c_int32(values[p["name"]])
                    for p in self.meta["params"]]
            config = LaunchConfig(grid=tuple(_eval(g, env) for g in self.meta["grid"]),
                                  block=tuple(self.meta["block"]), shmem_size=self.meta["dynamic_shared_bytes"])
            stream = Stream.from_handle(torch.cuda.current_stream(x.device).cuda_stream)
            launch(stream, config, self._kernel(x.device, x.dtype), *args)
        return run_kernel
