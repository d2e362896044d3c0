"""Keras activation functions on engine Tensors, looked up by Keras' names.

Each activation is a small named callable so the model can see *which* one ends
the network: a final 'softmax' (or 'sigmoid') is fused with a cross-entropy loss
during training (see keras.losses) instead of being differentiated through.
Softmax is one fused op here (max-shifted, one exp, analytic backward); the
others are compositions of engine ops.
"""
from __future__ import annotations

import math

from ..backend import get_array_module
from ..tensor import Tensor, from_op
from .. import ops

__all__ = ["get", "serialize", "softmax", "log_softmax", "relu", "sigmoid", "tanh", "linear", "elu", "selu",
           "softplus", "softsign", "swish", "silu", "gelu", "exponential", "leaky_relu", "relu6", "hard_sigmoid"]


def softmax_op(x: Tensor, axis: int = -1) -> Tensor:
    """Numerically stable softmax along `axis` as a single graph node."""
    xp = get_array_module(x.data)
    d = x.data
    out = d - d.max(axis=axis, keepdims=True)
    xp.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)

    def backward(g):
        s = (g * out).sum(axis=axis, keepdims=True)
        return ((g - s) * out,)
    return from_op(out, (x,), backward, "softmax")


def log_softmax_op(x: Tensor, axis: int = -1) -> Tensor:
    xp = get_array_module(x.data)
    d = x.data
    shifted = d - d.max(axis=axis, keepdims=True)
    lse = xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    out = shifted - lse

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)
    return from_op(out, (x,), backward, "log_softmax")


class KerasActivation:
    """A named activation: `fn(x)`; `elementwise` says it is independent of the layout."""

    def __init__(self, name, fn, elementwise=True):
        self.name, self.fn, self.elementwise = name, fn, elementwise
        self.__name__ = name

    def __call__(self, x, *args, **kwargs):
        if not isinstance(x, Tensor):
            x = Tensor(x)
        return self.fn(x, *args, **kwargs)

    def __repr__(self):
        return f"<activation {self.name}>"


def _elu(x, alpha=1.0):
    return ops.where(x.data > 0, x, alpha * (ops.exp(ops.minimum(x, 0.0)) - 1.0))


def _selu(x):
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * _elu(x, alpha)


def _softplus(x):
    # log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|)) without overflow
    return ops.relu(x) + ops.log(1.0 + ops.exp(-ops.abs_(x)))


def _gelu(x, approximate=False):
    """Keras 3's gelu: the exact x * Phi(x) unless approximate=True (the tanh form)."""
    if approximate:
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + ops.tanh(c * (x + 0.044715 * x * x * x)))
    from ..nn import functional as F
    return F.gelu(x)


def _leaky_relu(x, negative_slope=0.2):
    return ops.where(x.data > 0, x, negative_slope * x)


def _hard_sigmoid(x):
    return ops.clip(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


def _identity(x):
    return x


softmax = KerasActivation("softmax", lambda x, axis=-1: softmax_op(x, axis), elementwise=False)
log_softmax = KerasActivation("log_softmax", lambda x, axis=-1: log_softmax_op(x, axis),
                              elementwise=False)
relu = KerasActivation("relu", ops.relu)
sigmoid = KerasActivation("sigmoid", ops.sigmoid)
tanh = KerasActivation("tanh", ops.tanh)
linear = KerasActivation("linear", _identity)

elu = KerasActivation("elu", _elu)
selu = KerasActivation("selu", _selu)
softplus = KerasActivation("softplus", _softplus)
softsign = KerasActivation("softsign", lambda x: x / (1.0 + ops.abs_(x)))
swish = KerasActivation("swish", lambda x: x * ops.sigmoid(x))
silu = swish
gelu = KerasActivation("gelu", _gelu)
exponential = KerasActivation("exponential", ops.exp)
leaky_relu = KerasActivation("leaky_relu", _leaky_relu)
relu6 = KerasActivation("relu6", lambda x: ops.clip(x, 0.0, 6.0))
hard_sigmoid = KerasActivation("hard_sigmoid", _hard_sigmoid)

_BY_NAME = {a.name: a for a in (softmax, log_softmax, relu, sigmoid, tanh, linear, elu, selu, softplus, softsign,
                                swish, gelu, exponential, leaky_relu, relu6, hard_sigmoid)}
_BY_NAME["silu"] = swish


def get(identifier) -> KerasActivation:
    """None | 'relu' | KerasActivation | callable -> KerasActivation."""
    if identifier is None:
        return linear
    if isinstance(identifier, KerasActivation):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown activation {identifier!r}; known: {sorted(_BY_NAME)}")
        return _BY_NAME[key]
    if callable(identifier):
        return KerasActivation(getattr(identifier, "__name__", "custom"), identifier, elementwise=False)
    raise TypeError(f"cannot interpret {identifier!r} as an activation")


def serialize(act: KerasActivation) -> str:
    if _BY_NAME.get(act.name) is not act:
        raise TypeError(f"cannot save a model that uses the custom activation {act.name!r}; "
                        f"use one of {sorted(_BY_NAME)}")
    return act.name
