"""End-to-end benchmark of the fused ANP ops at ANP-VS feature shapes.

For each feature shape of VGG-16 (CIFAR-10, batch 128) and LeNet-5 (MNIST, batch 64):
forward+backward of `channel_distortion` and of `masked_activation` (training), as
the library runs them (automatic backend) against the eager reference and
torch.compile of the reference, measured in one interleaved run; plus peak extra
memory. Per-network totals weight each shape by how many layers have it.

"fused" is the automatic backend; each other kernel backend that can run on the device (on CUDA the
`cuda` kernels beside the automatic `triton`) is timed in the same rounds. GB/s counts the bytes a
fused fwd+bwd must move (distortion: z, z_adv read twice, both gradients written, 6 tensors; mask:
x read twice, y written, grad_y read, grad_x written, 5 tensors) and is set against the device's
copy bandwidth (dst.copy_(src) of COPY_MB MiB, bytes read + written), measured in the same run;
tensors that fit in the last-level cache can exceed 100% of it.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--rounds 15] [--network lenet5|vgg16|all]
        [--dtypes float32 float16 bfloat16]
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
import anp_kernels  # noqa: E402
from anp_kernels import ops  # noqa: E402
import _harness  # noqa: E402
from _harness import DTYPES, interleaved_medians, on_backend, peak_extra_bytes, stamp, write_results  # noqa: E402

COPY_MB = {"cuda": 1024, "cpu": 256}

# (shape, number of masked layers with that feature shape)
NETWORKS = {  # VGG-16 first: its large shapes carry the GPU goals, and a run cut short keeps them
    "vgg16": [((128, 64, 32, 32), 2), ((128, 128, 16, 16), 2), ((128, 256, 8, 8), 3),
              ((128, 512, 4, 4), 3), ((128, 512, 2, 2), 3), ((128, 512), 2)],
    "lenet5": [((64, 20, 24, 24), 1), ((64, 50, 8, 8), 1), ((64, 800), 1), ((64, 500), 1)],
}


def other_backends(device: str) -> list[str]:
    """Kernel backends that can run on `device` beside the automatic one (timed as their own columns)."""
    return _harness.other_backends("channel_distortion", device)


def _with_backends(fused, device: str) -> dict:
    """{"fused": the automatic backend, <backend>: the same call forced to that backend}."""
    return {"fused": fused, **{name: on_backend(name, fused) for name in other_backends(device)}}


def _distortion_case(shape, device, dtype=torch.float32):
    z = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    w = (z.detach() + 0.1 * torch.randn_like(z)).requires_grad_()
    grad = torch.rand(shape[1], device=device)
    compiled = torch.compile(ops.channel_distortion_reference, dynamic=False)

    def run(fn):
        return lambda: torch.autograd.grad(fn(z, w), (z, w), grad)

    return {**_with_backends(run(ops.channel_distortion), device), "eager": run(ops.channel_distortion_reference),
            "compiled": run(compiled)}, 6 * z.numel() * z.element_size()


def _mask_case(shape, device, dtype=torch.float32):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    a = (torch.rand(shape[1], device=device) + 0.3).requires_grad_()
    b = (torch.rand(shape[1], device=device) + 0.5).requires_grad_()
    grad = torch.randn(shape, device=device, dtype=dtype)
    reference = lambda x, a, b: ops.masked_activation_reference(x, a, b, 0.1, 1234)  # noqa: E731
    compiled = torch.compile(reference, dynamic=False)
    fused = lambda x, a, b: ops.masked_activation(x, a, b, 0.1, seed=1234)  # noqa: E731

    def run(fn):
        return lambda: torch.autograd.grad(fn(x, a, b), (x, a, b), grad)

    return ({**_with_backends(run(fused), device), "eager": run(reference), "compiled": run(compiled)},
            5 * x.numel() * x.element_size())


def copy_gbps(device: str, rounds: int) -> float:
    """The device's copy bandwidth in GB/s: dst.copy_(src) of COPY_MB MiB, bytes read plus written."""
    n = COPY_MB["cuda" if torch.device(device).type == "cuda" else "cpu"] * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = interleaved_medians({"copy": lambda: dst.copy_(src)}, device, rounds=rounds, min_round_s=0.02)["copy"]
    return 2 * src.numel() * src.element_size() / t / 1e9


CASES = {"channel_distortion": _distortion_case, "masked_activation": _mask_case}


