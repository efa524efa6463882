"""End-to-end benchmark of the fused ANP ops at ANP-VS feature shapes.

For each feature shape of VGG-16 (CIFAR-10, batch 128) and LeNet-5 (MNIST, batch 64):
forward+backward of `channel_distortion` and of `masked_activation` (training), as
the library runs them (automatic backend) against the eager reference and
torch.compile of the reference, measured in one interleaved run; plus peak extra
memory. Per-network totals weight each shape by how many layers have it.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--rounds 15] [--network lenet5|vgg16|all]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import anp_kernels  # noqa: E402
from anp_kernels import ops  # noqa: E402
from _harness import interleaved_medians, peak_extra_bytes, stamp, write_results  # noqa: E402

# (shape, number of masked layers with that feature shape)
NETWORKS = {
    "lenet5": [((64, 20, 24, 24), 1), ((64, 50, 8, 8), 1), ((64, 800), 1), ((64, 500), 1)],
    "vgg16": [((128, 64, 32, 32), 2), ((128, 128, 16, 16), 2), ((128, 256, 8, 8), 3),
              ((128, 512, 4, 4), 3), ((128, 512, 2, 2), 3), ((128, 512), 2)],
}


def _distortion_case(shape, device):
    z = torch.randn(shape, device=device, requires_grad=True)
    w = (z.detach() + 0.1 * torch.randn_like(z)).requires_grad_()
    grad = torch.rand(shape[1], device=device)
    compiled = torch.compile(ops.channel_distortion_reference, dynamic=False)

    def run(fn):
        return lambda: torch.autograd.grad(fn(z, w), (z, w), grad)

    return {"fused": run(ops.channel_distortion), "eager": run(ops.channel_distortion_reference),
            "compiled": run(compiled)}, 2 * z.numel() * z.element_size() * 2


def _mask_case(shape, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    a = (torch.rand(shape[1], device=device) + 0.3).requires_grad_()
    b = (torch.rand(shape[1], device=device) + 0.5).requires_grad_()
    grad = torch.randn(shape, device=device)
    reference = lambda x, a, b: ops.masked_activation_reference(x, a, b, 0.1, 1234)  # noqa: E731
    compiled = torch.compile(reference, dynamic=False)
    fused = lambda x, a, b: ops.masked_activation(x, a, b, 0.1, seed=1234)  # noqa: E731

    def run(fn):
        return lambda: torch.autograd.grad(fn(x, a, b), (x, a, b), grad)

    return {"fused": run(fused), "eager": run(reference), "compiled": run(compiled)}, 5 * x.numel() * x.element_size()


CASES = {"channel_distortion": _distortion_case, "masked_activation": _mask_case}


def run(device: str, rounds: int, networks: list[str]) -> dict:
    torch._dynamo.config.cache_size_limit = 64
    rows = []
    for net in networks:
        for shape, count in NETWORKS[net]:
            for op, make in CASES.items():
                fns, bytes_moved = make(shape, device)
                t = interleaved_medians(fns, device, rounds=rounds)
                mem = {name: peak_extra_bytes(fn, device) for name, fn in fns.items() if name != "compiled"}
                rows.append(dict(network=net, op=op, shape=list(shape), layers=count, seconds=t,
                                 peak_extra_bytes=mem, fused_gbps=bytes_moved / t["fused"] / 1e9))
                print(f"{net:7s} {op:19s} {str(shape):22s} fused {t['fused'] * 1e3:8.3f} ms  "
                      f"eager {t['eager'] * 1e3:8.3f} ms ({t['eager'] / t['fused']:.2f}x)  "
                      f"compiled {t['compiled'] * 1e3:8.3f} ms ({t['compiled'] / t['fused']:.2f}x)", flush=True)
    return {"device": stamp(device), "backend": anp_kernels.backend(device), "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [f"Device: {result['device']}", "",
             "| network | op | shape | fused ms | eager ms | compiled ms | vs eager | vs compile | "
             "peak extra MB fused / eager | fused GB/s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    totals: dict = {}
    for r in result["rows"]:
        t, m = r["seconds"], r["peak_extra_bytes"]
        lines.append(f"| {r['network']} | {r['op']} | {tuple(r['shape'])} x{r['layers']} | {t['fused'] * 1e3:.3f} | "
                     f"{t['eager'] * 1e3:.3f} | {t['compiled'] * 1e3:.3f} | {t['eager'] / t['fused']:.2f}x | "
                     f"{t['compiled'] / t['fused']:.2f}x | {m['fused'] / 2**20:.1f} / {m['eager'] / 2**20:.1f} | "
                     f"{r['fused_gbps']:.1f} |")
        key = (r["network"], r["op"])
        acc = totals.setdefault(key, {"fused": 0.0, "eager": 0.0, "compiled": 0.0})
        for name in acc:
            acc[name] += t[name] * r["layers"]
    lines += ["", "Per network (every masked layer once, fwd+bwd):", "",
              "| network | op | fused ms | eager ms | compiled ms | vs eager | vs compile |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for (net, op), acc in totals.items():
        lines.append(f"| {net} | {op} | {acc['fused'] * 1e3:.2f} | {acc['eager'] * 1e3:.2f} | "
                     f"{acc['compiled'] * 1e3:.2f} | {acc['eager'] / acc['fused']:.2f}x | "
                     f"{acc['compiled'] / acc['fused']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--network", default="all", choices=["all", *NETWORKS])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    nets = list(NETWORKS) if args.network == "all" else [args.network]
    result = run(args.device, args.rounds, nets)
    write_results(f"ops_{args.device}", result, to_markdown(result), args.out)


if __name__ == "__main__":
    main()
