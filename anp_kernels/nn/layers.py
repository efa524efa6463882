"""ANPConv2d / ANPLinear: a conv or linear layer with a BetaBernoulliMask, placed as ANP-VS places it.

ANPConv2d masks the conv's *output* channels (conv -> mask -> BN -> ReLU, the BN and ReLU stay in
the model); ANPLinear masks the linear layer's *input* features (mask -> linear), as the ANP-VS
code masks the inputs of LeNet's and VGG's fully connected layers.

Once units are pruned (E[pi] <= threshold), in eval mode and in training alike, pruned units are
exact zeros and the layer computes only the kept units (the conv: `channel_sparse_conv2d` with the
mask fused into its epilogue, once at most SPARSE_CONV_KEPT of its channels are kept; the linear:
the kept input columns). A conv that keeps more runs dense with the pruned channels' scale at 0:
gathering, an odd-width conv and the scatter cost more than the few channels they skip (LeNet-5's
training step on this project's CPU: 1.25-1.32x an AT step with 14-26% of conv2 pruned through the
sparse conv, against 1.19x with nothing pruned). While nothing is pruned, training runs the dense
layer and the fused mask op; a conv in eval mode folds the deterministic scale into its weights
when they are smaller than its output (attacks run the eval network many times per step, so they
pay no extra pass over activations). While no parameter of the layer wants a gradient (inside
`attacks.frozen`) every eval conv and linear layer folds, once: the folded weights are reused by
every call until the layer's mode is next set, so an attack step runs the plain conv and linear ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .mask import BetaBernoulliMask

SPARSE_CONV_KEPT = 0.75  # the channel-sparse conv runs once a conv keeps at most this share of its outputs


class ANPLayer(nn.Module):
    """Shared parts: the wrapped layer (its weights, unchanged) and its mask."""

    def __init__(self, layer: nn.Module, num_units: int, **mask_kwargs):
        super().__init__()
        self.layer = layer
        self.mask = BetaBernoulliMask(num_units, **mask_kwargs)
        self._fold_cache: tuple | None = None  # (parameter versions, folded weight, bias): see _folded

    def _constant(self) -> bool:
        """No parameter of the layer wants a gradient (inside `attacks.frozen`): eval folds are cached."""
        return not any(p.requires_grad for p in self.parameters())

    def _folded(self, fold):
        """fold() -> (weight, bias) with the eval scale folded in; cached while no parameter of the
        layer wants a gradient (inside `attacks.frozen`: an attack's every step reuses one fold) and
        released when the layer's mode is set (`train()`/`eval()`, as the attacks do afterwards)."""
        if not self._constant() or torch.compiler.is_compiling():  # traced: folded inside the graph
            return fold()
        key = (tuple((p._version, p.data_ptr()) for p in self.parameters()), self.mask.threshold)
        if self._fold_cache is None or self._fold_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # cached: usable outside inference mode too
                self._fold_cache = (key, fold())
        return self._fold_cache[1]

    def train(self, mode: bool = True):
        self._fold_cache = None
        return super().train(mode)

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def _scale_and_kept(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The scale ([B, C] sampled in training, [C] in eval) and the kept units' indices."""
        kept = self.mask.keep_index().to(self.weight.device)
        if self.training:
            return self.mask.sample(batch), kept
        return self.mask.eval_scale().to(self.weight.device), kept


class ANPConv2d(ANPLayer):
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
        active = self.mask.num_active()
        if active == conv.out_channels or active > SPARSE_CONV_KEPT * conv.out_channels:
            if not self.training and (self._constant() or self._fold_is_cheaper(x)):  # 0 on pruned channels
                return conv._conv_forward(x, *self._folded(self._fold))
            if active == conv.out_channels or not self.training:
                return self.mask(conv(x))  # the dense conv, then the fused mask
            return ops.channel_scale(conv(x), self._sample_zeroing_pruned(x.shape[0]))
        scale, kept = self._scale_and_kept(x.shape[0])
        return ops.channel_sparse_conv2d(x, conv.weight, conv.bias, out_keep=kept, scale=scale.to(x.dtype),
                                         stride=conv.stride, padding=conv.padding, dilation=conv.dilation)

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        conv = self.layer
        s = self.mask.eval_scale().to(device=conv.weight.device, dtype=conv.weight.dtype)
        return conv.weight * s.view(-1, 1, 1, 1), conv.bias * s if conv.bias is not None else None

    def _sample_zeroing_pruned(self, batch: int) -> torch.Tensor:
        """The training mask sample [B, C] with the pruned channels at exactly 0 (as the sparse conv has them)."""
        keep = torch.zeros(self.mask.num_features, device=self.weight.device)
        keep[self.mask.keep_index().to(self.weight.device)] = 1.0
        return self.mask.sample(batch) * keep


class ANPLinear(ANPLayer):
    """Linear layer whose input features carry a Beta-Bernoulli mask: linear(x * z)."""

    def __init__(self, linear: nn.Linear, **mask_kwargs):
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"ANPLinear wraps an nn.Linear, got {type(linear).__name__}")
        super().__init__(linear, linear.in_features, **mask_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lin = self.layer
        if x.dim() != 2 or x.shape[1] != lin.in_features:
            raise ValueError(f"ANPLinear({lin.in_features} -> {lin.out_features}) expects [N, {lin.in_features}] "
                             f"inputs, got shape {tuple(x.shape)}")
        if not self.training and self._constant():
            weight, bias, kept = self._folded(self._fold)  # a constant eval layer: the scale in the weights
            return F.linear(x if kept is None else x.index_select(1, kept), weight, bias)
        if self.mask.num_active() == lin.in_features:
            return lin(self.mask(x))
        scale, kept = self._scale_and_kept(x.shape[0])
        x_kept = x.index_select(1, kept) * scale.index_select(-1, kept).to(x.dtype)
        return F.linear(x_kept, lin.weight.index_select(1, kept), lin.bias)

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The eval scale folded into the weight's input columns, the pruned ones dropped (kept: their
        indices, None when every input is kept)."""
        lin = self.layer
        scale = self.mask.eval_scale().to(device=lin.weight.device, dtype=lin.weight.dtype)
        if self.mask.num_active() == lin.in_features:
            return lin.weight * scale, lin.bias, None
        kept = self.mask.keep_index().to(lin.weight.device)
        return lin.weight.index_select(1, kept) * scale.index_select(0, kept), lin.bias, kept
