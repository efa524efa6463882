"""Shared tensor factories for the op tests."""
import torch


def make_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: contiguous, channels_last or a strided slice."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        if t.dim() < 3:
            return t.contiguous()
        perm = (0, *range(2, t.dim()), 1)
        inv = [0] * t.dim()
        for i, p in enumerate(perm):
            inv[p] = i
        return t.permute(perm).contiguous().permute(inv)
    if layout == "strided":
        return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
    raise ValueError(layout)


def mask_params(c: int, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(c, generator=g) * 2 + 0.2).to(device=device, dtype=dtype)
    b = (torch.rand(c, generator=g) * 2 + 0.5).to(device=device, dtype=dtype)
    return a, b
