"""Argument checks that run before any kernel launches, with messages naming the argument.

Value checks (finite, ranges) read tensor data, so they are skipped while
torch.compile traces (they would break the graph); shapes, dtypes and devices are
always checked. On a GPU each value check is a host-device synchronisation: callers whose
values are valid by construction (the mask module's softplus parameters) pass
`check_values=False` to the ops that have it.
"""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def tensor(name: str, t, min_rank: int = 0) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < min_rank:
        raise ValueError(f"{name} must have rank >= {min_rank}, got shape {tuple(t.shape)}")
    return t


def floating(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, shape: bool = True, dtype: bool = True) -> None:
    if shape and a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if dtype and a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")


def shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def finite(name: str, t: torch.Tensor) -> None:
    """NaN or inf anywhere in t is an error. The sum is finite exactly when every value is, unless
    it overflows, so one reduction settles the common case; a non-finite sum gets the exact check."""
    if not t.numel() or _tracing():
        return
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    if not math.isfinite(float(t.detach().sum(dtype=acc))) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


def positive(name: str, t: torch.Tensor) -> None:
    finite(name, t)
    if t.numel() and not _tracing() and not bool((t > 0).all()):
        raise ValueError(f"{name} must be > 0 everywhere (min {t.min().item():.4g})")


def open_unit(name: str, t: torch.Tensor) -> None:
    finite(name, t)
    if t.numel() and not _tracing() and not bool(((t > 0) & (t < 1)).all()):
        raise ValueError(f"{name} must lie in the open interval (0, 1)")


def positive_scalar(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def mask_params(a: torch.Tensor, b: torch.Tensor, values: bool = True) -> None:
    """Kumaraswamy parameters: 1-D, same shape/device, floating; finite and > 0 when `values`."""
    tensor("a", a)
    tensor("b", b)
    if a.dim() != 1:
        raise ValueError(f"a must be 1-D of shape [C], got shape {tuple(a.shape)}")
    same("a", a, "b", b)
    floating("a", a)
    if flag("check_values", values):
        positive("a", a)
        positive("b", b)
