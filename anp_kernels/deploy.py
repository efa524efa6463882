"""Ship the pruned model: physically remove pruned channels, save without pickle, export ONNX.

compact(model, input_shape):
  1. folds each mask's deterministic test-time scale (E[pi], 0 below the threshold) into its
     layer's weight and bias, so pruned outputs are exact zeros and the model is plain PyTorch;
  2. asks Torch-Pruning's DependencyGraph which layers each pruned channel couples to (its BN,
     its consumers, residual adds); a channel is removed only if every coupled producer has it
     pruned (channels tied by a residual add go together or stay);
  3. folds what a removed channel still contributes into its consumers, exactly: a pruned
     channel before BN outputs the constant relu(BN(0)), not 0. Each consumer's input on the
     removed channels is measured with hooks (and checked to be input-independent); a Linear or
     unpadded conv absorbs it into its bias, a zero-padded conv into a constant-input kernel
     convolved with a ones map, which reproduces the padding border effect exactly;
  4. removes the channels (Torch-Pruning).
save / load: safetensors weights + a JSON architecture (in the file's metadata and beside it);
loading runs no pickle and rejects corrupt or mismatched files with a clear error.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import models
from .checkpoint import atomic_save_file, read_safetensors
from .nn.layers import _ANPLayer

FORMAT = "anp_kernels.compact/1"


class ConstantInputConv2d(nn.Module):
    """A Conv2d plus the exact contribution of removed input channels that were constant.

    extra = conv(ones map, const_kernel): constant inside, correct at zero-padded borders.
    """

    def __init__(self, conv: nn.Conv2d, const_kernel: torch.Tensor):
        super().__init__()
        self.conv = conv
        self.register_buffer("const_kernel", const_kernel.detach().clone())
        self._cache: dict = {}  # input size -> the correction map (it does not depend on x)

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[2], x.shape[3], x.device, x.dtype, self.const_kernel._version)
        if key not in self._cache or torch.jit.is_tracing() or torch.compiler.is_compiling():
            c = self.conv
            ones = x.new_ones(1, 1, x.shape[2], x.shape[3])
            extra = F.conv2d(ones, self.const_kernel.to(x.dtype), None, c.stride, c.padding, c.dilation)
            if torch.jit.is_tracing() or torch.compiler.is_compiling():
                return extra
            self._cache = {key: extra.detach()}
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.correction(x)


def fold_masks(model: nn.Module) -> tuple[nn.Module, dict[nn.Module, list[int]]]:
    """A plain copy of a masked model with each eval-mode mask folded into its layer's weights."""
    plain = copy.deepcopy(model).eval()
    pruned: dict[nn.Module, list[int]] = {}
    for name, layer in [(n, m) for n, m in plain.named_modules() if isinstance(m, _ANPLayer)]:
        with torch.no_grad():
            z = layer.mask.eval_scale().detach()
            inner = layer.layer
            inner.weight.mul_(z.view(-1, *[1] * (inner.weight.dim() - 1)).to(inner.weight.dtype))
            if inner.bias is not None:
                inner.bias.mul_(z.to(inner.bias.dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, inner)
        pruned[inner] = (z == 0).nonzero().squeeze(1).tolist()
    if hasattr(model, "anp_arch"):
        plain.anp_arch = dict(model.anp_arch)
    return plain, pruned


def _handler(item) -> str:
    return getattr(item.dep.handler, "__name__", str(item.dep.handler))


def _out_pruner(module: nn.Module):
    import torch_pruning as tp

    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def _plan(DG, pruned: dict, round_to: int = 1) -> list[tuple[nn.Module, list[int]]]:
    """Per masked layer, the pruned channels that can be removed (all coupled producers agree),
    leaving a width that is a multiple of round_to (kept pruned channels stay exact: zero weights)."""
    plans = []
    for module, idxs in pruned.items():
        width = module.weight.shape[0]
        # never remove every channel: a fully pruned layer keeps one block of zero channels
        keep = max(-(-(width - len(idxs)) // round_to) * round_to, round_to)
        idxs = list(idxs)[: max(0, width - min(keep, width))]
        while idxs:
            group = DG.get_pruning_group(module, _out_pruner(module), idxs=idxs)
            bad = set()
            for item in group:
                target = item.dep.target.module
                if _handler(item) == "prune_out_channels" and isinstance(target, (nn.Conv2d, nn.Linear)):
                    zero = set(pruned.get(target, ()))
                    bad |= {r for i, r in zip(item.idxs, item.root_idxs) if i not in zero}
            if not bad:
                break
            idxs = [i for i in idxs if i not in bad]
            keep = max(-(-(width - len(idxs)) // round_to) * round_to, round_to)
            idxs = idxs[: max(0, width - min(keep, width))]
        if idxs and DG.check_pruning_group(group):
            plans.append((module, idxs))
    return plans


@torch.no_grad()
def _consumer_inputs(model: nn.Module, consumers: set, input_shape, device) -> list[dict]:
    """Each consumer's input for two different inputs (to check what is input-independent)."""
    seen: list[dict] = []
    for probe in (torch.zeros(input_shape, device=device), torch.rand(input_shape, device=device)):
        store: dict = {}
        hooks = [m.register_forward_pre_hook(lambda m, args, s=store: s.__setitem__(m, args[0].detach()))
                 for m in consumers]
        try:
            model(probe)
        finally:
            for h in hooks:
                h.remove()
        seen.append(store)
    return seen


def compact(model: nn.Module, input_shape: tuple, round_to: int = 8) -> nn.Module:
    """A plain model with the pruned channels physically removed (see the module docstring).

    round_to: leave every pruned layer a multiple of this many channels (oneDNN and cuDNN run
    odd widths slowly); 1 removes every removable channel.
    """
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    import torch_pruning as tp

    plain, pruned = fold_masks(model)
    pruned = {m: i for m, i in pruned.items() if i}
    if not pruned:
        return plain
    device = next(plain.parameters()).device
    example = torch.rand(input_shape, device=device)
    DG = tp.DependencyGraph().build_dependency(plain, example_inputs=example)
    plans = _plan(DG, pruned, round_to)
    # consumers (layers reading removed channels) and which input indices they lose
    losses: dict[nn.Module, set] = {}
    for module, idxs in plans:
        for item in DG.get_pruning_group(module, _out_pruner(module), idxs=idxs):
            target = item.dep.target.module
            if _handler(item) == "prune_in_channels" and isinstance(target, (nn.Conv2d, nn.Linear)):
                losses.setdefault(target, set()).update(item.idxs)
    inputs = _consumer_inputs(plain, set(losses), (2, *input_shape[1:]), device)
    const_kernels: dict[nn.Module, torch.Tensor] = {}
    keep_rows: dict[nn.Module, torch.Tensor] = {}
    for consumer, lost in losses.items():
        lost = sorted(lost)
        a, b = inputs[0][consumer][:, lost], inputs[1][consumer][:, lost]
        value = a[0]
        if not (torch.allclose(a, b, atol=1e-6) and torch.allclose(a, value.expand_as(a), atol=1e-6)):
            raise RuntimeError(f"compact(): removed channels feeding {consumer} are not constant; cannot fold")
        w = consumer.weight.detach()
        if isinstance(consumer, nn.Linear):
            add = w[:, lost] @ value
        else:
            per_channel = value.flatten(1).mean(1)
            if not torch.allclose(value, per_channel.view(-1, 1, 1).expand_as(value), atol=1e-6):
                raise RuntimeError(f"compact(): a removed channel feeding {consumer} is not spatially constant")
            kernel = (w[:, lost] * per_channel.view(1, -1, 1, 1)).sum(1, keepdim=True)  # [C_out, 1, kh, kw]
            if all(p == 0 for p in consumer.padding):
                add = kernel.sum((1, 2, 3))
            else:
                const_kernels[consumer] = kernel
                keep_rows[consumer] = torch.arange(w.shape[0])
                add = None
        if add is not None and add.abs().max() > 0:
            if consumer.bias is None:
                consumer.bias = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))
            consumer.bias.data += add.to(consumer.bias.dtype)
    # remove the channels. A residual-coupled group may already have removed some of a later
    # plan's channels, so track each layer's surviving original output ids (current positions).
    alive = {m: list(range(m.weight.shape[0])) for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for module, idxs in plans:
        current = [alive[module].index(i) for i in idxs if i in alive[module]]
        if not current:
            continue
        group = DG.get_pruning_group(module, _out_pruner(module), idxs=current)
        for item in group:
            target = item.dep.target.module
            if target in alive and _handler(item) == "prune_out_channels":
                gone = set(item.idxs)
                alive[target] = [orig for pos, orig in enumerate(alive[target]) if pos not in gone]
        group.prune()
    for module in const_kernels:
        keep_rows[module] = torch.tensor(alive[module], dtype=torch.long)
    for name, module in list(plain.named_modules()):
        if module in const_kernels:
            parent_name, _, child = name.rpartition(".")
            kernel = const_kernels[module][keep_rows[module]]
            setattr(plain.get_submodule(parent_name) if parent_name else plain, child,
                    ConstantInputConv2d(module, kernel))
    return plain


# ------------------------------------------------------------------ save / load
def _describe(module: nn.Module) -> dict | None:
    if isinstance(module, ConstantInputConv2d):
        return {"type": "ConstantInputConv2d", "conv": _describe(module.conv),
                "kernel": list(module.const_kernel.shape)}
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels,
                "kernel": list(module.kernel_size), "stride": list(module.stride), "padding": list(module.padding),
                "dilation": list(module.dilation), "groups": module.groups, "bias": module.bias is not None}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
    if isinstance(module, nn.BatchNorm2d):
        return {"type": "BatchNorm2d", "num": module.num_features, "eps": module.eps, "momentum": module.momentum}
    return None


def _rebuild(spec: dict) -> nn.Module:
    kind = spec["type"]
    if kind == "ConstantInputConv2d":
        return ConstantInputConv2d(_rebuild(spec["conv"]), torch.zeros(spec["kernel"]))
    if kind == "Conv2d":
        return nn.Conv2d(spec["in"], spec["out"], tuple(spec["kernel"]), tuple(spec["stride"]), tuple(spec["padding"]),
                         tuple(spec["dilation"]), spec["groups"], spec["bias"])
    if kind == "Linear":
        return nn.Linear(spec["in"], spec["out"], spec["bias"])
    if kind == "BatchNorm2d":
        return nn.BatchNorm2d(spec["num"], eps=spec["eps"], momentum=spec["momentum"])
    raise ValueError(f"unknown layer type {kind!r} in the architecture description")


def architecture(model: nn.Module, arch: dict | None = None) -> dict:
    """The JSON description load() rebuilds a (compact) model from."""
    arch = dict(arch or getattr(model, "anp_arch", {}) or {})
    if "model" not in arch:
        raise ValueError("save(): the model's architecture name is unknown; pass arch={'model': ..., "
                         "'num_classes': ..., 'in_channels': ...}")
    layers = {}
    for name, module in model.named_modules():
        if name and not any(name.startswith(p + ".") for p in layers if layers[p]["type"] == "ConstantInputConv2d"):
            spec = _describe(module)
            if spec is not None:
                layers[name] = spec
    return {"format": FORMAT, "model": arch["model"], "num_classes": arch["num_classes"],
            "in_channels": arch["in_channels"], "layers": layers}


def save(model: nn.Module, path: str | Path, arch: dict | None = None) -> Path:
    """model.safetensors (weights, architecture JSON in its metadata) and model.json beside it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "model.safetensors"
    desc = architecture(model, arch)
    state = {k: v for k, v in model.state_dict().items()}
    atomic_save_file(state, path, {"anp_arch": json.dumps(desc)})
    path.with_suffix(".json").write_text(json.dumps(desc, indent=2))
    return path


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved (compact) model: safetensors + JSON only, no pickle."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    tensors, meta = read_safetensors(path, device, what="model file")
    try:
        desc = json.loads(meta["anp_arch"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} has no anp_kernels architecture description") from exc
    if desc.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported format {desc.get('format')!r}")
    model = models.build(desc["model"], desc["num_classes"], desc["in_channels"])
    for name, spec in desc["layers"].items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            getattr(parent, child)
        except AttributeError as exc:
            raise ValueError(f"{path}: layer {name!r} does not exist in a {desc['model']}") from exc
        setattr(parent, child, _rebuild(spec))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the architecture description: {exc}") from exc
    model.anp_arch = {"model": desc["model"], "num_classes": desc["num_classes"], "in_channels": desc["in_channels"]}
    return model.to(device).eval()


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple) -> Path:
    """ONNX export of a compact model through torch.onnx (batch dimension dynamic)."""
    path = Path(path)
    example = torch.rand(input_shape)
    model = model.eval().cpu()
    try:
        torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except TypeError:  # older torch without the dynamo argument
        torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path
