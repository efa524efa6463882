"""Compile every Triton kernel for a GPU (default sm_90, H100/H200) on a machine without one.

The Triton interpreter that the CPU test suite runs executes the kernels' Python, not their
compilation: tl.dot on fp16/bf16 tiles, the autotuned tile configurations, the GPU-sized launch
parameters (TILE 4096, program splits from the SM count) and everything Triton's compiler and ptxas
reject are only reached on a GPU. This script reaches them here: it calls the anp_triton::* ops
on CPU tensors with the launch logic of a real device (Triton's driver replaced by one that names the
target; the SM count given by --sms), and every kernel launch is compiled to a cubin instead of run.
Every configuration of an autotuned kernel is compiled. Then, per compiled kernel, from the cubin
(cuobjdump) and Triton's metadata: registers, local memory (spills), shared memory, SASS instructions, and the checks
of a launch on the target: shared memory within the per-block limit, registers x threads within the
register file, grid within CUDA's limits. The shapes: VGG-16 / ResNet-18 CIFAR layers, a linear
layer's [N, C] features and a small odd shape; fp32, fp16, bf16; contiguous and channels-last.

Compiled, not run: nothing here says the kernels compute the right values (the interpreter tests
do) or how fast they are (benchmarks/gpu_suite.sh on a GPU does).

    python benchmarks/compile_triton.py [--arch 90] [--sms 132] [--quick] [--jobs N] [--out benchmarks/results]

Writes <out>/triton_compile_sm<arch>_triton<major.minor>.{json,md} (benchmarks/gpu_toolchain.sh runs it with
the GPU machine's Triton 3.6). Needs TRITON_INTERPRET unset (the kernels must be compiled objects, not interpreted functions).
Exit status 1 when a kernel fails to compile, a launch breaks a limit or a kernel was never compiled.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# Triton 3.9 warns that its default (FP fusion on, as in earlier releases) will change: keep it, quietly
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _cubin import LIMITS, SASS_LINE, bundled_cuobjdump, theoretical_occupancy  # noqa: E402

MAX_GRID = (2**31 - 1, 65535, 65535)
# the constexpr arguments that name a binary's variant in the tables: tile sizes, backward, offset width,
# the sparse conv's activation-tile order (X_M_FASTEST=1: NCHW, pixels fastest)
LABEL_KEYS = {"BLOCK", "BM", "BN", "BK", "BS", "BP", "BC", "BR", "BB", "BACKWARD", "OFF64", "X_M_FASTEST"}
THREADS_PER_BLOCK = 1024


@dataclass
class Compiled:
    """One kernel launch compiled for the target, with its resources and the limits it breaks."""
    kernel: str
    case: str
    config: str
    grid: list
    num_warps: int
    num_stages: int
    registers: int = -1
    local_bytes: int = -1
    shared_bytes: int = -1
    occupancy: float = 0.0
    instructions: int = -1  # SASS instructions in the binary (static count, not executed)
    problems: list = field(default_factory=list)
    cases: list = field(default_factory=list)  # every call that launched this binary
    binary: str = ""  # Triton's hash of the binary

    def join(self, grid: list, cases: list, arch: int) -> None:
        """Another launch of this binary (or another shard's record of it): largest grid, cases joined."""
        self.grid = [max(a, b) for a, b in zip(self.grid, grid)]
        self.cases += [c for c in cases if c not in self.cases]
        self.problems = launch_problems(self, arch)


class _TargetDriver:
    """Triton's driver for a GPU that is not there: it names the target and nothing more."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _cuobjdump_text(cubin: bytes, flag: str) -> str:
    """cuobjdump's output for the cubin with one flag (--dump-resource-usage, -sass)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([bundled_cuobjdump(), flag, f.name], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, LOCAL, SHARED, STACK of the cubin's one function, as cuobjdump reports them."""
    text = _cuobjdump_text(cubin, "--dump-resource-usage")
    line = next(ln for ln in text.splitlines() if "REG:" in ln)
    fields = dict(item.split(":", 1) for item in line.split() if ":" in item)
    return {k: int(fields[k]) for k in ("REG", "LOCAL", "SHARED", "STACK")}


def sass_instructions(cubin: bytes) -> int:
    """How many SASS instructions the cubin's code holds (cuobjdump -sass; a static count, loops once)."""
    text = _cuobjdump_text(cubin, "-sass")
    return sum(1 for ln in text.splitlines() if SASS_LINE.match(ln))


def occupancy(rec: Compiled, arch: int) -> float:
    """Theoretical occupancy of rec's launch on the target (_cubin.theoretical_occupancy)."""
    return theoretical_occupancy(rec.registers, rec.num_warps, rec.shared_bytes, arch)


def launch_problems(rec: Compiled, arch: int) -> list[str]:
    """The reasons a launch of rec on the target would fail (empty: it would launch)."""
    limits, threads = LIMITS[arch], rec.num_warps * 32
    problems = []
    if rec.shared_bytes > limits["shared_per_block"]:
        problems.append(f"shared memory {rec.shared_bytes} B > {limits['shared_per_block']} B per block")
    if threads > THREADS_PER_BLOCK:
        problems.append(f"{threads} threads > {THREADS_PER_BLOCK} per block")
    if rec.registers * threads > limits["registers_per_sm"]:
        problems.append(f"{rec.registers} registers x {threads} threads > {limits['registers_per_sm']}")
    for axis, (size, most) in enumerate(zip(rec.grid, MAX_GRID)):
        if size > most:  # (an empty grid launches nothing: Triton skips it)
            problems.append(f"grid[{axis}] = {size} > {most}")
    return problems


class Recorder:
    """Compiles instead of launching while active; one Compiled per distinct kernel binary."""

    def __init__(self, arch: int, sms: int):
        self.arch, self.sms, self.case, self.all_configs = arch, sms, "", True
        self.compiled: dict[tuple[str, str], Compiled] = {}
        self.failures: list[dict] = []

    def add(self, fn: JITFunction, kernel, grid: tuple, kwargs: dict) -> None:
        grid = [int(g) for g in grid] + [1] * (3 - len(grid))
        name = kernel_name(fn)
        key = (name, kernel.metadata.hash)
        rec = self.compiled.get(key)
        if rec is None:
            config = " ".join(f"{k}={int(v)}" for k, v in sorted(kwargs.items()) if k in LABEL_KEYS)
            rec = Compiled(name, self.case, config, grid, kernel.metadata.num_warps, kernel.metadata.num_stages,
                           binary=kernel.metadata.hash)
            usage = resource_usage(kernel.asm["cubin"])
            rec.registers, rec.local_bytes = usage["REG"], usage["LOCAL"] + usage["STACK"]
            rec.shared_bytes = max(kernel.metadata.shared, usage["SHARED"])
            rec.occupancy = occupancy(rec, self.arch)
            rec.instructions = sass_instructions(kernel.asm["cubin"])
            self.compiled[key] = rec
        rec.join(grid, [self.case], self.arch)

    def __enter__(self) -> "Recorder":
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise RuntimeError("Recorder compiles kernels: unset TRITON_INTERPRET before Triton is imported")
        recorder, jit_run = self, JITFunction.run
        self._saved = (jit_run, Autotuner.run, torch.cuda.get_device_properties, torch.cuda.current_device)
        self._saved_driver = driver._active  # None until Triton looked for a GPU: restored as it was

        def compile_only(fn, *args, grid, warmup, **kwargs):
            kernel = jit_run(fn, *args, grid=grid, warmup=True, **kwargs)
            if callable(grid):
                grid = grid({**dict(zip(fn.arg_names, args)), **kwargs})
            recorder.add(fn, kernel, tuple(grid), kwargs)
            return kernel

        def every_config(tuner, *args, **kwargs):  # what the autotuner could pick: all of them
            for config in tuner.configs if recorder.all_configs else tuner.configs[:1]:
                tuner.fn.run(*args, **kwargs, **config.all_kwargs())

        properties = type("Properties", (), {"multi_processor_count": self.sms})()
        driver.set_active(_TargetDriver(self.arch))
        JITFunction.run, Autotuner.run = compile_only, every_config
        torch.cuda.get_device_properties = lambda *_a, **_k: properties
        torch.cuda.current_device = lambda: 0
        return self

    def __exit__(self, *exc) -> None:
        JITFunction.run, Autotuner.run, torch.cuda.get_device_properties, torch.cuda.current_device = self._saved
        driver._active = self._saved_driver

    def run_case(self, case: str, call, all_configs: bool = True) -> None:
        """call() with its launches compiled; an autotuned kernel in every configuration, or the first."""
        self.case, self.all_configs = case, all_configs
        try:
            call()
        except Exception as e:  # a compile error: recorded, the other cases go on
            self.failures.append({"case": case, "error": f"{type(e).__name__}: {str(e).strip()[-2000:]}"})


FEATURE_SHAPES = {
    "VGG-16 conv1 [128, 64, 32, 32]": (128, 64, 32, 32),
    "VGG-16 conv13 [128, 512, 2, 2]": (128, 512, 2, 2),
    "ResNet-18 layer3 [128, 256, 8, 8]": (128, 256, 8, 8),
    "linear [128, 512]": (128, 512),
    "odd [3, 5, 6, 7]": (3, 5, 6, 7),
}
QUICK_SHAPES = ("VGG-16 conv1 [128, 64, 32, 32]", "linear [128, 512]", "odd [3, 5, 6, 7]")
# (x shape, weight shape, stride, padding) of the sparse conv
CONV_SHAPES = {
    "VGG-16 conv8 3x3 256->512 @4x4": ((128, 256, 4, 4), (512, 256, 3, 3), 1, 1),
    "ResNet-18 layer2 3x3/2 64->128 @32x32": ((128, 64, 32, 32), (128, 64, 3, 3), 2, 1),
    "ResNet-18 shortcut 1x1/2 128->256 @16x16": ((128, 128, 16, 16), (256, 128, 1, 1), 2, 0),
    "odd 3x3 5->4 @6x7": ((3, 5, 6, 7), (4, 5, 3, 3), 1, 1),
    "1x1 output 3x3 8->8 @1x1": ((2, 8, 1, 1), (8, 8, 3, 3), 1, 1),  # sizes of 1 are compile-time constants
}
QUICK_CONV = ("odd 3x3 5->4 @6x7", "1x1 output 3x3 8->8 @1x1")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}
# (bias, scale: None | "C" | "NC", compact output, save y_pre). The first is what a MaskedConv2d runs in
# training (per-sample scale, y_pre saved for the backward); it is compiled in every tile configuration of
# the autotuner, the others (each flag value with each other's values) in the first configuration only.
TRAINING_FLAGS = (True, "NC", False, True)
OTHER_FLAGS = [(False, None, False, False), (True, "C", True, False), (False, "NC", True, True)]


