"""save / load of compact models: safetensors weights + a JSON description, no pickle anywhere.

The description names every layer whose shape compaction may change (Conv2d, Linear, BatchNorm,
SelectLinear, ConstantInputConv2d, our pooling layers, and the Identity a folded BatchNorm, a
removed Dropout or a ReLU fused into its pooling became). `load` rebuilds the model from a fresh
instance of its architecture, a built-in one by name or the user's own (`model=`), and replaces
those layers by the described ones. Every
description is validated (types, names present in the skeleton, sizes) and the tensor shapes it
implies are compared with the file's tensors before any layer is built, so a corrupt, truncated or
hostile file fails with a CheckpointError and never allocates what its metadata claims.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import models
from ..checkpoint import CheckpointError, atomic_save_file, check_arch, check_tensors_fit, parse_json, read_safetensors
from ..nn.pool import MaxPool2x2
from .layers import ConstantInputConv2d, SelectLinear

FORMAT = "anp_kernels.compact/2"
MAX_SIZE = 1 << 20  # channels, features or kernel extent: far above any real layer
NORMS = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d}


# ------------------------------------------------------------------ describe
def _conv_spec(m: nn.Conv2d) -> dict:
    return {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation), "groups": m.groups,
            "bias": m.bias is not None}


def describe_layer(m: nn.Module) -> dict | None:
    """The JSON spec of one layer, or None for layers compaction leaves as they are."""
    if isinstance(m, ConstantInputConv2d):
        return {"type": "ConstantInputConv2d", "conv": _conv_spec(m.conv)}
    if isinstance(m, SelectLinear):
        return {"type": "SelectLinear", "in": m.full_in_features, "kept": m.in_features, "out": m.out_features,
                "bias": m.bias is not None}
    if isinstance(m, nn.Conv2d):
        return _conv_spec(m)
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    if type(m) in NORMS.values():
        return {"type": type(m).__name__, "num": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine, "track": m.track_running_stats}
    if isinstance(m, nn.Identity):
        return {"type": "Identity"}
    if isinstance(m, MaxPool2x2):  # a type of its own when fused: a reader that does not know it refuses it
        return {"type": "ReLUMaxPool2x2" if m.relu else "MaxPool2x2"}
    return None


def describe(model: nn.Module, arch: dict | None = None) -> dict:
    """The JSON description `load` rebuilds a (compact) model from."""
    arch = arch if arch is not None else getattr(model, "anp_arch", None)
    layers: dict[str, dict] = {}
    for name, module in model.named_modules():
        inside = any(name.startswith(p + ".") for p, s in layers.items() if s["type"] == "ConstantInputConv2d")
        spec = describe_layer(module) if name and not inside else None
        if spec is not None:
            layers[name] = spec
    arch = {k: arch[k] for k in ("model", "num_classes", "in_channels")} if arch else None
    return {"format": FORMAT, "arch": arch, "layers": layers}


def save(model: nn.Module, path: str | Path, arch: dict | None = None) -> Path:
    """model.safetensors (weights; the description in its metadata) and model.json beside it.

    arch ({"model", "num_classes", "in_channels"}, default `model.anp_arch`) lets `load` rebuild a
    built-in architecture by name; without it, `load` needs `model=` a fresh instance.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "model.safetensors"
    desc = describe(model, arch)
    atomic_save_file(dict(model.state_dict()), path, {"anp_arch": json.dumps(desc)})
    path.with_suffix(".json").write_text(json.dumps(desc, indent=2))
    return path


# ------------------------------------------------------------------ validate and rebuild
def _int(spec: dict, key: str, where: str, low: int = 1) -> int:
    v = spec.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_SIZE:
        raise CheckpointError(f"{where}: {key!r} must be an int in [{low}, {MAX_SIZE}], got {v!r}")
    return v


def _pair(spec: dict, key: str, where: str, low: int) -> tuple[int, int]:
    v = spec.get(key)
    if not isinstance(v, list) or len(v) != 2:
        raise CheckpointError(f"{where}: {key!r} must be a list of two ints, got {v!r}")
    return _int({key: v[0]}, key, where, low), _int({key: v[1]}, key, where, low)


def _flag(spec: dict, key: str, where: str) -> bool:
    if not isinstance(spec.get(key), bool):
        raise CheckpointError(f"{where}: {key!r} must be true or false, got {spec.get(key)!r}")
    return spec[key]


def _number(spec: dict, key: str, where: str) -> float | None:
    v = spec.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise CheckpointError(f"{where}: {key!r} must be a number, got {v!r}")
    return v


