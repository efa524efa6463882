"""LeNet-5-Caffe (MNIST, the ANP-VS paper's) and a small variant for 8x8 digits."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .common import DIGITS_NORM, MNIST_NORM, norm_for


def _lenet(in_channels: int, norm, widths: tuple, kernel: int, padding: int, flat: int, num_classes: int):
    c1, c2, hidden = widths
    return nn.Sequential(OrderedDict([
        ("norm", norm_for(in_channels, norm)),
        ("conv1", nn.Conv2d(in_channels, c1, kernel, padding=padding)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(c1, c2, kernel, padding=padding)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc3", nn.Linear(flat, hidden)), ("relu3", nn.ReLU()),
        ("fc4", nn.Linear(hidden, num_classes)),
    ]))


def lenet5_caffe(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """conv 20 (5x5) -> pool -> conv 50 (5x5) -> pool -> fc 800->500 -> fc 500->classes, 28x28 input.

    `anp_kernels.convert` masks it as the ANP-VS code does: conv1 and conv2 output channels, the
    800 inputs of fc3 and the 500 inputs of fc4 (1,370 units); VS uses relu1, relu2 and relu3.
    """
    return _lenet(in_channels, MNIST_NORM, (20, 50, 500), 5, 0, 800, num_classes)


def lenet_digits(num_classes: int = 10, in_channels: int = 1, width: int = 1) -> nn.Sequential:
    """A LeNet for 8x8 digits: conv 16w -> pool -> conv 32w -> pool -> fc 128w->64w -> classes."""
    return _lenet(in_channels, DIGITS_NORM, (16 * width, 32 * width, 64 * width), 3, 1, 128 * width, num_classes)
