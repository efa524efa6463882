"""Pick the fastest of several equivalent implementations, measured once per shape signature.

Used where no fixed rule is right on every shape (Triton vs gathered cuDNN forward; NCHW vs NHWC
compact conv backward): each candidate runs once to warm up, then all are timed in interleaved
rounds; the default (first) candidate is kept unless another is clearly faster.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

_choices: dict[tuple, str] = {}
_MAX_ENTRIES = 4096


def fastest(key: tuple, candidates: dict[str, Callable[[], object]], device: torch.device,
            repeats: int = 5, margin: float = 0.05) -> str:
    """Name of the fastest candidate for `key` (measured on first sight, then remembered).

    The candidates are timed in interleaved rounds (A, B, A, B, ...: a slow spell of a shared machine
    hits all alike), best time each; the first candidate (the default path) is kept unless another
    beats it by more than `margin`, so that timing noise does not pick a path that is no faster.
    """
    if key in _choices:
        return _choices[key]
    for fn in candidates.values():
        fn()  # warm up: compile, autotune, first touch, oneDNN primitive creation
    best = {name: float("inf") for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    default = next(iter(candidates))
    challenger = min(best, key=best.get)
    choice = challenger if best[challenger] < (1 - margin) * best[default] else default
    if len(_choices) >= _MAX_ENTRIES:
        _choices.clear()
    _choices[key] = choice
    return choice


def bucket(count: int) -> int:
    """A kept-channel count rounded up to a multiple of 8: counts that differ by a few channels share
    one measurement (while a network prunes, its counts change often; each new signature would
    otherwise be timed again)."""
    return -(-count // 8) * 8


def can_measure(*tensors: torch.Tensor) -> bool:
    """False while tracing (torch.compile, AOT/fake tensors, symbolic shapes): nothing real to time."""
    if torch.compiler.is_compiling():
        return False
    for t in tensors:
        if isinstance(t, torch._subclasses.FakeTensor) or not all(isinstance(d, int) for d in t.shape):
            return False
    return True


def log(kind: str) -> dict:
    """{signature: choice} for the keys whose first element is `kind`."""
    return {k[1:]: v for k, v in _choices.items() if k[0] == kind}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
