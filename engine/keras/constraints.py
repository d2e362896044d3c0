"""keras.constraints: projections applied to a weight after every optimizer update.

Keras 3 applies `variable.constraint` right after the optimizer has changed the variable;
the facade does the same after each `optimizer.step()` of fit / train_on_batch /
apply_gradients.  Formulas and defaults are Keras 3's (norms with epsilon 1e-7 added).
"""
from __future__ import annotations

from ._objects import ObjectCodec

__all__ = ["Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "max_norm", "min_max_norm",
           "non_neg", "unit_norm", "get", "serialize", "deserialize"]

_EPS = 1e-7


def _axis(axis):
    return tuple(axis) if isinstance(axis, (list, tuple)) else axis


def _norms(w, axis):
    return (w * w).sum(axis=_axis(axis), keepdims=True).sqrt()


class Constraint:
    """Base class: `__call__(w)` returns the projected weight."""

    def __call__(self, w):
        return w

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class MaxNorm(Constraint):
    def __init__(self, max_value=2, axis=0):
        self.max_value, self.axis = max_value, axis

    def __call__(self, w):
        norms = _norms(w, self.axis)
        return w * (norms.clamp(0, self.max_value) / (norms + _EPS))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    def __call__(self, w):
        return w.clamp(min=0)


class UnitNorm(Constraint):
    def __init__(self, axis=0):
        self.axis = axis

    def __call__(self, w):
        return w / (_norms(w, self.axis) + _EPS)

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value, self.max_value, self.rate, self.axis = min_value, max_value, rate, axis

    def __call__(self, w):
        norms = _norms(w, self.axis)
        desired = norms.clamp(self.min_value, self.max_value) * self.rate + norms * (1 - self.rate)
        return w * (desired / (norms + _EPS))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate, "axis": self.axis}


max_norm, min_max_norm, non_neg, unit_norm = MaxNorm, MinMaxNorm, NonNeg, UnitNorm

_BY_NAME = {"Constraint": Constraint, "MaxNorm": MaxNorm, "MinMaxNorm": MinMaxNorm, "NonNeg": NonNeg,
            "UnitNorm": UnitNorm, "max_norm": MaxNorm, "min_max_norm": MinMaxNorm, "non_neg": NonNeg,
            "unit_norm": UnitNorm}


def apply_to(weights) -> None:
    """Project each weight that has a constraint (found through the layer that owns it, so a
    constraint set on the layer after it was built counts too), in place, without gradient."""
    from ..tensor import Tensor, no_grad
    with no_grad():
        for w in weights:
            owner = w.__dict__.get("_keras_owner")
            if owner is None:
                continue
            layer = owner[0]()
            if layer is None or getattr(layer, owner[1], None) is not w:
                continue
            con = layer._penalties_of(owner[1])[1]
            if con is not None:
                new = con(w)
                w.data[...] = new.data if isinstance(new, Tensor) else new


_codec = ObjectCodec("constraint", Constraint, _BY_NAME, "constraints")
serialize, deserialize, get = _codec.serialize, _codec.deserialize, _codec.get