def _conv_shapes(spec: dict, where: str) -> tuple[dict, dict]:
    """(constructor arguments, tensor shapes) of a Conv2d spec, validated."""
    c_in, c_out, groups = _int(spec, "in", where), _int(spec, "out", where), _int(spec, "groups", where)
    if c_in % groups or c_out % groups:
        raise CheckpointError(f"{where}: channels {c_in}->{c_out} do not divide into {groups} groups")
    kernel = _pair(spec, "kernel", where, 1)
    args = dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=_pair(spec, "stride", where, 1),
                padding=_pair(spec, "padding", where, 0), dilation=_pair(spec, "dilation", where, 1), groups=groups,
                bias=_flag(spec, "bias", where))
    shapes = {"weight": (c_out, c_in // groups, *kernel), **({"bias": (c_out,)} if args["bias"] else {})}
    return args, shapes


def _expected(spec: Any, where: str) -> dict[str, tuple]:
    """The tensor shapes (relative names) a layer spec implies, after validating the spec."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"{where}: a layer description must be an object")
    kind = spec.get("type")
    if kind == "Conv2d":
        return _conv_shapes(spec, where)[1]
    if kind == "ConstantInputConv2d":
        shapes = _conv_shapes(spec.get("conv") if isinstance(spec.get("conv"), dict) else {}, where)[1]
        c_out, kh, kw = shapes["weight"][0], *shapes["weight"][2:]
        return {**{"conv." + k: v for k, v in shapes.items()}, "const_kernel": (c_out, 1, kh, kw)}
    if kind in ("Linear", "SelectLinear"):
        c_in, c_out = _int(spec, "in", where), _int(spec, "out", where)
        kept = _int(spec, "kept", where) if kind == "SelectLinear" else c_in
        if kept > c_in:
            raise CheckpointError(f"{where}: keeps {kept} of {c_in} input features")
        shapes = {"weight": (c_out, kept), **({"bias": (c_out,)} if _flag(spec, "bias", where) else {})}
        return {**shapes, **({"keep": (kept,)} if kind == "SelectLinear" else {})}
    if kind in NORMS:
        num = _int(spec, "num", where)
        _number(spec, "eps", where), _number(spec, "momentum", where)
        shapes = {"weight": (num,), "bias": (num,)} if _flag(spec, "affine", where) else {}
        if _flag(spec, "track", where):
            shapes.update(running_mean=(num,), running_var=(num,), num_batches_tracked=())
        return shapes
    if kind in ("Identity", "MaxPool2x2", "ReLUMaxPool2x2"):
        return {}
    raise CheckpointError(f"{where}: unknown layer type {kind!r}")


def _build_layer(spec: dict) -> nn.Module:
    kind = spec["type"]
    if kind == "Conv2d":
        return nn.Conv2d(**_conv_shapes(spec, "")[0])
    if kind == "ConstantInputConv2d":
        conv = nn.Conv2d(**_conv_shapes(spec["conv"], "")[0])
        return ConstantInputConv2d(conv, torch.zeros(conv.out_channels, 1, *conv.kernel_size))
    if kind == "Linear":
        return nn.Linear(spec["in"], spec["out"], spec["bias"])
    if kind == "SelectLinear":
        return SelectLinear(torch.zeros(spec["kept"], dtype=torch.long), spec["in"], spec["out"], spec["bias"])
    if kind in NORMS:
        return NORMS[kind](spec["num"], eps=spec["eps"], momentum=spec["momentum"], affine=spec["affine"],
                           track_running_stats=spec["track"])
    if kind in ("MaxPool2x2", "ReLUMaxPool2x2"):
        return MaxPool2x2(relu=kind == "ReLUMaxPool2x2")
    return nn.Identity()


def _read(path: Path) -> tuple[dict, dict]:
    tensors, meta = read_safetensors(path, "cpu", what="model file")
    if "anp_arch" not in meta:
        raise CheckpointError(f"{path} has no anp_kernels architecture description")
    desc = parse_json(meta["anp_arch"], f"model file {path}")
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        found = desc.get("format") if isinstance(desc, dict) else type(desc).__name__
        raise CheckpointError(f"{path}: unsupported format {found!r} (expected {FORMAT})")
    if not isinstance(desc.get("layers"), dict):
        raise CheckpointError(f"{path}: the description has no 'layers' object")
    return tensors, desc


def _skeleton(desc: dict, model: nn.Module | None, path: Path, meta: bool) -> nn.Module:
    if model is not None:
        return model
    if desc.get("arch") is None:
        raise CheckpointError(f"{path} holds a model of your own architecture: load it with "
                              "deploy.load(path, model=<a fresh instance of that architecture>)")
    arch = check_arch(desc["arch"], f"model file {path}")
    if meta:
        with torch.device("meta"):
            return models.build(arch["model"], arch["num_classes"], arch["in_channels"])
    return models.build(arch["model"], arch["num_classes"], arch["in_channels"])


def _check(desc: dict, skeleton: nn.Module, tensors: dict, path: Path) -> None:
    """Every described layer exists in the skeleton; the shapes add up to exactly the file's tensors."""
    names = dict(skeleton.named_modules())
    layers = desc["layers"]
    expected: dict[str, tuple] = {}
    for name, spec in layers.items():
        where = f"model file {path}, layer {name!r}"
        if not isinstance(name, str) or name not in names or not name:
            raise CheckpointError(f"{where}: no such layer in the {type(skeleton).__name__} it is loaded into")
        expected.update({f"{name}.{k}": v for k, v in _expected(spec, where).items()})
    replaced = tuple(n + "." for n in layers)
    for key, value in skeleton.state_dict().items():
        if not key.startswith(replaced):
            expected[key] = tuple(value.shape)
    check_tensors_fit(expected, tensors, f"model file {path}")


def load(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved (compact) model, no pickle. model: a fresh instance of the architecture (needed
    for your own architectures; built-in ones are rebuilt by name). Returns it in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    tensors, desc = _read(path)
    _check(desc, _skeleton(desc, model, path, meta=True), tensors, path)
    skeleton = _skeleton(desc, model, path, meta=False)
    for name, spec in desc["layers"].items():
        parent, _, child = name.rpartition(".")
        setattr(skeleton.get_submodule(parent) if parent else skeleton, child, _build_layer(spec))
    try:
        skeleton.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the architecture description: {exc}") from exc
    for name, m in skeleton.named_modules():
        if isinstance(m, SelectLinear) and m.keep.numel() and (
                int(m.keep.min()) < 0 or int(m.keep.max()) >= m.full_in_features or bool((m.keep.diff() <= 0).any())):
            raise CheckpointError(f"model file {path}, layer {name!r}: kept feature indices out of order or range")
    if desc.get("arch"):
        skeleton.anp_arch = dict(desc["arch"])
    return skeleton.to(device).eval()
