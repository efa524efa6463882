"""Ship the pruned model: physically remove pruned units, save without pickle, export ONNX.

`compact` (see deploy.compact), `save` / `load` (see deploy.serialize), `export_onnx` and ONNX
Runtime sessions (see deploy.export), `fold_batchnorm`, and `serving_form` (every exact inference
rewrite: BatchNorm folded, Dropout dropped, ReLU fused into pooling, our pooling kernel).
"""
from ..nn.pool import MaxPool2x2, fast_pooling, fuse_relu_pooling
from .compact import Pruned, compact, compact_zeroed, fold_masks, zeroed_units
from .export import export_onnx, onnx_logits, onnx_session
from .fold_bn import fold_batchnorm
from .layers import ConstantInputConv2d, SelectLinear
from .serialize import FORMAT, describe, load, save
from .serving import drop_dropout, serving_form

__all__ = ["compact", "compact_zeroed", "zeroed_units", "fold_masks", "Pruned", "fold_batchnorm", "save", "load",
           "describe", "FORMAT", "export_onnx", "onnx_session", "onnx_logits", "ConstantInputConv2d", "SelectLinear",
           "MaxPool2x2", "fast_pooling", "fuse_relu_pooling", "drop_dropout", "serving_form"]
