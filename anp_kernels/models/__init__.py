"""Plain PyTorch models of the ANP-VS and thin-ice papers; `anp_kernels.convert` adds the masks.

Every model takes inputs in [0, 1] and normalises inside (a `Normalize` first layer).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .common import Normalize
from .lenet import lenet5_caffe, lenet_digits
from .resnet import resnet18, wrn28_4
from .vgg import vgg16, vgg_digits, vgg_digits_wide

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5_caffe": lenet5_caffe,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "wrn28_4": wrn28_4,
    "lenet_digits": lenet_digits,
    "vgg_digits": vgg_digits,
    "vgg_digits_wide": vgg_digits_wide,
}


INPUT_SIZE = {"lenet5_caffe": 28, "lenet_digits": 8, "vgg_digits": 8, "vgg_digits_wide": 8}  # others: 32 (CIFAR)

# lr x0.1 at these fractions of training, as the ANP-VS code does (LeNet: 50%, 70%; VGG: 50%, 80%)
MILESTONES = {"lenet5_caffe": [0.5, 0.7], "lenet_digits": [0.5, 0.7], "vgg16": [0.5, 0.8], "vgg_digits": [0.5, 0.8],
              "vgg_digits_wide": [0.5, 0.8]}


def milestones(name: str) -> list[float]:
    """The default lr milestones (fractions of training) for a model; [0.5, 0.75] for the others."""
    return list(MILESTONES.get(name, [0.5, 0.75]))


def input_shape(name: str, in_channels: int | None = None, batch: int = 1) -> tuple:
    """The input shape a model is built for, e.g. (1, 1, 28, 28) for LeNet-5."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    size = INPUT_SIZE.get(name, 32)
    channels = in_channels if in_channels is not None else (3 if size == 32 else 1)
    return (batch, channels, size, size)


def build(name: str, num_classes: int = 10, in_channels: int | None = None) -> nn.Module:
    """A model by name (see MODELS)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    kwargs = {"num_classes": num_classes}
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "build", "input_shape", "milestones", "Normalize", *MODELS]
