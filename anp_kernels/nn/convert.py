"""Turn a plain PyTorch model into an ANP model, and read its masks and latent features back."""
from __future__ import annotations

import fnmatch
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .. import _backend
from .layers import ANPConv2d, ANPLayer, ANPLinear
from .mask import INIT_A_UC, BetaBernoulliMask, refresh_eval_states
from .modes import in_mode_of

# modules whose outputs are post-activation latent features (what VS and vulnerability measure)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus)


def _matches(name: str, patterns: Iterable[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _init_a_for(model: nn.Module, init_a) -> Callable[[nn.Module], float]:
    """a_uc initial value per wrapped layer: a number, {"conv": .., "linear": ..}, or None for the
    model's own default (`anp_mask_init_a`, e.g. VGG-16's 2.0 on conv masks) and else -1.0."""
    rule = init_a if init_a is not None else getattr(model, "anp_mask_init_a", INIT_A_UC)
    if isinstance(rule, dict):
        unknown = set(rule) - {"conv", "linear"}
        if unknown:
            raise ValueError(f"init_a as a dict takes the keys 'conv' and 'linear', got {sorted(unknown)}")
        return lambda m: float(rule.get("conv" if isinstance(m, nn.Conv2d) else "linear", INIT_A_UC))
    if isinstance(rule, bool) or not isinstance(rule, (int, float)):
        raise TypeError(f"init_a must be a number or a dict, got {type(rule).__name__}")
    return lambda m: float(rule)


def _chosen_layers(model: nn.Module, include, exclude) -> list[str]:
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        wanted = _matches(name, include) if include is not None else True
        if wanted and not _matches(name, exclude):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                continue  # depthwise / grouped convs are left dense
            chosen.append(name)
    return chosen


def _drop_dropout_before_masked_inputs(model: nn.Module) -> None:
    """In every nn.Sequential, a Dropout directly before an ANPLinear becomes Identity: the mask is
    that layer's input dropout (the ANP-VS code runs its 0.5 FC dropout only without masks)."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for here, nxt in zip(names, names[1:]):
            if isinstance(seq._modules[here], nn.Dropout) and isinstance(seq._modules[nxt], ANPLinear):
                seq._modules[here] = in_mode_of(nn.Identity(), seq._modules[here])


def set_latent(model: nn.Module, names: Iterable[str]) -> None:
    """Name the modules whose outputs are the latent features of VS (for models that use
    functional activations, or to measure elsewhere than after every activation module)."""
    names = list(names)
    missing = [n for n in names if not _has_module(model, n)]
    if missing or not names:
        raise ValueError(f"latent: no module named {missing} in this model" if missing
                         else "latent: give at least one module name")
    model.anp_latent = names


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def convert(model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
            latent: Iterable[str] | None = None, init_a: float | dict | None = None, **mask_kwargs) -> nn.Module:
    """Give the model ANP-VS masks where the original code places them: every Conv2d (groups=1) is
    masked on its output channels, every Linear on its input features (the classifier's included).

    include / exclude: fnmatch patterns over module names (e.g. "features.*", "fc2"); include
    replaces the default choice (all), exclude wins over both. latent: names of the modules whose
    outputs VS measures (default: every activation module, see `latent_layers`). init_a: the masks'
    initial a_uc: a number, {"conv": .., "linear": ..}, or None for the model's default (VGG-16:
    2.0 on conv masks) and -1.0 elsewhere (the original's; E[pi] starts at 0.24, so a narrow layer can
    lose every unit: ANPVSLoss then raises a FullyPrunedWarning naming it, and 2.0, E[pi] 0.68, is
    the original's more open start). Other mask_kwargs go to BetaBernoulliMask (alpha,
    temperature, threshold, init_b). Weights are kept (the layers are wrapped, not copied); a
    Dropout directly before a masked Linear is removed. Returns the same model object, modified.
    """
    if any(isinstance(m, (ANPLayer, BetaBernoulliMask)) for m in model.modules()):
        raise ValueError("this model already has ANP masks: convert() it once only")
    if not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()):
        raise ValueError("no nn.Conv2d or nn.Linear layer to mask in this model")
    chosen = _chosen_layers(model, include, exclude)
    if not chosen:
        raise ValueError("convert(): include/exclude left no layer to mask")
    init_for = _init_a_for(model, init_a)
    if latent is not None:
        set_latent(model, latent)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        kwargs = {**mask_kwargs, "init_a": init_for(module)}
        wrapper = ANPConv2d(module, **kwargs) if isinstance(module, nn.Conv2d) else ANPLinear(module, **kwargs)
        setattr(parent, child, in_mode_of(wrapper.to(next(module.parameters()).device), module))
    _drop_dropout_before_masked_inputs(model)
    return model


def masks(model: nn.Module) -> dict[str, BetaBernoulliMask]:
    """Every mask of the model by the name of the layer it masks."""
    return {name: m.mask for name, m in model.named_modules() if isinstance(m, ANPLayer)}


class FullyPrunedWarning(UserWarning):
    """Every unit of a masked layer is pruned: unless a residual path bypasses the layer, the network's
    output no longer depends on its input."""


def fully_pruned(model: nn.Module) -> list[str]:
    """Names of the masked layers with no unit left (E[pi] <= threshold for all of them)."""
    return [name for name, mask in masks(model).items() if mask.num_active() == 0]


def warn_fully_pruned(named_masks: dict[str, BetaBernoulliMask], warned: set[str]) -> None:
    """One FullyPrunedWarning per layer that has just lost its last unit (names in `warned` are skipped
    and the new ones added; a layer that recovers may warn again). Reads the cached kept indices: no
    host-device synchronisation once they are fresh."""
    for name, mask in named_masks.items():
        if mask.num_active():
            warned.discard(name)
        elif name not in warned:
            warned.add(name)
            warnings.warn(f"every one of the {mask.num_features} units of masked layer {name!r} is pruned "
                          f"(E[pi] <= {mask.threshold}): unless a residual path bypasses it, the network's output "
                          "no longer depends on its input. Masks that start more open (convert(model, "
                          "init_a=2.0), the original's VGG conv init), a smaller beta or leaving the layer "
                          "unmasked (convert(exclude=...)) may keep it",
                          FullyPrunedWarning, stacklevel=3)


def sparsity(model: nn.Module) -> dict:
    """Unit sparsity as ANP-VS counts it: share of masked units with E[pi] <= threshold."""
    layers = {}
    total = pruned = 0
    for name, mask in masks(model).items():
        units, active = mask.num_features, mask.num_active()
        layers[name] = {"units": units, "active": active, "sparsity": 1 - active / units}
        total += units
        pruned += units - active
    return {"layers": layers, "units": total, "pruned": pruned, "total": pruned / total if total else 0.0}


def latent_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are the latent features VS and vulnerability measure.

    The names in `model.anp_latent` when set (`convert(latent=...)`, `set_latent`; VGG-16 sets the
    original's list), else every activation module (ReLU, GELU, ...): the post-activation features,
    after BatchNorm where the model has it, as the ANP-VS code measures them. A module called more
    than once per forward contributes one feature per call. Empty when the model has none.
    """
    base = _unwrap(model)
    names = getattr(base, "anp_latent", None)
    if names is not None:
        prefix = "module." if base is not model else ""
        return [(prefix + n, base.get_submodule(n)) for n in names]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]


def require_latent(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """latent_layers(model), or a clear error when the model has no latent modules."""
    found = latent_layers(model)
    if not found:
        raise ValueError("this model has no activation modules (it uses functional activations?): name the "
                         "modules whose outputs are its latent features with convert(model, latent=[...]) or "
                         "anp_kernels.nn.set_latent(model, [...])")
    return found


@contextmanager
def capture_latent(named: list[tuple[str, nn.Module]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Collect (name, output) of these modules in the forward passes run inside, one per call.

    On leaving, an output changed in place after its module returned (`x = act(x); x += skip`, an
    in-place Dropout) is an error naming the module: VS and vulnerability would silently measure the
    changed tensor, not the post-activation feature. (Checked in eager mode; a compiled graph
    works on its own copies.)"""
    captured: list[tuple[str, torch.Tensor]] = []
    versions: list[int | None] = []

    def keep(name: str):
        def hook(_m, _i, out):
            captured.append((name, out))
            eager = isinstance(out, torch.Tensor) and not torch.compiler.is_compiling()
            versions.append(out._version if eager else None)
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in named]
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()
    changed = sorted({n for (n, out), v in zip(captured, versions) if v is not None and out._version != v})
    if changed:
        raise ValueError(f"the output of latent module(s) {', '.join(changed)} was changed in place after the "
                         "module returned (e.g. `x = act(x); x += skip`): VS would measure the changed tensor. "
                         "Make that operation out of place, or name other latent modules (convert(latent=...))")


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in masks(model).values() for p in m.parameters()]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    ids = {id(p) for p in mask_parameters(model)}
    return [p for p in model.parameters() if id(p) not in ids]


def parameter_groups(model: nn.Module, lr: float, mask_lr_factor: float = 10.0,
                     weight_decay: float = 1e-4) -> list[dict]:
    """Optimiser groups as the ANP-VS code trains: weights at lr with an L2 penalty of
    weight_decay (Adam's `weight_decay` adds weight_decay * w to the gradient, the gradient of the
    original's 1e-4 * tf.nn.l2_loss), masks at mask_lr_factor * lr (the original: 10x) without it.
    One Adam over both groups equals the original's two Adam optimisers (Adam is per-parameter)."""
    groups = [{"params": weight_parameters(model), "lr": lr, "weight_decay": weight_decay, "name": "weights"}]
    mask_params = mask_parameters(model)
    if mask_params:
        groups.append({"params": mask_params, "lr": lr * mask_lr_factor, "weight_decay": 0.0, "name": "masks"})
    return groups


def set_mask_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Draw every mask's seeds from `generator` (reproducible, resumable training)."""
    for m in masks(model).values():
        m.generator = generator


# torch 2.4's dynamo guards the masks' per-step seed tensors by identity: a compiled training step recompiles
# every step until its cache limit (under fullgraph an error). From 2.6 they are graph inputs (tested on 2.6,
# 2.11, 2.13, 2.14.1; 2.5 not tried).
MIN_COMPILE_TORCH = (2, 6)


def compile_unsupported() -> str | None:
    """Why compile_model cannot run with this torch, or None where it can."""
    if _backend._version(torch.__version__) >= MIN_COMPILE_TORCH:
        return None
    return (f"compiling a masked model needs torch >= {'.'.join(map(str, MIN_COMPILE_TORCH))}, this is torch "
            f"{torch.__version__} (its dynamo recompiles a training step every step, past its cache limit); "
            "run eagerly or upgrade torch")


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile(model, fullgraph=True), set up for ANP-VS training and attacks.

    Sets what a compiled ANP-VS step needs, process-wide: `capture_scalar_outputs` (the graph reads
    the masks' seeds) and no donated buffers (the split objective runs two backward passes over one
    graph); and fills the masks' kept channels first (they fix the graph's shapes). Use the result
    for the forward passes (PGD, ANPVSLoss) and the original model for the optimiser and saving.
    ANPVSLoss and the attacks refresh the kept channels each step; another loop calls
    `refresh_eval_states(model)` once per step, outside the compiled function.
    """
    reason = compile_unsupported()
    if reason:
        raise RuntimeError(reason)
    torch._dynamo.config.capture_scalar_outputs = True
    torch._functorch.config.donated_buffer = False
    refresh_eval_states(model)
    for device in {p.device for p in model.parameters()}:
        _backend.preload(device)  # the kernels imported now, not inside the trace
    return torch.compile(model, fullgraph=True, backend=backend)
