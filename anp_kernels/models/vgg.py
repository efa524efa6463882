"""VGG-16 for CIFAR-10 as in the ANP-VS code, and a small variant for 8x8 digits.

Each block is conv (with bias) -> BN -> ReLU, followed by a 2x2 max-pool where the configuration
has one and by dropout otherwise (0.3 after the first block, 0.4 after the others), then
flatten -> dropout 0.5 -> fc1 -> BN -> ReLU -> dropout 0.5 -> fc2. BatchNorm uses the original's
TensorFlow settings (epsilon 1e-3, moving-average decay 0.99, i.e. torch momentum 0.01).
`anp_kernels.convert` masks every conv's output channels (mask init a_uc = 2.0, as the original's
conv masks) and the inputs of fc1 and fc2 (a_uc = -1.0) and replaces the two 0.5 dropouts, which the
original runs only without masks, by the masks themselves.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .common import CIFAR_NORM, DIGITS_NORM, norm_for

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
BN = dict(eps=1e-3, momentum=0.01)


def _features(cfg, in_channels: int) -> tuple[nn.Sequential, list[str]]:
    """The conv blocks, and the names of their ReLUs (the latent features of VS)."""
    layers: list[tuple[str, nn.Module]] = []
    relus = []
    c, block = in_channels, 0
    for i, v in enumerate(cfg):
        if v == "M":
            layers.append((f"pool{block}", nn.MaxPool2d(2)))
            continue
        block += 1
        layers += [(f"conv{block}", nn.Conv2d(c, v, 3, padding=1)), (f"bn{block}", nn.BatchNorm2d(v, **BN)),
                   (f"relu{block}", nn.ReLU())]
        relus.append(f"features.relu{block}")
        if i + 1 < len(cfg) and cfg[i + 1] != "M":
            layers.append((f"drop{block}", nn.Dropout(0.3 if block == 1 else 0.4)))
        c = v
    return nn.Sequential(OrderedDict(layers)), relus


class VGG(nn.Module):
    # the original's mask initialisation: a_uc = 2.0 on conv masks, -1.0 on the FC input masks
    anp_mask_init_a = {"conv": 2.0, "linear": -1.0}

    def __init__(self, cfg, num_classes: int, in_channels: int, hidden: int, norm):
        super().__init__()
        self.normalize = norm_for(in_channels, norm)
        self.features, relus = _features(cfg, in_channels)
        last = [v for v in cfg if v != "M"][-1]
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()), ("drop1", nn.Dropout(0.5)), ("fc1", nn.Linear(last, hidden)),
            ("bn", nn.BatchNorm1d(hidden, **BN)), ("relu", nn.ReLU()), ("drop2", nn.Dropout(0.5)),
            ("fc2", nn.Linear(hidden, num_classes))]))
        # VS features of the original: every block's ReLU output, fc1's output (before its BN) and the
        # ReLU after that BN
        self.anp_latent = relus + ["classifier.fc1", "classifier.relu"]

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """32x32 input: 13 conv blocks, 5 pools, FC 512->512 and 512->classes (5,248 masked units)."""
    return VGG(VGG16_CFG, num_classes, in_channels, 512, CIFAR_NORM)


def vgg_digits(num_classes: int = 10, in_channels: int = 1, width: int = 1) -> VGG:
    """8x8 input: 4 conv blocks (32w, 32w, 64w, 64w channels), 3 pools, FC 64w->64w->classes."""
    return VGG([32 * width, 32 * width, "M", 64 * width, "M", 64 * width, "M"], num_classes, in_channels, 64 * width,
               DIGITS_NORM)


def vgg_digits_wide(num_classes: int = 10, in_channels: int = 1) -> VGG:
    """vgg_digits at twice the width (64, 64, 128, 128 channels; FC 128): enough convolution work per
    image that removing channels shows in the latency (the demo's network)."""
    return vgg_digits(num_classes, in_channels, width=2)
