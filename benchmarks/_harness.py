"""Timing and memory helpers shared by the benchmarks.

Candidates are timed in interleaved rounds (A, B, C, A, B, C, ...) so that drift
on a shared machine hits all of them alike; the median of the rounds is reported.
"""
from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Callable

import torch

from anp_kernels import _backend, use_backend
from anp_kernels.profile import latencies, peak_bytes


RESULTS_DIR = Path(__file__).parent / "results"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # --dtypes choices


def on_backend(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    """fn called with every op forced to `backend` (a candidate timed beside the automatic choice)."""
    def call():
        with use_backend(backend):
            return fn()
    return call


def other_backends(op: str, device: str) -> list[str]:
    """The kernel backends that can run `op` on `device` other than the one `auto` picks for it."""
    auto = _backend.backend_for(op, torch.empty(0, device=device))
    return [b for b in ("triton", "cuda") if b != auto and _backend.available(b, device)]


def write_results(name: str, data: object, markdown: str, out: str | Path = RESULTS_DIR, echo: bool = True) -> None:
    """<out>/<name>.json (the raw figures) and <out>/<name>.md (the table), each replaced atomically (a
    benchmark killed by a time limit leaves its last complete write); prints the table when echo."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{name}.json", json.dumps(data, indent=2)), (out / f"{name}.md", markdown + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    if echo:
        print(markdown)


def interleaved_medians(fns: dict[str, Callable[[], object]], device: str, rounds: int = 15,
                        warmup: int = 3, min_round_s: float = 0.0) -> dict[str, float]:
    """Median seconds per call of each candidate, measured in interleaved rounds (with autograd on);
    min_round_s > 0 times back-to-back calls for that long within each round (see profile.latencies)."""
    return latencies(fns, device, runs=rounds, warmup=warmup, no_grad=False, min_round_s=min_round_s)


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated above the starting point while fn runs: the CUDA allocator's stats, or on
    CPU the profiler's allocation events replayed in time order (a benchmark-only use of the
    profiler's raw results)."""
    if torch.device(device).type == "cuda":
        return peak_bytes(fn, device)
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


def device_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    isa = torch.backends.cpu.get_cpu_capability()  # the vector ISA ATen and oneDNN dispatch to
    return f"{platform.processor() or platform.machine()} CPU ({isa}), {torch.get_num_threads()} threads"


def stamp(device: str) -> str:
    return (f"{device_description(device)}; torch {torch.__version__}; "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
