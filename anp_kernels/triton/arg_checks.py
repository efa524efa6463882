"""Shape, dtype and device checks of direct anp_triton::* calls: the same rules and messages as
csrc/op_checks.h, so a bad call fails clearly instead of a kernel reading out of bounds. Metadata only
(no synchronisation); the public functions in anp_kernels/ops check values before they get here."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _fail(op: str, message: str) -> None:
    raise RuntimeError(f"anp_kernels.{op}: {message}")


def same_device(op: str, **tensors: Optional[Tensor]) -> None:
    named = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            _fail(op, f"{name} is on {t.device} but {first_name} is on {first.device}")


def features(op: str, name: str, x: Tensor) -> None:
    if x.dim() < 2:
        _fail(op, f"{name} must have rank >= 2 ([N, C, ...]), got shape {list(x.shape)}")
    if not x.is_floating_point():
        _fail(op, f"{name} must be floating point, got {x.dtype}")


def same_shape(op: str, name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        _fail(op, f"{name_a} {list(a.shape)} and {name_b} {list(b.shape)} must have the same shape")
    if a.dtype != b.dtype:
        _fail(op, f"{name_a} ({a.dtype}) and {name_b} ({b.dtype}) must have the same dtype")


def mask_params(op: str, a: Tensor, b: Tensor, channels: int = -1) -> None:
    if a.dim() != 1 or b.dim() != 1 or a.shape != b.shape:
        _fail(op, f"a and b must be 1-D of one shape, got {list(a.shape)} and {list(b.shape)}")
    if not (a.is_floating_point() and b.is_floating_point()):
        _fail(op, f"a and b must be floating point, got {a.dtype} and {b.dtype}")
    if channels >= 0 and a.numel() != channels:
        _fail(op, f"a and b have {a.numel()} elements, x has {channels} channels (x.size(1))")


def distortion(op: str, z: Tensor, z_adv: Tensor, grad: Optional[Tensor] = None) -> None:
    features(op, "z", z)
    same_shape(op, "z", z, "z_adv", z_adv)
    if grad is not None and grad.numel() != z.shape[1]:
        _fail(op, f"grad has {grad.numel()} elements, z has {z.shape[1]} channels")
    same_device(op, z=z, z_adv=z_adv, grad=grad)


def relaxed_mask(a: Tensor, b: Tensor, u_pi: Tensor, u_z: Tensor) -> None:
    mask_params("relaxed_mask", a, b)
    if u_pi.dim() != 1 or u_pi.numel() != a.numel():
        _fail("relaxed_mask", f"u_pi must be [{a.numel()}], got {list(u_pi.shape)}")
    if u_z.dim() != 2 or u_z.shape[1] != a.numel():
        _fail("relaxed_mask", f"u_z must be [B, {a.numel()}], got {list(u_z.shape)}")
    same_device("relaxed_mask", a=a, b=b, u_pi=u_pi, u_z=u_z)


def sample_mask(a: Tensor, b: Tensor, batch_size: int) -> None:
    mask_params("sample_mask", a, b)
    if batch_size < 0:
        _fail("sample_mask", f"batch_size must be >= 0, got {batch_size}")
    same_device("sample_mask", a=a, b=b)


def masked_activation(op: str, x: Tensor, a: Tensor, b: Tensor, grad: Optional[Tensor] = None) -> None:
    features(op, "x", x)
    mask_params(op, a, b, x.shape[1])
    if grad is not None:
        same_shape(op, "grad", grad, "x", x)
    same_device(op, x=x, a=a, b=b, grad=grad)


def channel_scale(op: str, x: Tensor, z: Tensor, grad: Optional[Tensor] = None) -> None:
    features(op, "x", x)
    if tuple(z.shape) not in ((x.shape[1],), (x.shape[0], x.shape[1])):
        _fail(op, f"z must be [C] or [N, C] for x {list(x.shape)}, got {list(z.shape)}")
    if grad is not None:
        same_shape(op, "grad", grad, "x", x)
    same_device(op, x=x, z=z, grad=grad)


def kumaraswamy_kl(op: str, a: Tensor, b: Tensor, grad: Optional[Tensor] = None) -> None:
    mask_params(op, a, b)
    if grad is not None and grad.numel() != 1:
        _fail(op, f"grad must hold one value, got {list(grad.shape)}")
    same_device(op, a=a, b=b, grad=grad)


def sparse_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_keep: Tensor, out_keep: Tensor,
                scale: Optional[Tensor], stride, padding, dilation) -> None:
    op = "channel_sparse_conv2d"
    if x.dim() != 4 or weight.dim() != 4:
        _fail(op, f"x and weight must be 4-D, got {list(x.shape)} and {list(weight.shape)}")
    if x.shape[1] != weight.shape[1]:
        _fail(op, f"x has {x.shape[1]} channels, weight expects {weight.shape[1]} (grouped convs are not supported)")
    for name, keep in (("in_keep", in_keep), ("out_keep", out_keep)):
        if keep.dim() != 1 or keep.dtype != torch.int64:
            _fail(op, f"{name} must be a 1-D int64 index, got {keep.dtype} of shape {list(keep.shape)}")
    cout = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (cout,):
        _fail(op, f"bias must be [{cout}], got {list(bias.shape)}")
    if scale is not None and tuple(scale.shape) not in ((cout,), (x.shape[0], cout)):
        _fail(op, f"scale must be [{cout}] or [{x.shape[0]}, {cout}], got {list(scale.shape)}")
    if not (len(stride) == len(padding) == len(dilation) == 2 and min(*stride, *dilation) > 0 and min(padding) >= 0):
        _fail(op, f"stride {list(stride)} and dilation {list(dilation)} must be two positive values, "
                  f"padding {list(padding)} two values >= 0")
    same_device(op, x=x, weight=weight, bias=bias, in_keep=in_keep, out_keep=out_keep, scale=scale)
