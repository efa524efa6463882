"""Measured choice between equivalent implementations, only when asked for.

Dispatch is deterministic by default: every op follows a fixed, documented rule per device and shape.
With autotuning on (ANP_KERNELS_AUTOTUNE=1, or `enable(True)`), a signature's candidates are timed
once (interleaved rounds, best time each; the rule's choice is kept unless another is more than 5%
faster) and the winner is remembered. Autotuning never runs while tracing or compiling, under CUDA
graph capture, under torch.use_deterministic_algorithms, or in a torch.distributed job (ranks could
choose differently): the rule decides there.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch

_state = {"enabled": os.environ.get("ANP_KERNELS_AUTOTUNE", "0").strip() == "1"}
_choices: dict[tuple, str] = {}
_MAX_ENTRIES = 4096


def enable(on: bool = True) -> None:
    """Turn measured dispatch on or off (ANP_KERNELS_AUTOTUNE=1 turns it on at import)."""
    _state["enabled"] = bool(on)


def enabled() -> bool:
    return _state["enabled"]


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def allowed(device: torch.device, *tensors: torch.Tensor) -> bool:
    """Whether a measurement may run now (see the module docstring)."""
    if not _state["enabled"] or torch.compiler.is_compiling() or torch.are_deterministic_algorithms_enabled():
        return False
    if _capturing(device) or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    return all(isinstance(d, int) for t in tensors for d in t.shape)  # no symbolic shapes


def choose(key: tuple, rule: str, candidates: dict[str, Callable[[], object]], device: torch.device,
           tensors: tuple = (), repeats: int = 5, margin: float = 0.05) -> str:
    """`rule` (the deterministic choice), or with autotuning allowed the fastest candidate for `key`."""
    if key in _choices:
        return _choices[key]
    if len(candidates) < 2 or not allowed(device, *tensors):
        return rule
    for fn in candidates.values():
        fn()  # warm up: compile, autotune, first touch, primitive creation
    best = {name: float("inf") for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    challenger = min(best, key=best.get)
    choice = challenger if best[challenger] < (1 - margin) * best[rule] else rule
    if len(_choices) >= _MAX_ENTRIES:
        _choices.clear()
    _choices[key] = choice
    return choice


def log(kind: str) -> dict:
    """{signature: choice} measured so far for the keys whose first element is `kind`."""
    return {k[1:]: v for k, v in _choices.items() if k[0] == kind}


def bucket(count: int) -> int:
    """A kept-channel count rounded up to a multiple of 8: counts that differ by a few channels share
    one measurement (while a network prunes, its counts change often)."""
    return -(-count // 8) * 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
