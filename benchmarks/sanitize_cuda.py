"""Every kernel of one backend, forward and backward, once on small tensors: for compute-sanitizer.

    compute-sanitizer --tool memcheck python benchmarks/sanitize_cuda.py --device cuda
    python benchmarks/sanitize_cuda.py --device cpu        (the same calls on the C++ CPU backend)
"""
from __future__ import annotations

import argparse

import torch

import anp_kernels
from anp_kernels import ops


def run(device: str, backend: str) -> list[str]:
    done = []
    with anp_kernels.use_backend(backend):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for fmt in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(3, 5, 6, 7, device=device, dtype=dtype).to(memory_format=fmt).requires_grad_()
                x_adv = (x.detach() + 0.1).requires_grad_()
                a = (torch.rand(5, device=device) + 0.3).requires_grad_()
                b = (torch.rand(5, device=device) + 0.5).requires_grad_()
                out = ops.masked_activation(x, a, b, seed=1)
                vs = ops.channel_distortion(out, x_adv).sum()
                z = ops.sample_mask(a, b, 3, seed=2)
                scaled = ops.channel_scale(x, z)
                conv = ops.channel_sparse_conv2d(x, torch.randn(4, 5, 3, 3, device=device, dtype=dtype,
                                                                requires_grad=True), None, padding=1,
                                                 in_keep=torch.tensor([0, 2, 4], device=device),
                                                 out_keep=torch.tensor([1, 3], device=device))
                kl = ops.kl_kumaraswamy_beta(a.to(dtype), b.to(dtype), 1e-4)
                (vs + scaled.float().sum() + conv.float().sum() + kl.float()).backward()
                done.append(f"{dtype} {fmt}")
        u_pi, u_z = anp_kernels.mask_noise(3, 4, 5, device)
        ops.relaxed_mask(torch.rand(5, device=device) + 0.3, torch.rand(5, device=device) + 0.5, u_pi, u_z)
    if device == "cuda":
        torch.cuda.synchronize()
    return done


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", nargs="*", default=None, help="default: cuda and triton on CUDA, cpu on CPU")
    args = p.parse_args()
    for backend in args.backend or (["cuda", "triton"] if args.device == "cuda" else ["cpu"]):
        print(backend, run(args.device, backend))


if __name__ == "__main__":
    main()
