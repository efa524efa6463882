"""anp_kernels: fast, honest adversarial neural pruning (ANP-VS) for PyTorch."""
from . import ops
from ._backend import BackendUnavailableError, available, backend, build_info, set_backend, use_backend
from ._rng import mask_noise
from .losses import ANPVSLoss
from .nn import compile_model, convert, masks, parameter_groups, sparsity

__version__ = "0.2.0"
__all__ = ["ops", "backend", "available", "build_info", "set_backend", "use_backend", "BackendUnavailableError",
           "mask_noise", "ANPVSLoss",
           "convert", "compile_model", "masks", "sparsity", "parameter_groups", "__version__"]
