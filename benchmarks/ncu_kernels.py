"""The kernels behind issue 13's goals, each case once inside a CUDA profiler range: for Nsight Compute.

Every case runs first outside the range (Triton compiles and autotunes, cuDNN picks its algorithms),
then once between cudaProfilerStart and cudaProfilerStop, inside an NVTX range named after it, so
that `ncu --profile-from-start off` reads the counters of exactly these launches, in this order:

    ncu --clock-control none --profile-from-start off --nvtx --csv --page details \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \\
        python3 benchmarks/ncu_kernels.py > ncu.csv       (gpu_suite.sh's `ncu` step)
    python benchmarks/ncu_kernels.py --device cpu --small   (the same calls on CPU, no profiler: a check)

Cases: channel_distortion and masked_activation fwd+bwd on the largest VGG-16 feature shape (fp32)
on every kernel backend; channel_sparse_conv2d forward at VGG-16 conv2_2 and conv3_x shapes, fp16,
50% and 90% channel sparsity, on Triton and on the dispatch's gathered cuDNN path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
import anp_kernels  # noqa: E402
from anp_kernels import ops  # noqa: E402
from _harness import on_backend  # noqa: E402

FEATURE = (128, 64, 32, 32)
CONVS = (("vgg.conv2_2", 128, 128, 16), ("vgg.conv3_x", 256, 256, 8))


def kernel_backends(device: str) -> list[str]:
    return [b for b in ("triton", "cuda", "cpu") if anp_kernels.available(b, device)]


def _elementwise_cases(device: str, shape: tuple) -> dict:
    z = torch.randn(shape, device=device, requires_grad=True)
    z_adv = (z.detach() + 0.1 * torch.randn_like(z)).requires_grad_()
    a = (torch.rand(shape[1], device=device) + 0.3).requires_grad_()
    b = (torch.rand(shape[1], device=device) + 0.5).requires_grad_()
    g_c, g = torch.rand(shape[1], device=device), torch.randn(shape, device=device)
    cases = {}
    for backend in kernel_backends(device):
        cases[f"channel_distortion fwd+bwd {backend}"] = on_backend(
            backend, lambda: torch.autograd.grad(ops.channel_distortion(z, z_adv), (z, z_adv), g_c))
        cases[f"masked_activation fwd+bwd {backend}"] = on_backend(
            backend, lambda: torch.autograd.grad(ops.masked_activation(z, a, b, 0.1, seed=7), (z, a, b), g))
    return cases


def _conv_cases(device: str, batch: int, dtype: torch.dtype) -> dict:
    cases = {}
    for (name, cin, cout, h), sparsity in ((c, s) for c in CONVS for s in (0.5, 0.9)):
        x = torch.randn(batch, cin, h, h, device=device, dtype=dtype)
        w = torch.randn(cout, cin, 3, 3, device=device, dtype=dtype) / (9 * cin) ** 0.5
        ik = torch.randperm(cin, device=device)[: max(1, round(cin * (1 - sparsity)))].sort().values
        ok = torch.randperm(cout, device=device)[: max(1, round(cout * (1 - sparsity)))].sort().values
        scale = torch.rand(cout, device=device, dtype=dtype)

        def conv(x=x, w=w, ik=ik, ok=ok, scale=scale):
            return ops.channel_sparse_conv2d(x, w, in_keep=ik, out_keep=ok, scale=scale, padding=1, compact_output=True)

        cases[f"sparse_conv fwd {name} {sparsity:.0%} dispatch"] = conv
        if device == "cuda" and anp_kernels.available("triton", device):
            cases[f"sparse_conv fwd {name} {sparsity:.0%} triton"] = on_backend("triton", conv)
    return cases


def cases(device: str, small: bool = False) -> dict[str, Callable[[], object]]:
    shape = (4, 8, 6, 6) if small else FEATURE
    dtype = torch.float16 if device == "cuda" else torch.float32
    return {**_elementwise_cases(device, shape), **_conv_cases(device, 2 if small else 128, dtype)}


def profile(device: str, small: bool = False) -> list[str]:
    """Run every case once (warm-up), then once more inside the profiler range; the case names in order."""
    todo = cases(device, small)
    for fn in todo.values():
        fn()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    for name, fn in todo.items():
        if cuda:
            torch.cuda.nvtx.range_push(name)
        fn()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_pop()
    if cuda:
        torch.cuda.profiler.stop()
    return list(todo)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny shapes (a check of the calls, not a profile)")
    args = p.parse_args(argv)
    for i, name in enumerate(profile(args.device, args.small)):
        print(f"case {i}: {name}", flush=True)


if __name__ == "__main__":
    main()