def _features(shape, dtype, layout) -> torch.Tensor:
    x = torch.randn(shape).to(dtype)
    return x.to(memory_format=layout) if x.dim() == 4 else x


def _offsets64(module: str, call):
    """call() with anp_kernels.triton.<module>'s kernels on 64-bit offsets (otherwise taken for tensors of
    2**31 elements or more)."""
    import importlib
    kernels = importlib.import_module(f"anp_kernels.triton.{module}")
    limit, kernels.OFFSET32_LIMIT = kernels.OFFSET32_LIMIT, 1
    try:
        return call()
    finally:
        kernels.OFFSET32_LIMIT = limit


def feature_cases(ops, shape, dtype, layout) -> dict:
    """Every elementwise/reduction op, forward and backward, on one [N, C, ...] tensor."""
    x, x_adv = _features(shape, dtype, layout), _features(shape, dtype, layout)
    n, c = shape[:2]
    a, b = torch.rand(c) + 0.3, torch.rand(c) + 0.5
    g_c = torch.ones(c)
    return {
        "channel_distortion": lambda: ops.channel_distortion(x, x_adv),
        "channel_distortion_backward": lambda: ops.channel_distortion_backward(g_c, x, x_adv),
        "channel_distortion_backward 64-bit offsets": lambda: _offsets64(
            "distortion", lambda: ops.channel_distortion_backward(g_c, x, x_adv)),
        "masked_activation": lambda: ops.masked_activation(x, a, b, 0.1, 3),
        "masked_activation_backward": lambda: ops.masked_activation_backward(x_adv, x, a, b, 0.1, 3),
        "channel_scale z[C]": lambda: ops.channel_scale(x, torch.rand(c)),
        "channel_scale z[N, C]": lambda: ops.channel_scale(x, torch.rand(n, c)),
        "channel_scale_backward z[C]": lambda: ops.channel_scale_backward(x_adv, x, torch.rand(c)),
        "channel_scale_backward z[N, C]": lambda: ops.channel_scale_backward(x_adv, x, torch.rand(n, c)),
    }


