"""ANPConv2d / ANPLinear: a conv or linear layer with a BetaBernoulliMask on its output units.

Placed as in ANP-VS: conv -> mask -> (BN -> ReLU, which stay in the model). Once units are
pruned (E[pi] <= threshold), in eval mode and in training alike, the layer computes only the
kept outputs (channel_sparse_conv2d with the mask fused into the epilogue); pruned outputs are
exact zeros. While nothing is pruned, training runs the dense layer and the fused mask op; eval
folds the deterministic scale into the weights when they are smaller than the output (attacks
run the eval network many times per step, so no extra pass over activations is paid there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .mask import BetaBernoulliMask


class _ANPLayer(nn.Module):
    """Shared parts: the wrapped layer's weights and the mask on its outputs."""

    def __init__(self, layer: nn.Module, num_units: int, **mask_kwargs):
        super().__init__()
        self.layer = layer
        self.mask = BetaBernoulliMask(num_units, **mask_kwargs)

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def _scale_and_kept(self, batch: int):
        kept = self.mask.keep_index().to(self.weight.device)
        if self.training:
            return self.mask.sample(batch), kept
        return self.mask.eval_scale().to(self.weight.device), kept


class ANPConv2d(_ANPLayer):
    """Conv2d whose output channels carry a Beta-Bernoulli mask (groups=1)."""

    def __init__(self, conv: nn.Conv2d, **mask_kwargs):
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"ANPConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError("ANPConv2d supports groups=1 convolutions only")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("ANPConv2d supports numeric zero padding only")
        super().__init__(conv, conv.out_channels, **mask_kwargs)

    def _fold_is_cheaper(self, x: torch.Tensor) -> bool:
        """Scaling the weight costs weight.numel(); scaling the output about N*C_out*H*W/stride^2."""
        if x.dim() != 4:
            return False
        stride = self.layer.stride[0] * self.layer.stride[1]
        return self.weight.numel() * stride <= x.shape[0] * self.weight.shape[0] * x.shape[2] * x.shape[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.layer
        if self.mask.num_active() == conv.out_channels:
            if not self.training and self._fold_is_cheaper(x):
                s = self.mask.eval_scale().to(device=x.device, dtype=conv.weight.dtype)
                bias = conv.bias * s if conv.bias is not None else None
                return conv._conv_forward(x, conv.weight * s.view(-1, 1, 1, 1), bias)
            return self.mask(conv(x))  # nothing pruned: the dense conv, then the fused mask
        scale, kept = self._scale_and_kept(x.shape[0])
        return ops.channel_sparse_conv2d(x, conv.weight, conv.bias, out_keep=kept, scale=scale.to(x.dtype),
                                         stride=conv.stride, padding=conv.padding, dilation=conv.dilation)


class ANPLinear(_ANPLayer):
    """Linear layer whose output units carry a Beta-Bernoulli mask."""

    def __init__(self, linear: nn.Linear, **mask_kwargs):
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"ANPLinear wraps an nn.Linear, got {type(linear).__name__}")
        super().__init__(linear, linear.out_features, **mask_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lin = self.layer
        if self.mask.num_active() == lin.out_features:
            return self.mask(lin(x))
        scale, kept = self._scale_and_kept(x.shape[0])
        bias = lin.bias.index_select(0, kept) if lin.bias is not None else None
        y = F.linear(x, lin.weight.index_select(0, kept), bias) * scale.index_select(-1, kept).to(x.dtype)
        return y.new_zeros(*x.shape[:-1], lin.out_features).index_copy(-1, kept, y)
