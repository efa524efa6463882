"""Pieces shared by the models."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, so models take [0, 1] inputs (what attacks perturb)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


MNIST_NORM = ((0.1307,), (0.3081,))
CIFAR_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
DIGITS_NORM = ((0.30,), (0.38,))


def norm_for(in_channels: int, default: tuple) -> Normalize:
    mean, std = default
    if len(mean) != in_channels:
        mean, std = (0.5,) * in_channels, (0.25,) * in_channels
    return Normalize(mean, std)
