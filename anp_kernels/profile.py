"""What a model costs: parameters, bytes, FLOPs, peak activation memory, latency; dense vs compact."""
from __future__ import annotations

import collections
import contextlib
import copy
import statistics
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass, counted by torch.utils.flop_counter (shapes, not zeros)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def dispatched_ops(fn: Callable[[], object]) -> collections.Counter:
    """How often each ATen or custom op ran while fn() ran, forward and backward alike.

    On a GPU each op is about one kernel launch, so for small networks (launch-bound: LeNet-5,
    batch 64) the count bounds the step's speed; it is the same on every device, so a CPU can
    measure it. Views and metadata ops count too (they launch nothing).
    """
    with _OpCounter() as counter:
        fn()
    return counter.counts


def peak_bytes(fn: Callable[[], object], device: str | torch.device) -> int:
    """Peak bytes allocated above the starting point while fn runs (CUDA only: the allocator's stats)."""
    if torch.device(device).type != "cuda":
        raise ValueError("peak_bytes measures CUDA allocations; on CPU use peak_activation_bytes")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def _live_outputs_peak(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of module outputs alive at once in one forward: each output storage counts from the
    module call that made it until the last tensor seen on it is freed (scratch buffers inside an op
    are not seen)."""
    refs: dict[int, int] = {}
    state = {"now": 0, "peak": 0}
    sizes: dict[int, int] = {}

    def release(key: int) -> None:
        refs[key] -= 1
        if refs[key] == 0:
            state["now"] -= sizes.pop(key)
            del refs[key]

    def hook(_m, _args, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel():
                key = t.untyped_storage().data_ptr()
                if key not in refs:
                    refs[key], sizes[key] = 0, t.untyped_storage().nbytes()
                    state["now"] += sizes[key]
                    state["peak"] = max(state["peak"], state["now"])
                refs[key] += 1
                weakref.finalize(t, release, key)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(x)
        del out
    finally:
        for h in hooks:
            h.remove()
    return state["peak"]


def peak_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak activation memory of one no-grad forward: CUDA allocator stats on GPU; on CPU the peak of
    live module outputs (`_live_outputs_peak`)."""
    if x.device.type == "cuda":
        with torch.no_grad():
            return peak_bytes(lambda: model(x), x.device)
    return _live_outputs_peak(model, x)


def latency_rounds(fns: dict[str, Callable[[], object]], device: str | torch.device, runs: int = 30,
                   warmup: int = 5, no_grad: bool = True, min_round_s: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each function in each of `runs` interleaved rounds (A, B, A, B, ...:
    drift on a shared machine hits all alike; CUDA events on GPU).

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
    return times


def latencies(fns: dict[str, Callable[[], object]], device: str | torch.device, runs: int = 30,
              warmup: int = 5, no_grad: bool = True, min_round_s: float = 0.0) -> dict[str, float]:
    """Median seconds per call of each function over interleaved rounds (see latency_rounds)."""
    rounds = latency_rounds(fns, device, runs, warmup, no_grad, min_round_s)
    return {k: statistics.median(v) for k, v in rounds.items()}


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


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _prepare(model: nn.Module, input_shape: tuple, device: torch.device, channels_last: bool,
             dtype: torch.dtype = torch.float32):
    """The model on `device` in eval mode and the input, both in `dtype` and the memory format asked for.
    The model is moved in place; a dtype other than its own is applied to a copy (the caller's model
    keeps its weights)."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    fmt = torch.channels_last if channels_last and len(input_shape) == 4 else torch.contiguous_format
    first = next(model.parameters(), None)
    if first is not None and first.dtype != dtype:
        model = copy.deepcopy(model).to(dtype=dtype)
    x = torch.rand(input_shape, device=device, dtype=dtype).to(memory_format=fmt)
    return model.to(device).eval().to(memory_format=fmt), x


def report(model: nn.Module, input_shape: tuple, device: str | torch.device = "cpu", runs: int = 30,
           channels_last: bool = False, dtype: torch.dtype = torch.float32) -> dict:
    """Parameters, parameter bytes, FLOPs, peak activation memory and median latency of a forward pass.

    channels_last: run model and input in NHWC (what oneDNN and cuDNN prefer for convolutions).
    dtype: the weights' and input's dtype (float16/bfloat16: how a model is served on a GPU).
    """
    device = torch.device(device)
    model, x = _prepare(model, input_shape, device, channels_last, dtype)
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"params": params, "param_bytes": param_bytes, "flops": count_flops(model, x),
            "peak_activation_bytes": peak_activation_bytes(model, x),
            "latency_s": latencies({"m": lambda: model(x)}, device, runs)["m"], "input_shape": list(input_shape),
            "device": str(device), "channels_last": channels_last, "dtype": str(dtype).removeprefix("torch.")}


RUNTIMES = ("torch", "onnxruntime")


def _runners(models_: dict[str, nn.Module], x: torch.Tensor, runtime: str, folder: str | Path | None) -> tuple[dict, dict]:
    """{name: call} running each model on x in `runtime`, and {name: logits} of that runtime."""
    if runtime == "torch":
        return ({k: (lambda m=m: m(x)) for k, m in models_.items()},
                {k: m(x).detach() for k, m in models_.items()})
    from .deploy.export import export_onnx, onnx_logits, onnx_session

    folder = Path(folder if folder is not None else tempfile.mkdtemp(prefix="anp_onnx_"))
    folder.mkdir(parents=True, exist_ok=True)
    runners, logits = {}, {}
    for name, m in models_.items():
        session = onnx_session(export_onnx(m, folder / f"{name}.onnx", tuple(x.shape)))
        feed = {session.get_inputs()[0].name: x.detach().cpu().contiguous().numpy()}
        runners[name] = lambda s=session, f=feed: s.run(None, f)
        logits[name] = onnx_logits(session, x)
    return runners, logits


def compare(dense: nn.Module, compact: nn.Module, input_shape: tuple, device: str | torch.device = "cpu",
            runs: int = 30, channels_last: bool = False, runtime: str = "torch", onnx_dir: str | Path | None = None,
            min_round_s: float = 0.0, dtype: torch.dtype = torch.float32) -> dict:
    """The paper's columns: memory % of dense, x FLOPs, and measured speedup next to the FLOP ratio.

    The speedup is the median over rounds of each round's dense / compact ratio (the two are timed
    next to each other, so a slow spell of a shared machine cancels), with its quartiles. Both
    latencies come from one interleaved run, both models in the same memory format (PyTorch)
    or both exported to ONNX and run by ONNX Runtime on the CPU (runtime="onnxruntime"; its logits
    are checked against PyTorch's). min_round_s > 0 times each model in blocks of back-to-back calls
    (steady state, as a served model runs) instead of one call right after the other model's.
    dtype: both models and the input in float32, float16 or bfloat16 (copies where it differs).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnxruntime" and dtype != torch.float32:
        raise ValueError(f"runtime='onnxruntime' runs the float32 export; got dtype={dtype}")
    device = torch.device(device) if runtime == "torch" else torch.device("cpu")
    dense, x = _prepare(dense, input_shape, device, channels_last and runtime == "torch", dtype)
    compact, _ = _prepare(compact, input_shape, device, channels_last and runtime == "torch", dtype)
    rd = report(dense, input_shape, device, runs=3, channels_last=channels_last, dtype=dtype)
    rc = report(compact, input_shape, device, runs=3, channels_last=channels_last, dtype=dtype)
    with torch.no_grad():
        runners, logits = _runners({"dense": dense, "compact": compact}, x, runtime, onnx_dir)
        rounds = latency_rounds(runners, device, runs, min_round_s=min_round_s)
        reference = compact(x)
    rd["latency_s"], rc["latency_s"] = (statistics.median(rounds[k]) for k in ("dense", "compact"))
    flop_ratio = rd["flops"] / max(rc["flops"], 1)
    ratios = [d / c for d, c in zip(rounds["dense"], rounds["compact"])]
    speedup, quartiles = statistics.median(ratios), _quartiles(ratios)
    return {"dense": rd, "compact": rc, "runtime": runtime, "memory_percent_of_dense": 100.0 * rc["param_bytes"] / rd["param_bytes"],
            "flop_ratio": flop_ratio, "latency_speedup": speedup, "speedup_fraction_of_flop_ratio": speedup / flop_ratio,
            "speedup_quartiles": quartiles, "speedup_fraction_quartiles": [q / flop_ratio for q in quartiles],
            "activation_memory_percent_of_dense": 100.0 * rc["peak_activation_bytes"] / max(rd["peak_activation_bytes"], 1),
            "runtime_max_abs_logit_difference": float((logits["compact"].to(reference.device) - reference).abs().max())}


def _quartiles(values: list[float]) -> list[float]:
    """[first, third] quartile (both the one value for fewer than two)."""
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def prune_randomly(model: nn.Module, fraction: float, seed: int = 0) -> nn.Module:
    """Mark `fraction` of every mask's units pruned (at least one kept): structured sparsity for timing."""
    from .nn import masks

    g = torch.Generator().manual_seed(seed)
    for mask in masks(model).values():
        k = min(int(round(fraction * mask.num_features)), mask.num_features - 1)
        with torch.no_grad():
            mask.a_uc.fill_(2.0)
            mask.a_uc[torch.randperm(mask.num_features, generator=g)[:k]] = -9.0
    return model


def sparsity_sweep(build: Callable[[], nn.Module], input_shape: tuple, sparsities: list[float], device="cpu",
                   runs: int = 20, round_to: int = 8, channels_last: bool = False, runtime: str = "torch",
                   progress: bool = True, serving: bool = False) -> list[dict]:
    """Dense vs compact latency and FLOPs of an architecture at each channel sparsity (random units
    pruned per masked layer, widths rounded to round_to); `faster` is False where compact is not.
    serving: time both models in `deploy.serving_form`."""
    from tqdm.auto import tqdm

    from .deploy import compact as compact_model
    from .deploy import serving_form
    from .nn import convert, sparsity

    form = serving_form if serving else (lambda m: m)
    rows = []
    for s in tqdm(sparsities, desc="sparsity sweep", disable=not progress):
        masked = prune_randomly(convert(build()).eval(), s)
        small = compact_model(masked, (1, *input_shape[1:]), round_to=round_to)
        c = compare(form(build()), form(small), input_shape, device, runs, channels_last, runtime)
        rows.append({"target_sparsity": s, "unit_sparsity": sparsity(masked)["total"], "flop_ratio": c["flop_ratio"],
                     "latency_speedup": c["latency_speedup"], "dense_latency_s": c["dense"]["latency_s"],
                     "compact_latency_s": c["compact"]["latency_s"], "compact_flops": c["compact"]["flops"],
                     "faster": c["latency_speedup"] > 1.0})
    return rows


def plot_sweep(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Measured latency and FLOPs against unit sparsity (PNG); slower-than-dense settings marked."""
    from ._plot import figure, save

    fig, (ax1, ax2) = figure(9, 3.5, ncols=2)
    xs = [100 * r["unit_sparsity"] for r in rows]
    ax1.plot(xs, [1e3 * r["compact_latency_s"] for r in rows], "o-", label="compact")
    ax1.plot(xs, [1e3 * r["dense_latency_s"] for r in rows], "--", color="grey", label="dense")
    slow = [(x, 1e3 * r["compact_latency_s"]) for x, r in zip(xs, rows) if not r["faster"]]
    if slow:
        ax1.scatter(*zip(*slow), color="tab:red", zorder=3, label="not faster than dense")
    ax1.set_xlabel("unit sparsity (%)")
    ax1.set_ylabel("latency (ms)")
    ax1.legend()
    ax2.plot(xs, [r["flop_ratio"] for r in rows], "o-", label="x fewer FLOPs")
    ax2.plot(xs, [r["latency_speedup"] for r in rows], "s-", label="x faster (measured)")
    ax2.set_xlabel("unit sparsity (%)")
    ax2.set_yscale("log")
    ax2.legend()
    fig.suptitle(title)
    return save(fig, path)


# ------------------------------------------------------------------ the ANP-VS paper's analytic counts
LENET5_UNITS = [20, 50, 800, 500]
VGG16_UNITS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def _flops_conv(h: int, w: int, c_in: int, c_out: int, k: int, padding: int = 0) -> float:
    n = k * k * c_in
    positions = ((h - k + 2 * padding) + 1) * ((w - k + 2 * padding) + 1)
    return c_out * positions * (2 * n - 1) + 2 * c_out * positions  # + bias + activation


def _flops_pool(h: int, w: int, c: int, k: int = 2) -> float:
    return c * ((h - k) / k + 1) * ((w - k) / k + 1) * k * k


def _flops_dense(c_in: int, c_out: int, activation: bool = True) -> float:
    return (2 * c_in - 1) * c_out + c_out + (c_out if activation else 0)


def _memory_conv(h: int, w: int, c_in: int, c_out: int, k: int, padding: int = 0, bn: bool = False) -> float:
    n = k * k * c_in
    return n * (h - k + 2 * padding + 1) * (w - k + 2 * padding + 1) + n * c_out + (2 * c_out if bn else 0)


def _memory_dense(c_in: int, c_out: int, bn: bool = False) -> float:
    return c_in * c_out + c_out + (2 * c_in if bn else 0)


def lenet5_costs(u: list[int], classes: int = 10) -> tuple[float, float]:
    """(memory, FLOPs) of LeNet-5-Caffe with u = active units of its 4 masks (the original's formulas)."""
    flops = (_flops_conv(28, 28, 1, u[0], 5) + _flops_pool(24, 24, u[0]) + _flops_conv(12, 12, u[0], u[1], 5)
             + _flops_pool(8, 8, u[1]) + _flops_dense(u[2], u[3]) + _flops_dense(u[3], classes, activation=False))
    memory = (_memory_conv(28, 28, 1, u[0], 5) + _memory_conv(12, 12, u[0], u[1], 5) + _memory_dense(u[2], u[3])
              + _memory_dense(u[3], classes))
    return memory, flops


def vgg16_costs(u: list[int], classes: int = 10) -> tuple[float, float]:
    """(memory, FLOPs) of VGG-16 with u = active units of its 15 masks (the original's formulas; the
    original's memory counter adds the FC layers once per conv block, 13 times: here they count once)."""
    sizes = [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    c = [3] + u
    flops = sum(_flops_conv(sizes[i], sizes[i], c[i], c[i + 1], 3, padding=1) for i in range(13))
    flops += sum(_flops_pool(sizes[i], sizes[i], u[i]) for i in (1, 3, 6, 9, 12))
    flops += _flops_dense(u[13], u[14]) + _flops_dense(u[14], classes)
    memory = sum(_memory_conv(sizes[i], sizes[i], c[i], c[i + 1], 3, padding=1, bn=True) for i in range(13))
    memory += _memory_dense(u[13], u[14], bn=True) + _memory_dense(u[14], classes)
    return memory, flops


def paper_costs(model: nn.Module) -> dict | None:
    """Memory % and x FLOPs reduction as the ANP-VS code counts them: analytic, from the active units
    of each mask (masked units count as removed, the 800 flattened LeNet inputs included).
    For ANP models of LeNet-5-Caffe and VGG-16 (the original's mask layout); None for others."""
    from .nn import masks

    found = masks(model)
    full = [m.num_features for m in found.values()]
    counter = {tuple(LENET5_UNITS): lenet5_costs, tuple(VGG16_UNITS): vgg16_costs}.get(tuple(full))
    if counter is None:
        return None
    classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    active = [m.num_active() for m in found.values()]
    (mem, flops), (mem0, flops0) = counter(active, classes), counter(full, classes)
    return {"active_units": active, "units": full, "memory_percent": 100.0 * mem / mem0,
            "flops_reduction": flops0 / flops, "unit_sparsity": 1 - sum(active) / sum(full)}
