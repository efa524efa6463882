"""The layers a compact model may hold besides standard torch.nn ones (and `nn.MaxPool2x2`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConstantInputConv2d(nn.Module):
    """A Conv2d plus the exact contribution of removed input channels that were constant.

    Inside the image the contribution is a per-channel constant, folded into `conv.bias`; only
    where the kernel overlaps the zero padding does it differ, by `conv(ones, const_kernel)` minus
    that constant: `border` holds this difference and is added to the border rows and columns only.
    """

    def __init__(self, conv: nn.Conv2d, const_kernel: torch.Tensor):
        super().__init__()
        self.conv = conv
        self.register_buffer("const_kernel", const_kernel.detach().clone())  # [C_out, 1, kh, kw]
        self._cache: dict = {}  # input size -> border correction map (it does not depend on x)

    @classmethod
    def absorbing(cls, conv: nn.Conv2d, const_kernel: torch.Tensor) -> "ConstantInputConv2d":
        """Wrap `conv`, moving the interior constant of const_kernel into its bias."""
        interior = const_kernel.sum((1, 2, 3))
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros_like(interior))
        with torch.no_grad():
            conv.bias += interior.to(conv.bias.dtype)
        return cls(conv, const_kernel)

    def border(self, x: torch.Tensor) -> torch.Tensor:
        """[1, C_out, Ho, Wo]: the correction minus its interior value (zero away from borders)."""
        c = self.conv
        ones = x.new_ones(1, 1, x.shape[2], x.shape[3])
        kernel = self.const_kernel.to(x.dtype)
        return F.conv2d(ones, kernel, None, c.stride, c.padding, c.dilation) - kernel.sum((1, 2, 3)).view(1, -1, 1, 1)

    def _strips(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int] | None]:
        """The border map and how many of its top/bottom rows and left/right columns are not zero
        (None when the correction is not confined to thin strips: then one full add is cheaper)."""
        key = (x.shape[2], x.shape[3], x.device, x.dtype, self.const_kernel._version)
        if key not in self._cache:
            m = self.border(x).detach()
            rows, cols = (m != 0).any(3).any(1)[0], (m != 0).any(2).any(1)[0]

            def edge(flags: torch.Tensor) -> tuple[int, int]:
                n, top = len(flags), 0
                while top < n and flags[top]:
                    top += 1
                bottom = 0
                while bottom < n - top and flags[n - 1 - bottom]:
                    bottom += 1
                return top, bottom

            top, bottom = edge(rows)
            left, right = edge(cols)
            h, w = m.shape[2], m.shape[3]
            thin = not bool((m[:, :, top:h - bottom, left:w - right] != 0).any()) and 2 * (top + bottom) * w < h * w
            self._cache = {key: (m, (top, bottom, left, right) if thin else None)}
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if all(p == 0 for p in self.conv.padding):
            return out  # no padding: the correction is the interior constant, already in the bias
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return out + self.border(x)
        m, strips = self._strips(x)
        if strips is None:
            return out + m
        top, bottom, left, right = strips
        h, w = out.shape[2], out.shape[3]
        out[:, :, :top] += m[:, :, :top]
        out[:, :, h - bottom:] += m[:, :, h - bottom:]
        out[:, :, top:h - bottom, :left] += m[:, :, top:h - bottom, :left]
        out[:, :, top:h - bottom, w - right:] += m[:, :, top:h - bottom, w - right:]
        return out


class SelectLinear(nn.Linear):
    """A Linear over the kept input features only: F.linear(x[..., keep], weight, bias).

    What an input-masked Linear becomes when its pruned inputs do not line up with whole channels
    of the layer before it (e.g. LeNet's fc3 over 800 flattened conv features).
    """

    def __init__(self, keep: torch.Tensor, full_in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(int(keep.numel()), out_features, bias, device=device, dtype=dtype)
        self.full_in_features = int(full_in_features)
        self.register_buffer("keep", keep.detach().clone().to(device=self.weight.device, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.keep), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, of {self.full_in_features} input features"
