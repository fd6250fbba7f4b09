"""Run a TVM-built quantcc kernel (a cubin plus launch metadata in manifest.json) on torch tensors.

Imports only the standard library, torch and (at launch) cuda.core: no TVM, no quantcc. The TVM backend
copies this file into every artifact folder as `tvm_launcher.py`, so the folder works on its own:

    import tvm_launcher                                    # with the folder on sys.path
    kern = tvm_launcher.load("path/to/folder", tvm_launcher.find("path/to/folder", M=1, N=4096, K=4096))
    y = kern(x, tensors, N)                                # y = x @ W^T (+ bias)

x is float16/bfloat16 of shape (..., K) on a CUDA device; `tensors` maps the format's canonical tensor
names to tensors on the same device; N is out_features. Every argument is checked (dtype, shape,
contiguity, device, int32 index range) before the launch, which goes to torch's current stream.
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import torch

_INT32_MAX = 2 ** 31 - 1


def _eval(expr: str, env: dict) -> int:
    return int(eval(expr, {"__builtins__": {}}, env))  # noqa: S307 - manifest shape/grid expressions


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
        self.needed = {p["name"] for p in self.meta["params"] if p["kind"] == "pointer"} - {"x", "y", "bias"}
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
        from cuda.core import LaunchConfig, Stream, launch
        K = x.shape[-1]
        x2 = x.reshape(-1, K).contiguous()
        M = x2.shape[0]
        split = self.meta["zero_init_y"]
        if split:
            y = torch.zeros((M, N), device=x.device, dtype=torch.float32)
        elif out is not None:
            y = out.view(M, N)
        else:
            y = torch.empty((M, N), device=x.device, dtype=x.dtype)
        if M > 0:
            kernel = self._kernel(x.device, x.dtype)
            env = {"M": M, "N": N, "K": K}
            values = {"M": M, "N": N, "K": K, "has_bias": int(bias is not None),
                      "x": x2, "y": y, "bias": bias if bias is not None else x2, **tensors}
            args = [values[p["name"]].data_ptr() if p["kind"] == "pointer" else ctypes.c_int32(values[p["name"]])
                    for p in self.meta["params"]]
            config = LaunchConfig(grid=tuple(_eval(g, env) for g in self.meta["grid"]),
                                  block=tuple(self.meta["block"]), shmem_size=self.meta["dynamic_shared_bytes"])
            stream = Stream.from_handle(torch.cuda.current_stream(x.device).cuda_stream)
            launch(stream, config, kernel, *args)
        y = y.view(*x.shape[:-1], N)
        if out is not None:
            if y.data_ptr() != out.data_ptr():
                out.copy_(y)
            return out
        return y.to(x.dtype)
