"""Pick the fastest of several equivalent implementations, measured once per shape signature.

Used where no fixed rule is right on every shape (Triton vs gathered cuDNN forward; NCHW vs NHWC
compact conv backward): each candidate runs once to warm up (compile, autotune, first touch),
then `repeats` timed calls; the one with the lowest best time is kept for the signature.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

_choices: dict[tuple, str] = {}
_MAX_ENTRIES = 4096


def fastest(key: tuple, candidates: dict[str, Callable[[], object]], device: torch.device,
            repeats: int = 3) -> str:
    """Name of the fastest candidate for `key` (measured on first sight, then remembered)."""
    if key in _choices:
        return _choices[key]
    best: dict[str, float] = {}
    for name, fn in candidates.items():
        fn()
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    choice = min(best, key=best.get)
    if len(_choices) >= _MAX_ENTRIES:
        _choices.clear()
    _choices[key] = choice
    return choice


def can_measure(*tensors: torch.Tensor) -> bool:
    """False while tracing (torch.compile, AOT/fake tensors, symbolic shapes): nothing real to time."""
    if torch.compiler.is_compiling():
        return False
    for t in tensors:
        if isinstance(t, torch._subclasses.FakeTensor) or not all(isinstance(d, int) for d in t.shape):
            return False
    return True


def known(key: tuple) -> str | None:
    """The remembered choice for `key`, if measured already."""
    return _choices.get(key)


def log(kind: str) -> dict:
    """{signature: choice} for the keys whose first element is `kind`."""
    return {k[1:]: v for k, v in _choices.items() if k[0] == kind}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
