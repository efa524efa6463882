"""What a model costs: parameters, bytes, FLOPs, peak activation memory, latency; dense vs compact."""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass, counted by torch.utils.flop_counter (shapes, not zeros)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def peak_bytes(fn: Callable[[], object], device: str | torch.device) -> int:
    """Peak bytes allocated above the starting point while fn runs (CUDA stats, or the CPU
    profiler's allocation events replayed in time order)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def peak_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes allocated above the starting point during one no-grad forward pass."""
    with torch.no_grad():
        return peak_bytes(lambda: model(x), x.device)


def latencies(fns: dict[str, Callable[[], object]], device: str | torch.device, runs: int = 30,
              warmup: int = 5, no_grad: bool = True, min_round_s: float = 0.0) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds (A, B, A, B, ...: drift
    on a shared machine hits all alike; CUDA events on GPU).

    min_round_s: within a round, call a function back to back until this much time has passed and
    take the mean per call (blocked timing, as torch.utils.benchmark does), so that sub-millisecond
    calls are not read off one cold call after a long neighbour.
    """
    device = torch.device(device)
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        _sync(device)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(runs):
            for name, fn in fns.items():
                times[name].append(_timed_block(fn, device, min_round_s))
    return {k: statistics.median(v) for k, v in times.items()}


def _timed_block(fn: Callable[[], object], device: torch.device, min_s: float) -> float:
    """Mean seconds per call over back-to-back calls lasting at least min_s (one call at least)."""
    calls, elapsed = 0, 0.0
    while calls == 0 or elapsed < min_s:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            elapsed += start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            elapsed += time.perf_counter() - t0
        calls += 1
    return elapsed / calls


def _prepare(model: nn.Module, input_shape: tuple, device: torch.device, channels_last: bool):
    fmt = torch.channels_last if channels_last and len(input_shape) == 4 else torch.contiguous_format
    return model.to(device).eval().to(memory_format=fmt), torch.rand(input_shape, device=device).to(memory_format=fmt)


def report(model: nn.Module, input_shape: tuple, device: str | torch.device = "cpu", runs: int = 30,
           channels_last: bool = False) -> dict:
    """Parameters, parameter bytes, FLOPs, peak activation memory and median latency of a forward pass.

    channels_last: run model and input in NHWC (what oneDNN and cuDNN prefer for convolutions).
    """
    device = torch.device(device)
    model, x = _prepare(model, input_shape, device, channels_last)
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"params": params, "param_bytes": param_bytes, "flops": count_flops(model, x),
            "peak_activation_bytes": peak_activation_bytes(model, x),
            "latency_s": latencies({"m": lambda: model(x)}, device, runs)["m"], "input_shape": list(input_shape),
            "device": str(device), "channels_last": channels_last}


def compare(dense: nn.Module, compact: nn.Module, input_shape: tuple, device: str | torch.device = "cpu",
            runs: int = 30, channels_last: bool = False) -> dict:
    """The paper's columns: memory % of dense, x FLOPs, and measured speedup next to the FLOP ratio.

    Both latencies come from one interleaved run, both models in the same memory format.
    """
    device = torch.device(device)
    dense, x = _prepare(dense, input_shape, device, channels_last)
    compact, _ = _prepare(compact, input_shape, device, channels_last)
    rd = report(dense, input_shape, device, runs=3, channels_last=channels_last)
    rc = report(compact, input_shape, device, runs=3, channels_last=channels_last)
    lat = latencies({"dense": lambda: dense(x), "compact": lambda: compact(x)}, device, runs)
    rd["latency_s"], rc["latency_s"] = lat["dense"], lat["compact"]
    flop_ratio = rd["flops"] / max(rc["flops"], 1)
    speedup = lat["dense"] / lat["compact"]
    return {"dense": rd, "compact": rc, "memory_percent_of_dense": 100.0 * rc["param_bytes"] / rd["param_bytes"],
            "flop_ratio": flop_ratio, "latency_speedup": speedup, "speedup_fraction_of_flop_ratio": speedup / flop_ratio,
            "activation_memory_percent_of_dense": 100.0 * rc["peak_activation_bytes"] / max(rd["peak_activation_bytes"], 1)}
