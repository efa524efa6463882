"""Timing and memory helpers shared by the benchmarks.

Candidates are timed in interleaved rounds (A, B, C, A, B, C, ...) so that drift
on a shared machine hits all of them alike; the median of the rounds is reported.
"""
from __future__ import annotations

import datetime
import platform
from typing import Callable

import torch

from anp_kernels.profile import latencies, peak_bytes


def interleaved_medians(fns: dict[str, Callable[[], object]], device: str, rounds: int = 15,
                        warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each candidate, measured in interleaved rounds (with autograd on)."""
    return latencies(fns, device, runs=rounds, warmup=warmup, no_grad=False)


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated above the starting point while fn runs."""
    return peak_bytes(fn, device)


def device_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def stamp(device: str) -> str:
    return (f"{device_description(device)}; torch {torch.__version__}; "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