def mask_cases(ops, channels: int, batch: int, dtype) -> dict:
    a, b = torch.rand(channels).to(dtype) + 0.3, torch.rand(channels).to(dtype) + 0.5
    u_pi, u_z = torch.rand(channels), torch.rand(batch, channels)
    return {
        "kumaraswamy_kl": lambda: ops.kumaraswamy_kl(a, b, 1e-4),
        "kumaraswamy_kl_backward": lambda: ops.kumaraswamy_kl_backward(torch.ones(()), a, b, 1e-4),
        "sample_mask": lambda: ops.sample_mask(a.float(), b.float(), batch, 0.1, 5),
        "relaxed_mask": lambda: ops.relaxed_mask(a.float(), b.float(), u_pi, u_z, 0.1),
    }


def conv_case(ops, spec, dtype, layout, sparsity: float, flags: tuple, offsets64: bool = False):
    """One channel_sparse_conv2d call keeping every k-th input and output channel (k from sparsity); with
    offsets64 the kernel's 64-bit offsets (otherwise taken for tensors of 2**31 elements or more)."""
    def call():  # the tensors made when called: a list of cases holds no conv inputs
        x_shape, w_shape, stride, padding = spec
        bias, scale, compact, save_pre = flags
        x = torch.randn(x_shape).to(dtype).to(memory_format=layout)
        w = torch.randn(w_shape).to(dtype)
        n, c_out, c_in = x_shape[0], w_shape[0], w_shape[1]
        step = max(1, round(1 / (1 - sparsity)))
        in_keep, out_keep = torch.arange(0, c_in, step), torch.arange(0, c_out, step)
        bias_t = torch.randn(c_out).to(dtype) if bias else None
        scale_t = {None: None, "C": torch.rand(c_out).to(dtype), "NC": torch.rand(n, c_out).to(dtype)}[scale]

        def conv():
            return ops.channel_sparse_conv2d(x, w, bias_t, in_keep, out_keep, scale_t, [stride] * 2, [padding] * 2,
                                             [1, 1], compact, False, save_pre, False)
        return _offsets64("sparse_conv", conv) if offsets64 else conv()
    return call


