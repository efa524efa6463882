"""torch.autocast for our ops: custom ops have no autocast rule of their own, so an op that ATen's
autocast would run in low precision (a convolution) casts its floating inputs itself, as
`torch.nn.functional.conv2d` does under autocast; outside autocast it changes nothing."""
from __future__ import annotations

import torch


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """torch.autocast's dtype for this device type while it is enabled, else None."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def cast_for_autocast(device_type: str, *tensors: torch.Tensor | None) -> tuple:
    """The tensors in autocast's dtype when it is on for device_type (None and non-float tensors as
    they are), else unchanged."""
    dtype = autocast_dtype(device_type)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)
