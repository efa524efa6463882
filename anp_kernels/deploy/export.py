"""ONNX export of compact models, and ONNX Runtime as a deployment runtime."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .._extras import require


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple) -> Path:
    """ONNX export through torch.onnx (TorchScript exporter; the batch dimension is dynamic)."""
    require("onnx", "deploy")
    path = Path(path)
    example = torch.rand(input_shape)
    model = model.eval().cpu()
    torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU inference session for an exported model."""
    ort = require("onnxruntime", "deploy")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, x: torch.Tensor) -> torch.Tensor:
    """Run an ONNX Runtime session on x (NCHW float32) and return the logits as a tensor."""
    out = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().float().contiguous().numpy()})[0]
    return torch.from_numpy(out)
