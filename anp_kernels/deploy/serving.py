"""serving_form: the exact inference rewrites of a plain (dense or compact) model, in place.

Each rewrite computes the same function in eval mode; together they leave the convolutions and
linear layers (whose cost compaction cuts) and as few other passes over the activations as
possible (ReLU, pooling and BatchNorm shrink only linearly with width, so in a compact model they
weigh more than in the dense one):
- BatchNorm folded into the conv / linear layer before it (`fold_batchnorm`);
- Dropout (a no-op in eval mode) replaced by nn.Identity;
- a ReLU feeding a 2x2 max pool fused into the pool (`fuse_relu_pooling`), the other 2x2 pools on
  our kernel (`fast_pooling`; ATen's ReLU and NCHW pooling cost 7-28x our fused op on maps of 4x4
  and larger, its channels-last pooling 1.1-5x: benchmarks/bench_pool.py);
- optionally channels-last (oneDNN's and cuDNN's preferred layout for convolutions).
Benchmarks time dense and compact models alike in this form, so that neither's speed is read off a
slow pass the other does not pay in proportion.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.pool import fast_pooling, fuse_relu_pooling
from .compact import _replace
from .fold_bn import fold_batchnorm

DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def drop_dropout(model: nn.Module) -> nn.Module:
    """Replace (in place) every Dropout layer by nn.Identity (what it computes in eval mode)."""
    for name, m in list(model.named_modules()):
        if name and isinstance(m, DROPOUTS):
            _replace(model, name, nn.Identity())
    return model


def serving_form(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """model (in place, in eval mode) with every rewrite above; the same logits (up to BatchNorm
    folding's rounding). For inference and attacks: it no longer trains as it did (no Dropout, no
    BatchNorm statistics). Returns model."""
    model.eval()
    fold_batchnorm(model)
    fuse_relu_pooling(drop_dropout(model))
    fast_pooling(model)
    return model.to(memory_format=torch.channels_last) if channels_last else model
