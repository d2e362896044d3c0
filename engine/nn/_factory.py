"""Shared constructor plumbing for layers: PyTorch's device=/dtype= factory arguments."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import DEFAULT_FLOAT
from .parameter import Parameter


def new_param(shape, device=None, dtype=None) -> Parameter:
    """An uninitialised Parameter of `shape` (the caller runs an initialiser from engine.nn.init)."""
    dt = np.dtype(dtype) if dtype is not None else np.dtype(DEFAULT_FLOAT)
    p = Parameter(np.zeros(tuple(shape), dtype=dt))
    if device is not None and backend.parse_device(device) != "cpu":
        p.data = backend.to_device(p.data, backend.parse_device(device))
    return p


def place(array, device=None):
    """A CPU array moved to `device` (buffers such as running statistics)."""
    if device is not None and backend.parse_device(device) != "cpu":
        return backend.to_device(array, backend.parse_device(device))
    return array
