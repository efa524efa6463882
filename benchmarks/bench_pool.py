"""2x2 max pooling (inference): ATen's F.max_pool2d against `ops.max_pool2x2`, with a ReLU before it.

The shapes are the inputs of VGG-16's five pools (CIFAR-10, batch 64), dense and compact at the
paper's unit sparsity (the widths `bench_deploy.py`'s compact model keeps), in NCHW and NHWC. Per
shape, in one interleaved run: ATen's ReLU then ATen's pool (what the plain modules run), ATen's
ReLU then our pool (`fast_pooling`), and our pool with the ReLU fused (`serving_form`).

    python benchmarks/bench_pool.py [--rounds 15] [--batch 64]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from anp_kernels import ops  # noqa: E402
from anp_kernels.profile import latencies  # noqa: E402
from _harness import stamp, write_results  # noqa: E402

# (channels, spatial size) of the tensors VGG-16's pools read (CIFAR-10)
DENSE = [(64, 32), (128, 16), (256, 8), (512, 4), (512, 2)]
COMPACT = [(16, 32), (32, 16), (64, 8), (120, 4), (32, 2)]  # bench_deploy's model at 76.5% unit sparsity


def measure(model: str, channels: int, size: int, batch: int, nhwc: bool, rounds: int) -> dict:
    x = torch.randn(batch, channels, size, size)
    x = x.contiguous(memory_format=torch.channels_last) if nhwc else x
    fns = {"aten relu + aten pool": lambda: F.max_pool2d(F.relu(x), 2, 2),
           "aten relu + our pool": lambda: ops.max_pool2x2(F.relu(x)),
           "our pool, relu fused": lambda: ops.max_pool2x2(x, relu=True)}
    us = {k: v * 1e6 for k, v in latencies(fns, "cpu", runs=rounds, min_round_s=0.02).items()}
    return {"model": model, "shape": [batch, channels, size, size], "layout": "NHWC" if nhwc else "NCHW", "us": us}


def table(rows: list[dict], rounds: int) -> str:
    names = list(rows[0]["us"])
    lines = [f"Device: {stamp('cpu')}; {rounds} interleaved rounds of >= 0.02 s blocks, median us per call", "",
             "| model | input | layout | " + " | ".join(f"{n} us" for n in names) + " | ATen / fused |",
             "|---|---|---|" + "---:|" * (len(names) + 1)]
    for r in rows:
        us = r["us"]
        lines.append(f"| {r['model']} | {'x'.join(map(str, r['shape']))} | {r['layout']} | "
                     + " | ".join(f"{us[n]:.0f}" for n in names)
                     + f" | {us[names[0]] / us[names[-1]]:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    rows = [measure(model, c, s, args.batch, nhwc, args.rounds)
            for model, shapes in (("VGG-16 dense", DENSE), ("VGG-16 compact", COMPACT))
            for c, s in shapes for nhwc in (False, True)]
    write_results("pool_cpu", rows, table(rows, args.rounds))


if __name__ == "__main__":
    main()
