"""LeNet-5-Caffe (MNIST, the ANP-VS paper's) and a small variant for 8x8 digits."""
from __future__ import annotations

from torch import nn

from .common import DIGITS_NORM, MNIST_NORM, norm_for


def lenet5_caffe(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """conv 20 (5x5) -> pool -> conv 50 (5x5) -> pool -> fc 800->500 -> fc 500->classes, 28x28 input."""
    return nn.Sequential(
        norm_for(in_channels, MNIST_NORM),
        nn.Conv2d(in_channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, num_classes),
    )


def lenet_digits(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """A LeNet for 8x8 digits: conv 16 -> pool -> conv 32 -> pool -> fc 128->64 -> classes."""
    return nn.Sequential(
        norm_for(in_channels, DIGITS_NORM),
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )
