"""The anp_triton::* custom ops (same schemas as anp_kernels::*), backed by the Triton kernels.

typing.List, not list: torch 2.4's schema inference (the oldest torch the package declares) knows only the former."""
from typing import List, Optional

import torch
from torch import Tensor

from . import arg_checks, distortion, kl, mask, sparse_conv


@torch.library.custom_op("anp_triton::channel_distortion", mutates_args=())
def channel_distortion(z: Tensor, z_adv: Tensor) -> Tensor:
    arg_checks.distortion("channel_distortion", z, z_adv)
    return distortion.forward(z, z_adv)


@torch.library.custom_op("anp_triton::channel_distortion_backward", mutates_args=())
def channel_distortion_backward(grad: Tensor, z: Tensor, z_adv: Tensor) -> tuple[Tensor, Tensor]:
    arg_checks.distortion("channel_distortion_backward", z, z_adv, grad)
    return distortion.backward(grad, z, z_adv)


@torch.library.custom_op("anp_triton::relaxed_mask", mutates_args=())
def relaxed_mask(a: Tensor, b: Tensor, u_pi: Tensor, u_z: Tensor, temperature: float) -> Tensor:
    arg_checks.relaxed_mask(a, b, u_pi, u_z)
    return mask.relaxed(a, b, u_pi, u_z, temperature)


@torch.library.custom_op("anp_triton::sample_mask", mutates_args=())
def sample_mask(a: Tensor, b: Tensor, batch_size: int, temperature: float, seed: int) -> Tensor:
    arg_checks.sample_mask(a, b, batch_size)
    return mask.sample(a, b, batch_size, temperature, seed)


@torch.library.custom_op("anp_triton::masked_activation", mutates_args=())
def masked_activation(x: Tensor, a: Tensor, b: Tensor, temperature: float, seed: int) -> Tensor:
    arg_checks.masked_activation("masked_activation", x, a, b)
    return mask.masked_forward(x, a, b, temperature, seed)


@torch.library.custom_op("anp_triton::masked_activation_backward", mutates_args=())
def masked_activation_backward(grad: Tensor, x: Tensor, a: Tensor, b: Tensor, temperature: float,
                               seed: int) -> tuple[Tensor, Tensor, Tensor]:
    arg_checks.masked_activation("masked_activation_backward", x, a, b, grad)
    return mask.masked_backward(grad, x, a, b, temperature, seed)


@torch.library.custom_op("anp_triton::kumaraswamy_kl", mutates_args=())
def kumaraswamy_kl(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    arg_checks.kumaraswamy_kl("kumaraswamy_kl", a, b)
    return kl.forward(a, b, alpha)


@torch.library.custom_op("anp_triton::kumaraswamy_kl_backward", mutates_args=())
def kumaraswamy_kl_backward(grad: Tensor, a: Tensor, b: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    arg_checks.kumaraswamy_kl("kumaraswamy_kl_backward", a, b, grad)
    return kl.backward(grad, a, b, alpha)


@torch.library.custom_op("anp_triton::channel_scale", mutates_args=())
def channel_scale(x: Tensor, z: Tensor) -> Tensor:
    arg_checks.channel_scale("channel_scale", x, z)
    return mask.scale_forward(x, z)


@torch.library.custom_op("anp_triton::channel_scale_backward", mutates_args=())
def channel_scale_backward(grad: Tensor, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    arg_checks.channel_scale("channel_scale_backward", x, z, grad)
    return mask.scale_backward(grad, x, z)


@torch.library.custom_op("anp_triton::channel_sparse_conv2d", mutates_args=())
def channel_sparse_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_keep: Tensor, out_keep: Tensor,
                          scale: Optional[Tensor], stride: List[int], padding: List[int], dilation: List[int],
                          compact_output: bool, save_input: bool, save_pre: bool,
                          nhwc: bool) -> tuple[Tensor, Tensor, Tensor]:
    arg_checks.sparse_conv(x, weight, bias, in_keep, out_keep, scale, stride, padding, dilation)
    # save_input and nhwc concern the gathered path: this kernel keeps no gathered input and reads x as it is
    return sparse_conv.forward(x, weight, bias, in_keep, out_keep, scale, stride, padding, dilation, compact_output,
                               save_pre)
