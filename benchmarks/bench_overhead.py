"""Fixed cost per call of the ANP ops' Python entry points, on a tensor small enough that the math is
negligible: what a launch-bound training step (LeNet-5, PGD) pays per masked-layer call.

Each row is one forward + backward, timed in one interleaved run against its peers:
  aten x * z            the reference math (native multiply, native autograd)
  raw op                torch.ops.anp_kernels.channel_scale (the kernel with its registered autograd)
  ops.channel_scale     the public function (argument checks + backend choice + the raw op)
  masked_activation, values checked / not checked
                        the fused mask op with and without the checks that read a and b (finite,
                        > 0); on CUDA each such check is a host-device synchronisation
  mask module           BetaBernoulliMask in training mode: softplus of its parameters, a seed, the
                        fused op (its parameters are positive by construction: no value checks)
  kl                    ops.kl_kumaraswamy_beta with and without value checks

    python benchmarks/bench_overhead.py [--rounds 15] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import _backend, ops  # noqa: E402
from anp_kernels.nn import BetaBernoulliMask  # noqa: E402
from anp_kernels.ops.channel_scale import channel_scale_reference  # noqa: E402
from _harness import interleaved_medians, stamp, write_results  # noqa: E402

SHAPE = (4, 8, 3, 3)


def _fwd_bwd(fn, *inputs):
    def run():
        out = fn()
        out.sum().backward()
        for t in inputs:
            t.grad = None
    return run


def candidates(device: str) -> dict:
    x = torch.randn(SHAPE, device=device, requires_grad=True)
    z = torch.rand(SHAPE[1], device=device, requires_grad=True)
    a = torch.full((SHAPE[1],), 0.5, device=device, requires_grad=True)
    b = torch.full((SHAPE[1],), 1.0, device=device, requires_grad=True)
    mask = BetaBernoulliMask(SHAPE[1]).to(device).train()
    raw = _backend.kernels(_backend.backend_for("channel_scale", x))
    return {
        "aten x * z": _fwd_bwd(lambda: channel_scale_reference(x, z), x, z),
        "raw op": _fwd_bwd(lambda: raw.channel_scale(x, z), x, z),
        "ops.channel_scale": _fwd_bwd(lambda: ops.channel_scale(x, z), x, z),
        "masked_activation, values checked": _fwd_bwd(lambda: ops.masked_activation(x, a, b, seed=1), x, a, b),
        "masked_activation, not checked": _fwd_bwd(
            lambda: ops.masked_activation(x, a, b, seed=1, check_values=False), x, a, b),
        "mask module": _fwd_bwd(lambda: mask(x), x, *mask.parameters()),
        "kl, values checked": _fwd_bwd(lambda: ops.kl_kumaraswamy_beta(a, b), a, b),
        "kl, not checked": _fwd_bwd(lambda: ops.kl_kumaraswamy_beta(a, b, check_values=False), a, b),
    }


def table(us: dict, device: str, rounds: int) -> str:
    base = us["aten x * z"]
    lines = [f"Device: {stamp(device)}; input {'x'.join(map(str, SHAPE))}, forward + backward; "
             f"{rounds} interleaved rounds of >= 0.05 s blocks, median us per call", "",
             "| call | us | vs aten x * z |", "|---|---:|---:|"]
    lines += [f"| {name} | {t:.1f} | {t / base:.2f}x |" for name, t in us.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    fns = candidates(args.device)
    us = {k: v * 1e6 for k, v in interleaved_medians(fns, args.device, args.rounds, min_round_s=0.05).items()}
    data = {"device": args.device, "stamp": stamp(args.device), "shape": list(SHAPE), "us": us}
    out = {"out": args.out} if args.out else {}
    write_results(f"overhead_{args.device}", data, table(us, args.device, args.rounds), **out)


if __name__ == "__main__":
    main()