def conv_plan(quick: bool, layout: str):
    """(label, spec, sparsity, flags, every tile config, 64-bit offsets) of the sparse conv calls in one layout."""
    convs = {k: v for k, v in CONV_SHAPES.items() if not quick or k in QUICK_CONV}
    every = not quick or layout == "contiguous"
    for cname, spec in convs.items():  # (quick: the 1x1 output checks the constant sizes, in one config)
        yield f"{cname} 75%", spec, 0.75, TRAINING_FLAGS, every and not (quick and cname == QUICK_CONV[1]), False
    flag_shape = QUICK_CONV[0] if quick else "VGG-16 conv8 3x3 256->512 @4x4"
    yield f"{flag_shape} 75% 64-bit offsets", CONV_SHAPES[flag_shape], 0.75, TRAINING_FLAGS, every, True
    if quick and layout != "contiguous":
        return
    for sparsity in (0.5,) if quick else (0.5, 0.9):
        for flags in OTHER_FLAGS:
            label = "bias={} scale={} compact={} save_pre={}".format(*flags)
            yield f"{flag_shape} {sparsity:.0%} {label}", CONV_SHAPES[flag_shape], sparsity, flags, False, False


def all_cases(ops, quick: bool):
    """(label, call, every tile config) of every op over the shapes, dtypes and layouts."""
    shapes = {k: v for k, v in FEATURE_SHAPES.items() if not quick or k in QUICK_SHAPES}
    for dname, dtype in DTYPES.items():
        for lname, layout in LAYOUTS.items():
            for sname, shape in shapes.items():
                if len(shape) == 4 or lname == "contiguous":
                    for op, call in feature_cases(ops, shape, dtype, layout).items():
                        yield f"{op} {sname} {dname} {lname}", call, True
            for label, spec, sparsity, flags, every, offsets64 in conv_plan(quick, lname):
                yield (f"channel_sparse_conv2d {label} {dname} {lname}",
                       conv_case(ops, spec, dtype, layout, sparsity, flags, offsets64), every)
        for channels, batch in ((512, 128), (5, 3)):
            for op, call in mask_cases(ops, channels, batch, dtype).items():
                yield f"{op} C={channels} B={batch} {dname}", call, True


