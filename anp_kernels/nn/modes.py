"""A model in eval mode for a block, with every module's own mode given back afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` for the block; afterwards each module gets back the mode it had.

    `model.train(was)` would set every submodule to the model's flag: a BatchNorm or Dropout that a
    training loop keeps in eval mode (frozen statistics when fine-tuning) would come back training
    after each attack. Modules are restored parents first, through their own `train()`."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        model.train(modes[0][1])
        for module, training in modes[1:]:  # pre-order: a module's parent already has its final mode
            if module.training != training:
                module.train(training)


def in_mode_of(new: nn.Module, old: nn.Module) -> nn.Module:
    """`new`, to stand where `old` stood, in `old`'s train/eval mode (a fresh module is in train mode:
    put into an eval-mode model it would leave the model partly training). Returns new."""
    return new.train(old.training)
