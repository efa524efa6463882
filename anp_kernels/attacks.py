"""PGD, device-resident and batched, against the deterministic (eval-mode) network."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .nn.mask import host_to_device, refresh_eval_states
from .nn.modes import eval_mode

NORMS = ("Linf", "L2")


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters temporarily without requires_grad: attacks need input gradients only (and the
    masked layers then reuse their test-time scale, brought up to date for all masks at once)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    refresh_eval_states(model)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _uses_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


_FRESH_OUTPUT = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)  # outputs their backward does not keep


def _safe_inplace_relus(model: nn.Module) -> list[nn.ReLU]:
    """The ReLUs that may run in place without changing any value or gradient: inside an
    nn.Sequential, fed (through Identity or eval-mode Dropout only) by a conv, linear or BatchNorm
    layer's fresh output, which nothing else reads, with no hooks that could see that tensor, and
    registered once in the model (a shared ReLU may also run elsewhere on a tensor read later)."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return []
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    found = []
    for seq in model.modules():
        if type(seq) is not nn.Sequential:
            continue
        children = list(seq.children())
        for i, m in enumerate(children):
            if type(m) is not nn.ReLU or m.inplace or uses[id(m)] > 1:
                continue
            j = i - 1
            while j >= 0 and (type(children[j]) is nn.Identity
                              or (type(children[j]) is nn.Dropout and not children[j].training)):
                j -= 1
            between = children[max(j, 0):i + 1]
            if j >= 0 and type(children[j]) in _FRESH_OUTPUT and not any(
                    c._forward_hooks or c._forward_pre_hooks for c in between):
                found.append(m)
    return found


@contextlib.contextmanager
def fast_layout(model: nn.Module) -> Iterator[None]:
    """A CPU conv network temporarily in its fastest exact form: channels_last (the layout oneDNN runs
    fastest), its nn.MaxPool2d(2) layers computed by our pooling kernel (`nn.MaxPool2x2`; ATen's
    NCHW pooling costs more than LeNet-5's convolutions on this project's CPU) and the ReLUs after
    a conv or linear layer in place (`_safe_inplace_relus`: no activation copy per query). Values,
    gradients and the model's content hash are unchanged; its modules and layout come back
    afterwards. Evaluation wraps its attacks in it; elsewhere (CUDA, no Conv2d) a no-op."""
    params = [t for t in [*model.parameters(), *model.buffers()] if t.dim() == 4]
    if not params or params[0].device.type != "cpu" or not _uses_conv2d(model):
        yield
        return
    relayout = not any(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in params)
    from .nn.pool import fast_pooling_during

    relus = _safe_inplace_relus(model)
    with fast_pooling_during(model):
        if relayout:
            model.to(memory_format=torch.channels_last)
        for relu in relus:
            relu.inplace = True
        try:
            yield
        finally:
            for relu in relus:
                relu.inplace = False
            if relayout:
                model.to(memory_format=torch.contiguous_format)


def _check_attack_inputs(x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if x.numel():
        low, high = torch.stack(torch.aminmax(x)).tolist()  # one read of the device (one sync on a GPU)
        if not (low >= 0 and high <= 1):  # NaN fails too
            raise ValueError(f"inputs must lie in [0, 1] (normalise inside the model), got [{low:.4g}, {high:.4g}]")


def _l2_project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
    return delta * torch.clamp(eps / norms, max=1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        random_start: bool = True, norm: str = "Linf", generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy; returns x_adv in [0, 1], ||x_adv - x|| <= eps.

    The model runs in eval mode (ANP masks at their expected value, BN running stats, as the
    paper generates its examples) and each module gets its previous mode back afterwards. Parameter
    gradients are never touched.
    """
    _check_attack_inputs(x, y, eps, norm)
    if steps < 0 or step_size < 0:
        raise ValueError(f"steps and step_size must be >= 0, got {steps}, {step_size}")
    with eval_mode(model), frozen(model):
        return _pgd(model, x.detach(), y, eps, step_size, steps, random_start, norm, generator)


def _pgd(model, x, y, eps, step_size, steps, random_start, norm, generator) -> torch.Tensor:
    if random_start and eps > 0:
        where = generator.device if generator is not None else x.device
        if norm == "Linf":  # noise from a CPU generator reaches a GPU without a synchronisation
            delta = (host_to_device(torch.rand(x.shape, generator=generator, device=where), x.device) * 2 - 1) * eps
        else:  # uniform direction, radius uniform in [0, eps]
            direction = host_to_device(torch.randn(x.shape, generator=generator, device=where), x.device)
            direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            radius = host_to_device(torch.rand(x.shape[0], generator=generator, device=where), x.device) * eps
            delta = direction * radius.view(-1, *[1] * (x.dim() - 1))
        x_adv = (x + delta.to(x.dtype)).clamp(0, 1)  # in x's dtype (a bf16 model takes bf16 inputs)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            if norm == "Linf":
                x_adv = x_adv + step_size * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
            else:
                g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
                x_adv = x + _l2_project(x_adv + step_size * g - x, eps)
            x_adv = x_adv.clamp(0, 1)
    return x_adv.detach()
