"""keras.regularizers: penalties on weights (or a layer's output) added to the training loss.

Keras 3's formulas and defaults: L1 `l1 * sum(|x|)` (l1=0.01), L2 `l2 * sum(x^2)` (l2=0.01, no
1/2), L1L2 both (l1=l2=0.0, also for the string 'l1_l2', as Keras 3's code does although its
docstring says 0.01), OrthogonalRegularizer `factor * 0.5 * sum|off-diagonal of the normalised
Gram matrix| / pairs`.  A layer's `kernel_regularizer` / `bias_regularizer` / ... terms join
`model.losses` (recomputed from the current weights on every access, so they carry gradients),
and fit / evaluate add them to the loss; an `activity_regularizer`'s term is divided by the
batch size (Keras 3).  Any callable weight -> scalar Tensor works as a regularizer too.
"""
from __future__ import annotations

from ._objects import ObjectCodec

import math

__all__ = ["Regularizer", "L1", "L2", "L1L2", "OrthogonalRegularizer", "l1", "l2", "l1_l2",
           "orthogonal_regularizer", "get", "serialize", "deserialize"]


def _factor(value, name):
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or math.isinf(value)
            or math.isnan(value) or value < 0):
        raise ValueError(f"Invalid value for argument {name}: expected a non-negative float. Received: {name}={value}")
    return float(value)


class Regularizer:
    """Base class: `__call__(x)` returns a scalar penalty; `get_config()` makes it saveable."""

    def __call__(self, x):
        return 0.0

    def get_config(self) -> dict:
        raise NotImplementedError(f"{self} does not implement get_config()")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class L1L2(Regularizer):
    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(0.0 if l1 is None else l1, "l1")
        self.l2 = _factor(0.0 if l2 is None else l2, "l2")

    def __call__(self, x):
        total = None
        if self.l1:
            total = x.abs().sum() * self.l1
        if self.l2:
            term = (x * x).sum() * self.l2
            total = term if total is None else total + term
        return total if total is not None else (x * 0.0).sum()

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(Regularizer):
    def __init__(self, l1=0.01):
        self.l1 = _factor(0.01 if l1 is None else l1, "l1")

    def __call__(self, x):
        return x.abs().sum() * self.l1

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    def __init__(self, l2=0.01):
        self.l2 = _factor(0.01 if l2 is None else l2, "l2")

    def __call__(self, x):
        return (x * x).sum() * self.l2

    def get_config(self):
        return {"l2": self.l2}


class OrthogonalRegularizer(Regularizer):
    """Pushes the rows (or columns) of a 2-D weight towards orthogonality."""

    def __init__(self, factor=0.01, mode="rows"):
        self.factor = _factor(factor, "factor")
        if mode not in ("rows", "columns"):
            raise ValueError(f'Invalid value for argument `mode`. Expected one of {{"rows", "columns"}}. '
                             f"Received: mode={mode}")
        self.mode = mode

    def __call__(self, x):
        import engine
        if x.ndim != 2:
            raise ValueError(f"Inputs to OrthogonalRegularizer must have rank 2. Received: inputs.shape={tuple(x.shape)}")
        axis = 1 if self.mode == "rows" else 0
        unit = x / (x * x).sum(axis=axis, keepdims=True).sqrt().clamp(min=1e-7)
        product = unit @ unit.T if self.mode == "rows" else unit.T @ unit
        size = product.shape[0]
        off = product * (1.0 - engine.eye(size, dtype=x.dtype, device=x.device))
        pairs = size * (size - 1.0) / 2.0
        return off.abs().sum() * (self.factor * 0.5 / pairs)

    def get_config(self):
        return {"factor": self.factor, "mode": self.mode}


l1, l2, l1_l2, orthogonal_regularizer = L1, L2, L1L2, OrthogonalRegularizer

_BY_NAME = {"L1": L1, "L2": L2, "L1L2": L1L2, "OrthogonalRegularizer": OrthogonalRegularizer,
            "Regularizer": Regularizer, "l1": L1, "l2": L2, "l1_l2": L1L2,
            "orthogonal_regularizer": OrthogonalRegularizer}


_codec = ObjectCodec("regularizer", Regularizer, _BY_NAME, "regularizers")
serialize, deserialize, get = _codec.serialize, _codec.deserialize, _codec.get
