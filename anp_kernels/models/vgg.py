"""VGG-16 for CIFAR-10 as in ANP-VS (13 conv + BN + ReLU, 2 FC) and a small digits variant."""
from __future__ import annotations

from torch import nn

from .common import CIFAR_NORM, DIGITS_NORM, norm_for

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _features(cfg, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, cfg, num_classes: int, in_channels: int, hidden: int, norm):
        super().__init__()
        self.normalize = norm_for(in_channels, norm)
        self.features = _features(cfg, in_channels)
        last = [v for v in cfg if v != "M"][-1]
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(last, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """32x32 input: 13 conv layers (conv -> BN -> ReLU), 5 pools, FC 512->512 and 512->classes."""
    return VGG(VGG16_CFG, num_classes, in_channels, 512, CIFAR_NORM)


def vgg_digits(num_classes: int = 10, in_channels: int = 1) -> VGG:
    """8x8 input: 4 conv+BN layers, 3 pools, FC 64->64->classes."""
    return VGG([32, 32, "M", 64, "M", 64, "M"], num_classes, in_channels, 64, DIGITS_NORM)
