"""Dropout: active in training mode only; masks come from the engine's seedable generator."""
from __future__ import annotations

from . import functional as F
from .module import Module


class Dropout(Module):
    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class _ChannelDropout(Dropout):
    _fn = None

    def forward(self, input):
        return type(self)._fn(input, self.p, self.training)


class Dropout1d(_ChannelDropout):
    """Zeroes whole channels of (N, C, L) / (C, L) inputs (torch.nn.Dropout1d)."""
    _fn = staticmethod(F.dropout1d)


class Dropout2d(_ChannelDropout):
    """Zeroes whole channels of (N, C, H, W) / (C, H, W) inputs (torch.nn.Dropout2d)."""
    _fn = staticmethod(F.dropout2d)


class Dropout3d(_ChannelDropout):
    """Zeroes whole channels of (N, C, D, H, W) / (C, D, H, W) inputs (torch.nn.Dropout3d)."""
    _fn = staticmethod(F.dropout3d)
