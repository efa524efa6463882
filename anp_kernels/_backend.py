"""Which implementation runs each op, and where its kernels live. Imports nothing from `ops`.

Backends:
  reference  plain PyTorch (every op has one; also used for float64)
  cpu        the C++ extension anp_kernels._C on CPU tensors
  cuda       the CUDA kernels of anp_kernels._C (built when torch has CUDA and nvcc)
  triton     the Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1)

`auto` picks, per op and device: CUDA tensors -> triton, else cuda, else reference (the sparse conv:
cuda first); CPU tensors -> cpu, else reference. Override with ANP_KERNELS_BACKEND (read at import)
or `set_backend()` / `use_backend()`. `kernels(backend)` is the torch.ops namespace of a backend's
kernels: loaded once, at which point every op file's registration (its fakes and autograd) is
applied to it.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
from typing import Callable, Iterator

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")
OPS = ("channel_distortion", "relaxed_mask", "sample_mask", "masked_activation", "channel_scale",
       "channel_sparse_conv2d", "kl_kumaraswamy_beta")
NAMESPACES = {"cpu": "anp_kernels", "cuda": "anp_kernels", "triton": "anp_triton"}
MODULES = {"anp_kernels": "anp_kernels._C", "anp_triton": "anp_kernels.triton.ops"}

_state: dict = {"override": os.environ.get("ANP_KERNELS_BACKEND", "auto").strip().lower() or "auto"}
_probe: dict = {}
# auto on CUDA tensors, where an op departs from triton-first: the sparse conv runs the gathered cuDNN conv
# (ops/channel_sparse_conv.py, "Dispatch rule"), Triton only when forced or measured faster (autotuning)
_CUDA_ORDER = {"channel_sparse_conv2d": ("cuda", "triton", "reference")}
_registrations: list[Callable[[str], None]] = []
_loaded: dict[str, object] = {}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message names what is missing."""


def on_namespace(register: Callable[[str], None]) -> None:
    """Have `register(namespace)` attach an op's fakes and autograd to every kernel namespace:
    those already loaded now, the others when they load."""
    _registrations.append(register)
    for ns in _loaded:
        register(ns)


def kernels(backend: str):
    """The torch.ops namespace of `backend`'s kernels (loaded and registered once)."""
    ns = NAMESPACES.get(backend)
    if ns is None:
        raise ValueError(f"backend {backend!r} has no kernel namespace")
    if ns not in _loaded:
        importlib.import_module(MODULES[ns])
        _loaded[ns] = getattr(torch.ops, ns)
        for register in _registrations:
            register(ns)
    return _loaded[ns]


def build_info() -> str | None:
    """What the C++ extension was built with ("cuda" or "cpu"), or None when it does not import."""
    if _load_cpp() is not None:
        return None
    return kernels("cpu").build_info()


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
    if build_info() != "cuda":
        return (f"anp_kernels._C was built without CUDA kernels (torch.version.cuda={torch.version.cuda!r}); "
                "rebuild on a CUDA torch with ANP_KERNELS_CUDA=1")
    return None


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
    if device_type == "cpu":
        if "interpreter" not in _probe:  # versions do not change in a process: checked once, not per op call
            _probe["interpreter"] = _interpreter_numpy_clash(
                _version(importlib.import_module("triton").__version__),
                _version(importlib.import_module("numpy").__version__))
        return _probe["interpreter"]
    return None


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int(re.match(r"\d*", minor).group() or 0)


def _interpreter_numpy_clash(triton_version: tuple[int, int], numpy_version: tuple[int, int]) -> str | None:
    """Two NumPy releases that Triton's interpreter did not yet know (seen on this machine):
    - before Triton 3.2, under NumPy 2 its stores are lost: every kernel silently returns what the output
      held before (zeros), no error;
    - before Triton 3.7, under NumPy 2.4 int() of a 1-element array (a loop bound) is an error deep inside."""
    triton, numpy = (".".join(map(str, v)) for v in (triton_version, numpy_version))
    newer_triton = "triton>=3.7" if numpy_version >= (2, 4) else "triton>=3.2"
    if triton_version < (3, 2) and numpy_version >= (2, 0):
        return (f"Triton {triton}'s interpreter computes nothing with NumPy {numpy} (under NumPy 2 its stores are "
                f"lost, silently; Triton 3.2 fixed it): pip install 'numpy<2' or '{newer_triton}'")
    if triton_version < (3, 7) and numpy_version >= (2, 4):
        return (f"Triton {triton}'s interpreter cannot run these kernels with NumPy {numpy} (NumPy 2.4 made int() "
                "of a 1-element array an error; Triton 3.7 fixed it): pip install 'numpy<2.4' or 'triton>=3.7'")
    return None


def missing(name: str, device_type: str) -> str | None:
    """Why backend `name` cannot run on `device_type` tensors, or None when it can."""
    if name == "reference":
        return None
    if name == "cpu":
        return "the cpu backend runs CPU tensors only" if device_type != "cpu" else _load_cpp()
    if name == "cuda":
        return "the cuda backend runs CUDA tensors only" if device_type != "cuda" else _cuda_ops_missing()
    if name == "triton":
        return _triton_missing(device_type)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def available(name: str, device: str | torch.device = "cpu") -> bool:
    """Whether backend `name` can run on tensors of `device` here."""
    return missing(name, torch.device(device).type) is None


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
        order = (_CUDA_ORDER.get(op, ("triton", "cuda", "reference")) if device_type == "cuda"
                 else ("cpu", "reference"))
        return next(name for name in order if missing(name, device_type) is None)
    why = missing(want, device_type)
    if why:
        raise BackendUnavailableError(f"backend {want!r} requested for {op} on {device_type} tensors: {why}")
    return want


def backend_for(op: str, t: torch.Tensor) -> str:
    return resolve(op, t.device.type, t.dtype)


def preload(device: str | torch.device) -> None:
    """Import and register the kernels every op would use on `device` now, eagerly: a first op call
    inside a torch.compile trace cannot import a module."""
    device_type = torch.device(device).type
    for op in OPS:
        which = resolve(op, device_type)
        if which in NAMESPACES:
            kernels(which)


def backend(device: str | torch.device | None = None) -> dict[str, str]:
    """Which backend each op uses on `device` (default: cuda if available, else cpu)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return {op: resolve(op, device_type) for op in OPS}