def kernel_name(fn: JITFunction) -> str:
    """module.function: two modules' kernels may share a function name (distortion._bwd, kl._bwd)."""
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


def launched_kernels() -> set[str]:
    """Names of the package's Triton kernels: JIT functions that no other JIT function calls (the
    helpers they call, such as the sparse conv's tile loader, compile inside their callers)."""
    from anp_kernels.triton import distortion, kl, mask, sparse_conv
    functions = {}
    for module in (distortion, kl, mask, sparse_conv):
        for obj in vars(module).values():
            fn = obj.fn if isinstance(obj, Autotuner) else obj
            if isinstance(fn, JITFunction):
                functions[kernel_name(fn)] = fn
    called = {name for name, fn in functions.items() for other in functions.values()
              if other is not fn and re.search(rf"(?<!def )\b{fn.__name__}\(", other.src)}
    return set(functions) - called


def summary_rows(compiled: list[Compiled]) -> list[dict]:
    """One row per kernel and tile configuration: how many binaries, their largest resources."""
    groups: dict[tuple, list[Compiled]] = {}
    for rec in compiled:
        groups.setdefault((rec.kernel, rec.config, rec.num_warps, rec.num_stages), []).append(rec)
    rows = []
    for (kernel, config, warps, stages), recs in sorted(groups.items()):
        rows.append(dict(kernel=kernel, config=config or "-", warps=warps, stages=stages, binaries=len(recs),
                         registers=max(r.registers for r in recs), local_bytes=max(r.local_bytes for r in recs),
                         shared_bytes=max(r.shared_bytes for r in recs),
                         occupancy=min(r.occupancy for r in recs), instructions=max(r.instructions for r in recs),
                         largest_grid=max((r.grid for r in recs), key=lambda g: g[0] * g[1] * g[2]),
                         problems=sum(bool(r.problems) for r in recs)))
    return rows


def offset_rows(compiled: list[dict]) -> list[dict]:
    """Each binary compiled with 64-bit offsets beside the same kernel's binary for the same call with 32-bit
    ones (same tiles, warps and stages): local memory (spills), registers and SASS instructions of both."""
    def twin_of(r: dict, case: str) -> dict:
        key = (r["kernel"], r["config"].replace("OFF64=1", "OFF64=0"), r["num_warps"], r["num_stages"])
        return next((t for t in compiled if case in t["cases"]
                     and (t["kernel"], t["config"], t["num_warps"], t["num_stages"]) == key), {})
    rows = []
    for r in compiled:
        for case in r["cases"]:
            if "64-bit offsets" in case and "OFF64=1" in r["config"]:
                base = case.replace(" 64-bit offsets", "")
                twin = twin_of(r, base)
                rows.append(dict(case=base, tiles=r["config"].replace(" OFF64=1", ""), warps=r["num_warps"],
                                 local_64=r["local_bytes"], local_32=twin.get("local_bytes"),
                                 registers_64=r.get("registers"), registers_32=twin.get("registers"),
                                 instructions_64=r.get("instructions"), instructions_32=twin.get("instructions")))
    return sorted(rows, key=lambda row: (row["case"], row["tiles"], row["warps"]))


