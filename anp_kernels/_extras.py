"""Optional dependencies: a missing one is an error that names the pip command installing it."""
from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"eval": "AutoAttack, scipy, scikit-learn, matplotlib", "deploy": "Torch-Pruning, onnx, onnxruntime"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or fail with the pip command of the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{module} is not installed; it comes with anp_kernels[{extra}] "
                                f"({EXTRAS[extra]}): pip install 'anp_kernels[{extra}]'") from exc
