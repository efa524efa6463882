"""Which implementation runs each op: automatic choice, an override, clear errors.

Backends:
  reference  plain PyTorch (every op has one; also used for float64)
  cpu        the C++ extension anp_kernels._C on CPU tensors
  cuda       the CUDA kernels of anp_kernels._C (built when torch has CUDA and nvcc)
  triton     the Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1)

`auto` picks, per op and device: CUDA tensors -> triton, else cuda, else reference;
CPU tensors -> cpu, else reference. Override with ANP_KERNELS_BACKEND (read at
import) or `set_backend()` / `use_backend()` at run time.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Iterator

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")
OPS = ("channel_distortion", "relaxed_mask", "sample_mask", "masked_activation", "channel_scale",
       "channel_sparse_conv2d")

_state: dict = {"override": os.environ.get("ANP_KERNELS_BACKEND", "auto").strip().lower() or "auto"}
_probe: dict = {}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message names what is missing."""


def _load_cpp() -> str | None:
    """Import anp_kernels._C once; return None on success, else why it failed."""
    if "cpp" not in _probe:
        try:
            importlib.import_module("anp_kernels._C")
            _probe["cpp"] = None
        except ImportError as exc:  # not built, or built for another torch
            _probe["cpp"] = f"anp_kernels._C is not importable ({exc}); reinstall with `pip install --no-build-isolation .`"
    return _probe["cpp"]


def _cuda_ops_missing() -> str | None:
    why = _load_cpp()
    if why:
        return why
    if "cuda_ops" not in _probe:
        has = torch._C._dispatch_has_kernel_for_dispatch_key("anp_kernels::channel_distortion", "CUDA")
        _probe["cuda_ops"] = None if has else (
            "anp_kernels._C was built without CUDA kernels (torch.version.cuda="
            f"{torch.version.cuda!r}); rebuild on a CUDA torch with ANP_KERNELS_CUDA=1"
        )
    return _probe["cuda_ops"]


def _triton_missing(device_type: str) -> str | None:
    if "triton" not in _probe:
        try:
            importlib.import_module("triton")
            _probe["triton"] = None
        except ImportError as exc:
            _probe["triton"] = f"triton is not installed ({exc}); pip install triton"
    if _probe["triton"]:
        return _probe["triton"]
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs CPU tensors only under the interpreter: set TRITON_INTERPRET=1 before importing anp_kernels"
    return None


def _missing(name: str, device_type: str) -> str | None:
    """Why backend `name` cannot run on `device_type`, or None when it can."""
    if name == "reference":
        return None
    if name == "cpu":
        return "the cpu backend runs CPU tensors only" if device_type != "cpu" else _load_cpp()
    if name == "cuda":
        if device_type != "cuda":
            return "the cuda backend runs CUDA tensors only"
        return _cuda_ops_missing()
    if name == "triton":
        return _triton_missing(device_type)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def set_backend(name: str) -> None:
    """Force a backend for every op (`auto` restores the automatic choice)."""
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"ANP_KERNELS_BACKEND / set_backend: unknown backend {name!r}; choose one of {BACKENDS}")
    _state["override"] = name


def get_backend_override() -> str:
    return _state["override"]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of `set_backend`."""
    old = _state["override"]
    set_backend(name)
    try:
        yield
    finally:
        _state["override"] = old


def resolve(op: str, device_type: str, dtype: torch.dtype | None = None) -> str:
    """The backend `op` uses for tensors on `device_type` (and `dtype`)."""
    want = _state["override"]
    if want not in BACKENDS:
        raise ValueError(f"ANP_KERNELS_BACKEND={want!r} is not one of {BACKENDS}")
    if dtype == torch.float64:
        return "reference"  # kernels are fp32/fp16/bf16; float64 is for checking
    if want == "auto":
        order = ("triton", "cuda", "reference") if device_type == "cuda" else ("cpu", "reference")
        return next(name for name in order if _missing(name, device_type) is None)
    why = _missing(want, device_type)
    if why:
        raise BackendUnavailableError(f"backend {want!r} requested for {op} on {device_type} tensors: {why}")
    return want


def backend(device: str | torch.device | None = None) -> dict[str, str]:
    """Which backend each op uses on `device` (default: cuda if available, else cpu)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return {op: resolve(op, device_type) for op in OPS}