def conv_spill_rows(compiled: list[dict]) -> list[dict]:
    """Per activation layout, the sparse conv's binaries with 32-bit offsets: how many spill, the most
    local memory, the median registers; and the most local memory with 64-bit offsets."""
    conv = [r for r in compiled if r["kernel"] == "sparse_conv._sparse_conv_kernel"]
    rows = []
    for layout, flag in (("NCHW", "X_M_FASTEST=1"), ("channels-last", "X_M_FASTEST=0")):
        recs = [r for r in conv if flag in r["config"].split()]
        narrow = [r for r in recs if "OFF64=0" in r["config"].split()]
        wide = [r for r in recs if "OFF64=1" in r["config"].split()]
        if narrow:
            rows.append(dict(layout=layout, binaries=len(narrow), spilling=sum(r["local_bytes"] > 0 for r in narrow),
                             max_local=max(r["local_bytes"] for r in narrow),
                             median_registers=statistics.median(r["registers"] for r in narrow),
                             max_local_64=max((r["local_bytes"] for r in wide), default=None)))
    return rows


def markdown(report: dict) -> str:
    lines = [f"# Triton kernels compiled for sm_{report['arch']} (compiled, not run)", "",
             f"{report['stamp']}; triton {report['triton']}; {report['cases']} calls in {report['seconds']:.0f} s "
             "(binaries in Triton's compile cache are not compiled again); "
             f"command: `{report['command']}`", "",
             f"{len(report['compiled'])} kernel binaries, {len(report['failures'])} compile failures, "
             f"{sum(bool(r['problems']) for r in report['compiled'])} binaries over a launch limit, "
             f"never compiled: {', '.join(report['never_compiled']) or 'none'}.", "",
             "Per kernel and tile configuration, the largest figure over its binaries (the lowest occupancy): "
             "registers and local memory per thread from the cubin (local memory is register spills), shared "
             "memory per block, theoretical occupancy from those, SASS instructions in the binary (a static "
             "count), the largest grid launched.", "",
             "| kernel | tiles | warps | stages | binaries | registers | local (spill) B | shared B | occupancy "
             "| SASS instructions | largest grid | over a limit |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['kernel']} | {r['config']} | {r['warps']} | {r['stages']} | {r['binaries']} | "
                     f"{r['registers']} | {r['local_bytes']} | {r['shared_bytes']} | {r['occupancy']:.0%} | {r['instructions']} | "
                     f"{'x'.join(map(str, r['largest_grid']))} | {r['problems']} |")
    lines += ["", "Offset widths: each call compiled with 64-bit offsets (what tensors of 2**31 elements or more "
              "take) and with 32-bit ones (the rest): local memory (spill) bytes and registers per thread, SASS "
              "instructions (a static count).", "",
              "| call | tiles | warps | spill B, 64-bit | spill B, 32-bit | registers, 64 | registers, 32 "
              "| SASS, 64 | SASS, 32 |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["offsets"]:
        lines.append(f"| {r['case']} | {r['tiles']} | {r['warps']} | {r['local_64']} | {r['local_32']} | "
                     f"{r.get('registers_64')} | {r.get('registers_32')} | {r.get('instructions_64')} | "
                     f"{r.get('instructions_32')} |")
    lines += ["", "The sparse conv's binaries per activation layout, over every tile configuration: with 32-bit "
              "offsets, how many spill, the most local memory and the median registers; with 64-bit offsets, the "
              "most local memory.", "",
              "| layout | binaries (32-bit) | spilling | most local B | median registers | most local B, 64-bit |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in report.get("conv_spills", []):
        lines.append(f"| {r['layout']} | {r['binaries']} | {r['spilling']} | {r['max_local']} | "
                     f"{r['median_registers']:g} | {r['max_local_64']} |")
    for f in report["failures"][:20]:
        lines += ["", f"- compile failure, {f['case']}: `{f['error'][-300:]}`"]
    for rec in report["compiled"]:
        for p in rec["problems"]:
            lines += ["", f"- {rec['kernel']} ({rec['case']}, {rec['config']}): {p}"]
    return "\n".join(lines)


def compile_shard(arch: int, sms: int, quick: bool, shard: int, jobs: int) -> tuple[list, list, int]:
    """Compile every jobs-th call from the shard-th on (in a process of its own); the first shows progress."""
    from tqdm import tqdm
    with Recorder(arch, sms) as rec:
        import anp_kernels.triton.ops  # noqa: F401  (registers anp_triton::*)
        cases = (c for i, c in enumerate(all_cases(torch.ops.anp_triton, quick)) if i % jobs == shard)
        total = sum(1 for i, _ in enumerate(all_cases(torch.ops.anp_triton, quick)) if i % jobs == shard)
        calls = 0
        for case, call, every in tqdm(cases, total=total, desc="compile", unit="call", disable=shard > 0):
            rec.run_case(case, call, every)
            calls += 1
    return list(rec.compiled.values()), rec.failures, calls


def merge(arch: int, shards: list) -> tuple[list[Compiled], list[dict], int]:
    """One Compiled per binary over the shards (a binary two shards compiled: its cases and grids joined)."""
    merged: dict[tuple[str, str], Compiled] = {}
    for compiled, _, _ in shards:
        for rec in compiled:
            first = merged.setdefault((rec.kernel, rec.binary), rec)
            if first is not rec:
                first.join(rec.grid, rec.cases, arch)
    failures = [f for _, shard_failures, _ in shards for f in shard_failures]
    return list(merged.values()), failures, sum(calls for _, _, calls in shards)


def unsupported_triton() -> str | None:
    """Why this Triton cannot be driven here, or None: the Recorder swaps the active driver through
    DriverConfig._active (Triton 3.6 and 3.9 have it; 3.0 and 3.2 do not)."""
    if hasattr(driver, "_active"):
        return None
    return (f"compile_triton drives Triton's DriverConfig._active, which Triton {triton.__version__} lacks "
            "(tried: 3.6 and 3.9 have it)")


def triton_release() -> str:
    """Triton's major.minor version, as in the results' file names ("3.6")."""
    return ".".join(triton.__version__.split(".")[:2])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, choices=sorted(LIMITS))
    p.add_argument("--sms", type=int, default=132, help="SM count the launchers size their grids for (H100/H200 SXM: 132)")
    p.add_argument("--quick", action="store_true", help="fewer shapes, sparsities and flag combinations (the CI test)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiling processes (default: one per core)")
    args = p.parse_args()
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET (under the interpreter Triton compiles nothing)")
    reason = unsupported_triton()
    if reason:
        p.error(reason)
    from _harness import stamp, write_results
    start = time.time()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        shards = list(pool.map(compile_shard, *zip(*[(args.arch, args.sms, args.quick, i, args.jobs)
                                                      for i in range(args.jobs)])))
    compiled, failures, calls = merge(args.arch, shards)
    report = dict(arch=args.arch, sms=args.sms, triton=triton.__version__, stamp=stamp("cpu"), cases=calls,
                  seconds=time.time() - start, command="python benchmarks/compile_triton.py " + " ".join(sys.argv[1:]),
                  never_compiled=sorted(launched_kernels() - {r.kernel for r in compiled}),
                  compiled=[asdict(r) for r in compiled], failures=failures, rows=summary_rows(compiled))
    report["offsets"] = offset_rows(report["compiled"])
    report["conv_spills"] = conv_spill_rows(report["compiled"])
    # one file per Triton release: the GPU machine's Triton (3.6) compiles differently from a newer one here
    name = f"triton_compile_sm{args.arch}_triton{triton_release()}" + ("_quick" if args.quick else "")
    write_results(name, report, markdown(report), args.out)
    bad = report["failures"] or report["never_compiled"] or any(r.problems for r in compiled)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