def run(device: str, rounds: int, networks: list[str], dtypes: tuple[str, ...] = ("float32",),
        save: Callable[[dict], None] | None = None) -> dict:
    """Every (network, dtype, shape, op) row; `save(result so far)` after each row ("complete": False
    until the last), so that a run cut off by a time limit keeps what it measured."""
    torch._dynamo.config.cache_size_limit = 64
    copy = copy_gbps(device, rounds)
    head = {"device": stamp(device), "backend": anp_kernels.backend(device), "copy_gbps": copy,
            "other_backends": other_backends(device), "complete": False}
    rows = []
    for net, dtype in itertools.product(networks, dtypes):
        for (shape, count), (op, make) in itertools.product(NETWORKS[net], CASES.items()):
            fns, bytes_moved = make(shape, device, DTYPES[dtype])
            t = interleaved_medians(fns, device, rounds=rounds)
            mem = {name: peak_extra_bytes(fn, device) for name, fn in fns.items() if name != "compiled"}
            gbps = {name: bytes_moved / t[name] / 1e9 for name in fns if name not in ("eager", "compiled")}
            rows.append(dict(network=net, op=op, shape=list(shape), dtype=dtype, layers=count, seconds=t,
                             peak_extra_bytes=mem, fused_gbps=gbps["fused"], gbps=gbps, bytes_moved=bytes_moved,
                             share_of_copy={name: v / copy for name, v in gbps.items()}))
            print(f"{net:7s} {op:19s} {dtype:8s} {str(shape):22s} fused {t['fused'] * 1e3:8.3f} ms  "
                  f"eager {t['eager'] * 1e3:8.3f} ms ({t['eager'] / t['fused']:.2f}x)  "
                  f"compiled {t['compiled'] * 1e3:8.3f} ms ({t['compiled'] / t['fused']:.2f}x)  "
                  f"{gbps['fused']:.0f} GB/s ({gbps['fused'] / copy:.0%} of copy)", flush=True)
            if save:
                save({**head, "rows": list(rows)})
    return {**head, "complete": True, "rows": rows}


def _share(r: dict, name: str) -> str:
    return f"{r['share_of_copy'][name]:.0%}" if name in r.get("share_of_copy", {}) else "-"


def to_markdown(result: dict) -> str:
    copy = result.get("copy_gbps")
    lines = [f"Device: {result['device']}" + (f"; copy bandwidth {copy:.1f} GB/s (dst.copy_(src), read + written)"
                                              if copy else ""), "",
             "| network | op | dtype | shape | fused ms | eager ms | compiled ms | vs eager | vs compile | "
             "peak extra MB fused / eager | fused GB/s | % of copy |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        t, m = r["seconds"], r["peak_extra_bytes"]
        lines.append(f"| {r['network']} | {r['op']} | {r.get('dtype', 'float32')} | {tuple(r['shape'])} x{r['layers']} | "
                     f"{t['fused'] * 1e3:.3f} | {t['eager'] * 1e3:.3f} | {t['compiled'] * 1e3:.3f} | "
                     f"{t['eager'] / t['fused']:.2f}x | {t['compiled'] / t['fused']:.2f}x | "
                     f"{m['fused'] / 2**20:.1f} / {m['eager'] / 2**20:.1f} | {r['fused_gbps']:.1f} | {_share(r, 'fused')} |")
    return "\n".join(lines + _other_backends_table(result) + _totals_table(result))


def _other_backends_table(result: dict) -> list[str]:
    """The same rows on each kernel backend beside the automatic one (same rounds as the table above)."""
    lines = []
    for name in result.get("other_backends", []):
        lines += ["", f"On the `{name}` backend (timed in the same rounds):", "",
                  f"| network | op | dtype | shape | {name} ms | vs eager | vs compile | vs fused | GB/s | % of copy |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["rows"]:
            t = r["seconds"]
            lines.append(f"| {r['network']} | {r['op']} | {r.get('dtype', 'float32')} | {tuple(r['shape'])} | "
                         f"{t[name] * 1e3:.3f} | {t['eager'] / t[name]:.2f}x | {t['compiled'] / t[name]:.2f}x | "
                         f"{t['fused'] / t[name]:.2f}x | {r['gbps'][name]:.1f} | {_share(r, name)} |")
    return lines


def _totals_table(result: dict) -> list[str]:
    totals: dict = {}
    for r in result["rows"]:
        acc = totals.setdefault((r["network"], r["op"], r.get("dtype", "float32")),
                                {"fused": 0.0, "eager": 0.0, "compiled": 0.0})
        for name in acc:
            acc[name] += r["seconds"][name] * r["layers"]
    lines = ["", "Per network (every masked layer once, fwd+bwd):", "",
             "| network | op | dtype | fused ms | eager ms | compiled ms | vs eager | vs compile |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for (net, op, dtype), acc in totals.items():
        lines.append(f"| {net} | {op} | {dtype} | {acc['fused'] * 1e3:.2f} | {acc['eager'] * 1e3:.2f} | "
                     f"{acc['compiled'] * 1e3:.2f} | {acc['eager'] / acc['fused']:.2f}x | "
                     f"{acc['compiled'] / acc['fused']:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--network", default="all", choices=["all", *NETWORKS])
    parser.add_argument("--dtypes", nargs="*", default=["float32"], choices=list(DTYPES))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    nets = list(NETWORKS) if args.network == "all" else [args.network]
    partial = args.network != "all" or args.dtypes != ["float32"]
    name = f"ops_{args.device}" + ("_partial" if partial else "")
    result = run(args.device, args.rounds, nets, tuple(args.dtypes),
                 save=lambda so_far: write_results(name, so_far, to_markdown(so_far), args.out, echo=False))
    write_results(name, result, to_markdown(result), args.out)


if __name__ == "__main__":
    main()
