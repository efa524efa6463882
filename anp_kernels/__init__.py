"""anp_kernels: fast, honest adversarial neural pruning (ANP-VS) for PyTorch."""
from . import ops
from ._backend import BackendUnavailableError, backend, set_backend, use_backend
from ._rng import mask_noise

__version__ = "0.1.0"
__all__ = ["ops", "backend", "set_backend", "use_backend", "BackendUnavailableError", "mask_noise", "__version__"]
