"""`anp demo`: what the library does, on scikit-learn's 8x8 digits (no download)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import _backend, ops


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0


def run_demo(quick: bool = False, out: str = "anp_demo") -> int:
    """Run the fused ANP ops on digits features and write a small report."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = _digits()[: 256 if quick else 1024]
    print(f"[1/3] data: {x.shape[0]} digits images {tuple(x.shape[1:])}, values in [0, 1]")
    print(f"[2/3] backends on cpu: {_backend.backend('cpu')}")
    conv = torch.nn.Conv2d(1, 16, 3, padding=1)
    a = torch.full((16,), 0.313, requires_grad=True)  # softplus(-1.0): the ANP-VS initial a
    b = torch.full((16,), 1.0, requires_grad=True)
    x_adv = (x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    start = time.perf_counter()
    h = torch.relu(ops.masked_activation(conv(x), a, b, seed=0))
    h_adv = torch.relu(ops.masked_activation(conv(x_adv), a, b, seed=0))
    vs = ops.vs_loss([(h, h_adv)])
    kl = ops.kl_kumaraswamy_beta(a, b, alpha=1e-4)
    (vs + kl * 1e-4).backward()
    seconds = time.perf_counter() - start
    keep = ops.expected_keep(a, b)
    report = {
        "images": int(x.shape[0]),
        "vs_loss": float(vs.detach()),
        "kl": float(kl.detach()),
        "expected_keep_mean": float(keep.detach().mean()),
        "grad_a_norm": float(a.grad.norm()),
        "seconds": seconds,
        "backends": _backend.backend("cpu"),
    }
    (out_dir / "ops_demo.json").write_text(json.dumps(report, indent=2))
    print(f"[3/3] masked conv features: VS loss {report['vs_loss']:.4f}, KL {report['kl']:.1f}, "
          f"mean E[pi] {report['expected_keep_mean']:.3f}, fwd+bwd {seconds * 1e3:.1f} ms")
    print(f"report written to {out_dir / 'ops_demo.json'}")
    return 0
