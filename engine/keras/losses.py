"""Keras losses, including the fused (stable) softmax/sigmoid cross-entropies.

Keras models usually end in `activation='softmax'` and train with
'sparse_categorical_crossentropy' on the *probabilities*.  Differentiating
-log(softmax(z)) through a separate softmax loses precision (log of a tiny,
clipped probability) and costs two extra graph nodes, so when the model's last
activation is softmax (sigmoid) and the loss is a (binary) cross-entropy, the
model trains on the logits with one fused node: log-softmax cross-entropy whose
gradient is simply (softmax(z) - onehot(y)) / N.  `predict()` still returns
probabilities.  The unfused, probability-space versions (clipped to
[1e-7, 1 - 1e-7] as in Keras) remain for models that do not end in a softmax.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..tensor import Tensor, from_op
from .. import ops

__all__ = ["Loss", "SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy",
           "MeanSquaredError", "MeanAbsoluteError", "get", "serialize"]

EPSILON = 1e-7


# ------------------------------------------------------------------ fused kernels

def _as_2d(d):
    """Collapse all but the class axis: (N, ..., C) -> (M, C)."""
    return d.reshape(-1, d.shape[-1])


def sparse_softmax_cross_entropy(logits: Tensor, labels) -> Tensor:
    """mean(-log softmax(logits)[label]) over every position, one graph node."""
    xp = get_array_module(logits.data)
    z = _as_2d(logits.data)
    y = xp.asarray(labels).reshape(-1).astype(np.int64, copy=False)
    m, c = z.shape
    if y.shape[0] != m:
        raise ValueError(f"sparse_categorical_crossentropy: {y.shape[0]} labels for {m} predictions "
                         f"(model output shape {logits.shape}); labels must have one integer per sample")
    shifted = z - z.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    sums = e.sum(axis=1, keepdims=True)
    rows = xp.arange(m)
    picked = shifted[rows, y]
    loss = (xp.log(sums[:, 0]) - picked).mean()
    shape = logits.shape

    def backward(g):
        grad = e / sums
        grad[rows, y] -= 1
        grad *= g / m
        return (grad.reshape(shape),)
    return from_op(xp.asarray(loss, dtype=z.dtype), (logits,), backward, "sparse_softmax_xent")


def softmax_cross_entropy(logits: Tensor, target) -> Tensor:
    """mean(-sum(t * log softmax(z))) for one-hot or soft targets t, one graph node."""
    xp = get_array_module(logits.data)
    z = _as_2d(logits.data)
    t = _as_2d(xp.asarray(target, dtype=z.dtype))
    if t.shape != z.shape:
        raise ValueError(f"categorical_crossentropy: targets of shape {tuple(np.shape(target))} for "
                         f"predictions of shape {logits.shape}; targets must be one-hot (use "
                         "keras.utils.to_categorical) or use loss='sparse_categorical_crossentropy' "
                         "for integer labels")
    m = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    sums = e.sum(axis=1, keepdims=True)
    logp = shifted - xp.log(sums)
    loss = -(t * logp).sum() / m
    shape = logits.shape

    def backward(g):
        grad = (e / sums) * t.sum(axis=1, keepdims=True) - t
        grad *= g / m
        return (grad.reshape(shape),)
    return from_op(xp.asarray(loss, dtype=z.dtype), (logits,), backward, "softmax_xent")


def sigmoid_binary_cross_entropy(logits: Tensor, target) -> Tensor:
    """mean(max(z,0) - z*t + log(1 + exp(-|z|))), the overflow-free BCE on logits."""
    xp = get_array_module(logits.data)
    z = logits.data
    t = xp.asarray(target, dtype=z.dtype).reshape(z.shape)
    loss = (xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))).mean()
    n = z.size

    def backward(g):
        s = 0.5 * (xp.tanh(0.5 * z) + 1)
        return ((s - t) * (g / n),)
    return from_op(xp.asarray(loss, dtype=z.dtype), (logits,), backward, "sigmoid_bce")


# ------------------------------------------------------------------ Loss objects

class Loss:
    """loss(y_true, y_pred) -> scalar Tensor (mean over the batch, Keras' default reduction).

    `fused_with` names the final activation this loss can absorb ('softmax' or
    'sigmoid'); `call_on_logits` is then used instead of `__call__` in training.
    """

    name = "loss"
    fused_with: str | None = None

    def __init__(self, from_logits=False, name=None):
        self.from_logits = bool(from_logits)
        if name:
            self.name = name

    def __call__(self, y_true, y_pred):
        if not isinstance(y_pred, Tensor):
            y_pred = Tensor(np.asarray(y_pred, dtype=np.float32))
        if self.from_logits:
            return self.call_on_logits(y_true, y_pred)
        return self.call(y_true, y_pred)

    def call(self, y_true, y_pred: Tensor) -> Tensor:
        raise NotImplementedError

    def call_on_logits(self, y_true, logits: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no logits form")

    def get_config(self):
        return {"from_logits": self.from_logits}


def _raw(y):
    return y.data if isinstance(y, Tensor) else y


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"
    fused_with = "softmax"

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred.data)
        p = y_pred.reshape(-1, y_pred.shape[-1])
        p = p / p.sum(axis=-1, keepdims=True)
        p = ops.clip(p, EPSILON, 1.0 - EPSILON)
        y = xp.asarray(_raw(y_true)).reshape(-1).astype(np.int64)
        picked = p[xp.arange(p.shape[0]), y]
        return -ops.log(picked).mean()

    def call_on_logits(self, y_true, logits):
        return sparse_softmax_cross_entropy(logits, _raw(y_true))


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"
    fused_with = "softmax"

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred.data)
        t = xp.asarray(_raw(y_true), dtype=y_pred.dtype)
        if t.shape != y_pred.shape:
            return softmax_cross_entropy(y_pred, t)      # raises the readable shape error
        p = y_pred / y_pred.sum(axis=-1, keepdims=True)
        p = ops.clip(p, EPSILON, 1.0 - EPSILON)
        n = int(np.prod(y_pred.shape[:-1]))
        return -(ops.log(p) * t).sum() / n

    def call_on_logits(self, y_true, logits):
        return softmax_cross_entropy(logits, _raw(y_true))


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"
    fused_with = "sigmoid"

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred.data)
        t = xp.asarray(_raw(y_true), dtype=y_pred.dtype).reshape(y_pred.shape)
        p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        return -(ops.log(p) * t + ops.log(1.0 - p) * (1.0 - t)).mean()

    def call_on_logits(self, y_true, logits):
        return sigmoid_binary_cross_entropy(logits, _raw(y_true))


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred.data)
        t = xp.asarray(_raw(y_true), dtype=y_pred.dtype)
        if t.size == y_pred.size and t.shape != y_pred.shape:
            t = t.reshape(y_pred.shape)
        d = y_pred - t
        return (d * d).mean()


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred.data)
        t = xp.asarray(_raw(y_true), dtype=y_pred.dtype)
        if t.size == y_pred.size and t.shape != y_pred.shape:
            t = t.reshape(y_pred.shape)
        return ops.abs_(y_pred - t).mean()


_BY_NAME = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
}
_BY_CLASS = {c.__name__: c for c in set(_BY_NAME.values())}


def get(identifier) -> Loss:
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict):
        cls = _BY_CLASS.get(identifier.get("class_name")) or _BY_NAME.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"unknown loss {identifier.get('class_name')!r}")
        return cls(**identifier.get("config", {}))
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _BY_CLASS.get(identifier)
        if cls is None:
            raise ValueError(f"unknown loss {identifier!r}; known: {sorted(_BY_NAME)}")
        return cls()
    if callable(identifier):
        fn = identifier

        class _Wrapped(Loss):
            name = getattr(fn, "__name__", "custom_loss")

            def call(self, y_true, y_pred):
                return fn(y_true, y_pred)
        return _Wrapped()
    raise TypeError(f"cannot interpret {identifier!r} as a loss")


def serialize(loss: Loss) -> dict:
    cls = type(loss)
    if cls.__name__ not in _BY_CLASS:
        raise TypeError(f"cannot save the custom loss {loss.name!r} with the model; "
                        "save with include_optimizer=False and compile again after loading")
    return {"class_name": cls.__name__, "config": loss.get_config()}


# Keras exposes the functions too: keras.losses.sparse_categorical_crossentropy(y, p)
def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    return SparseCategoricalCrossentropy(from_logits)(y_true, y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    return CategoricalCrossentropy(from_logits)(y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits=False):
    return BinaryCrossentropy(from_logits)(y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    return MeanSquaredError()(y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    return MeanAbsoluteError()(y_true, y_pred)


mse = mean_squared_error
mae = mean_absolute_error
