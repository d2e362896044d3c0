"""Keras losses, including the fused (stable) softmax/sigmoid cross-entropies.

Keras models usually end in `activation='softmax'` and train with
'sparse_categorical_crossentropy' on the *probabilities*.  Differentiating
-log(softmax(z)) through a separate softmax loses precision (log of a tiny,
clipped probability) and costs two extra graph nodes, so when the model's last
activation is softmax (sigmoid) and the loss is a (binary) cross-entropy, the
model trains on the logits with one fused node: log-softmax cross-entropy whose
gradient is simply (softmax(z) - onehot(y)) / N.  `predict()` still returns
probabilities.  Keras clips the probabilities to [1e-7, 1 - 1e-7] before the log, which
caps each term at -log(1e-7) = 16.1 and stops the gradient of a term whose probability
lies outside; the fused kernels clamp the log-probabilities to the same range with the
same zero gradient outside, so values and gradients equal Keras' also for saturated
outputs, without computing log(softmax).  The unfused, probability-space versions
remain for models that do not end in a softmax.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..tensor import Tensor, from_op
from .. import ops

__all__ = ["Loss", "SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy",
           "MeanSquaredError", "MeanAbsoluteError", "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError",
           "Huber", "LogCosh", "KLDivergence", "Poisson", "Hinge", "SquaredHinge", "CategoricalHinge",
           "CosineSimilarity", "get", "serialize", "apply_mask"]

EPSILON = 1e-7
#: log of Keras' clipping range [1e-7, 1 - 1e-7] in float32, for the fused kernels
_LOG_LO, _LOG_HI = float(np.log(np.float32(EPSILON))), float(np.log(np.float32(1 - EPSILON)))


def apply_mask(sample_weight, mask):
    """Keras 3's keras.src.losses.loss.apply_mask for the default 'sum_over_batch_size' reduction: the
    output mask (batch, steps) becomes step weights total/valid (0 where masked, all 0 when nothing
    is valid), so the usual mean over every step is the mean over the unmasked ones; per-sample
    weights multiply in (spread over the steps; Keras itself cannot broadcast (batch,) against
    (batch, steps) there)."""
    if mask is None:
        return sample_weight
    xp = get_array_module(mask)
    m = xp.asarray(mask).astype(np.float32)
    valid = float(m.sum())
    m *= np.float32(m.size) / np.float32(valid) if valid else np.float32(0)
    if sample_weight is not None:
        sw = xp.asarray(sample_weight, dtype=np.float32)
        if sw.ndim < m.ndim and sw.size == m.shape[0]:
            sw = sw.reshape((m.shape[0],) + (1,) * (m.ndim - 1))
        m = m * sw
    return m


# ------------------------------------------------------------------ fused kernels

def _as_2d(d):
    """Collapse all but the class axis: (N, ..., C) -> (M, C)."""
    return d.reshape(-1, d.shape[-1])


def _row_weights(xp, weights, rows, dtype):
    """Per-sample weights (N,) spread over the M = N * k rows of a (N, ..., C) prediction."""
    w = xp.asarray(weights, dtype=dtype).reshape(-1)
    if w.size == 0 or rows % w.size:
        raise ValueError(f"sample_weight has {w.size} values for {rows} predictions; give one weight per sample")
    return xp.repeat(w, rows // w.size) if rows != w.size else w


def _sample_weights(y_pred, weights):
    """Weights as a Tensor broadcastable against y_pred (N, ...): one per sample, or one per leading
    position (N, T) as a masked sequence output gets them (apply_mask)."""
    xp = get_array_module(y_pred.data)
    w = xp.asarray(weights, dtype=y_pred.dtype).reshape(-1)
    shape = tuple(y_pred.shape) or (1,)
    for k in range(1, len(shape) + 1):
        if int(np.prod(shape[:k])) == w.size:
            return Tensor._wrap(w.reshape(shape[:k] + (1,) * (len(shape) - k)))
    raise ValueError(f"sample_weight has {w.size} values for {shape[0]} samples; give one weight per sample")


def sparse_softmax_cross_entropy(logits: Tensor, labels, weights=None, clip=True) -> Tensor:
    """mean(-log softmax(logits)[label]) over every position, one graph node (weights: one per
    sample; Keras' reduction, sum(w * loss) / number of positions).  clip: Keras' clipping of the
    probabilities (a model ending in softmax); False for from_logits=True, which Keras does not clip."""
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
    logp = shifted[rows, y] - xp.log(sums[:, 0])
    inside = (logp >= _LOG_LO) & (logp <= _LOG_HI) if clip else True     # Keras' clip: no gradient outside
    w = None if weights is None else _row_weights(xp, weights, m, z.dtype)
    per_row = -xp.clip(logp, _LOG_LO, _LOG_HI) if clip else -logp
    loss = per_row.mean() if w is None else (per_row * w).sum() / m
    shape = logits.shape

    def backward(g):
        grad = e / sums
        grad[rows, y] -= 1
        grad *= g / m
        if clip:
            grad *= inside[:, None]
        if w is not None:
            grad *= w[:, None]
        return (grad.reshape(shape),)
    return from_op(xp.asarray(loss, dtype=z.dtype), (logits,), backward, "sparse_softmax_xent")


def softmax_cross_entropy(logits: Tensor, target, weights=None, clip=True) -> Tensor:
    """mean(-sum(t * log softmax(z))) for one-hot or soft targets t, one graph node (clip: as in
    sparse_softmax_cross_entropy)."""
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
    if clip:
        t_in = t * ((logp >= _LOG_LO) & (logp <= _LOG_HI))  # the terms Keras' clip lets through
        logp = xp.clip(logp, _LOG_LO, _LOG_HI)
    else:
        t_in = t
    w = None if weights is None else _row_weights(xp, weights, m, z.dtype)
    loss = -(t * logp).sum() / m if w is None else -((t * logp).sum(axis=1) * w).sum() / m
    shape = logits.shape

    def backward(g):
        grad = (e / sums) * t_in.sum(axis=1, keepdims=True) - t_in
        grad *= g / m
        if w is not None:
            grad *= w[:, None]
        return (grad.reshape(shape),)
    return from_op(xp.asarray(loss, dtype=z.dtype), (logits,), backward, "softmax_xent")


def sigmoid_binary_cross_entropy(logits: Tensor, target, weights=None, keras_probs=False) -> Tensor:
    """mean(max(z,0) - z*t + log(1 + exp(-|z|))), the overflow-free BCE on logits.

    keras_probs=True (the fused path of a model ending in a sigmoid, which Keras trains on the
    probabilities): the value is Keras' own, -(t log p + (1 - t) log(1 - p)) on the float32 sigmoid
    clipped to [1e-7, 1 - 1e-7], so it carries Keras' float32 rounding of p near 0 and 1 (which soft or
    smoothed targets expose: up to ~1e-3 on saturated outputs with label_smoothing), and its clip
    bounds fall where torch's float32 sigmoid puts them; the gradient is (p - t) inside the clip
    range and 0 outside, either way."""
    xp = get_array_module(logits.data)
    z = logits.data
    t = xp.asarray(target, dtype=z.dtype).reshape(z.shape)
    if keras_probs:         # 1 / (1 + exp(-z)) in float32, as torch's sigmoid (the same p at the clip bounds)
        one = z.dtype.type(1)
        with np.errstate(over="ignore"):
            p = one / (one + xp.exp(-z))
    else:
        p = 0.5 * (xp.tanh(0.5 * z) + 1)
    if keras_probs:
        inside = (p >= EPSILON) & (p <= z.dtype.type(1 - EPSILON))
        pc = xp.clip(p, EPSILON, z.dtype.type(1 - EPSILON)).astype(np.float64)
        per = -(t * xp.log(pc) + (1 - t) * xp.log(1 - pc))
    else:                                       # from_logits=True: Keras does not clip
        inside = True
        per = xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))
    w = None
    if weights is not None:
        w = _row_weights(xp, weights, z.size, z.dtype).reshape(z.shape)
    loss = per.mean() if w is None else (per * w).sum() / z.size
    n = z.size

    def backward(g):
        grad = (p - t) * inside * (g / n)
        return (grad if w is None else grad * w,)
    return from_op(xp.asarray(loss, dtype=z.dtype), (logits,), backward, "sigmoid_bce")


# ------------------------------------------------------------------ Loss objects

class Loss:
    """loss(y_true, y_pred) -> scalar Tensor (mean over the batch, Keras' default reduction).

    `fused_with` names the final activation this loss can absorb ('softmax' or
    'sigmoid'); `call_on_logits` is then used instead of `__call__` in training.
    """

    name = "loss"
    fused_with: str | None = None
    #: False for a wrapped loss function: it returns a mean already, so it cannot weight samples or steps
    takes_weights = True

    def __init__(self, from_logits=False, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction not in ("sum_over_batch_size", "auto"):
            raise ValueError(f"{type(self).__name__}: reduction={reduction!r} is not supported; only Keras' default "
                             "'sum_over_batch_size' (the mean over the batch) is")
        if dtype not in (None, "float32"):
            raise ValueError(f"{type(self).__name__}: only float32 losses are supported, got dtype={dtype!r}")
        self.from_logits = bool(from_logits)
        if name:
            self.name = name

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Mean loss over the batch; with sample_weight (one per sample), Keras' weighted
        reduction: sum(weight * per-sample loss) / number of samples.  A mask on y_pred
        (`_keras_mask`, from Embedding(mask_zero=True) / Masking) limits the mean to the unmasked
        steps, as in Keras 3 (apply_mask)."""
        mask = getattr(y_pred, "_keras_mask", None)
        if self._user_call():
            return self._call_user(y_true, y_pred, sample_weight, mask)
        if mask is not None:
            if not self.takes_weights:
                raise ValueError(f"the model's output is masked (Embedding(mask_zero=True) / Masking), and the "
                                 f"custom loss {self.name!r} returns a mean already, so it cannot leave the "
                                 "masked steps out; use a built-in loss, or drop the mask")
            sample_weight = apply_mask(sample_weight, mask)
        if not isinstance(y_pred, Tensor):
            y_pred = Tensor(np.asarray(y_pred, dtype=np.float32))
        if self.from_logits:
            return self.call_on_logits(y_true, y_pred, sample_weight)
        if sample_weight is None:
            return self.call(y_true, y_pred)
        return self.call(y_true, y_pred, sample_weight)

    def call(self, y_true, y_pred: Tensor, sample_weight=None) -> Tensor:
        raise NotImplementedError

    def _user_call(self) -> bool:
        """call() is the user's (a keras.losses.Loss subclass, or a loss function given to compile)."""
        return type(self).call.__module__ != __name__ or getattr(self, "_fn", None) is not None

    def _call_user(self, y_true, y_pred, sample_weight, mask):
        """Keras 3's Loss.__call__ around a user's call(): y_true and y_pred as float32 Tensors, call()
        returns one loss per sample (or per step), then reduce_weighted_values with Keras' default
        'sum_over_batch_size': sum(weight * value) / number of values (a mask adds step weights,
        apply_mask).  A call() that already returns a scalar is used as is (it cannot be weighted)."""
        if not isinstance(y_pred, Tensor):
            y_pred = Tensor(np.asarray(y_pred, dtype=np.float32))
        if not isinstance(y_true, Tensor):
            xp = get_array_module(y_pred.data)
            y_true = Tensor._wrap(xp.asarray(y_true, dtype=np.float32))
        values = self.call(y_true, y_pred)
        if not isinstance(values, Tensor):
            values = Tensor(np.asarray(values, dtype=np.float32))
        sample_weight = apply_mask(sample_weight, mask)
        if values.ndim == 0:
            fix = ("return one value per sample instead (e.g. ops.mean(ops.square(y_true - y_pred), axis=-1)), "
                   "as Keras losses do")
            if mask is not None:
                raise ValueError(f"the model's output is masked (Embedding(mask_zero=True) / Masking), and the custom "
                                 f"loss {self.name!r} returns one number for the batch, so it cannot leave the masked "
                                 f"steps out; {fix}")
            if sample_weight is not None:
                raise ValueError(f"sample_weight / class_weight: the custom loss {self.name!r} returns one number for "
                                 f"the batch, so its samples cannot be weighted; {fix}")
            return values
        if sample_weight is not None:
            values = values * _sample_weights(values, sample_weight)
        return values.sum() / max(values.size, 1)

    def call_on_logits(self, y_true, logits: Tensor, sample_weight=None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no logits form")

    def get_config(self):
        return {"from_logits": self.from_logits, "name": self.name}


def _raw(y):
    return y.data if isinstance(y, Tensor) else y


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"
    fused_with = "softmax"

    def call(self, y_true, y_pred, sample_weight=None):
        xp = get_array_module(y_pred.data)
        p = y_pred.reshape(-1, y_pred.shape[-1])
        p = p / p.sum(axis=-1, keepdims=True)
        p = ops.clip(p, EPSILON, 1.0 - EPSILON)
        y = xp.asarray(_raw(y_true)).reshape(-1).astype(np.int64)
        picked = p[xp.arange(p.shape[0]), y]
        if sample_weight is None:
            return -ops.log(picked).mean()
        w = Tensor(_row_weights(xp, sample_weight, p.shape[0], y_pred.dtype))
        return -(ops.log(picked) * w).sum() / p.shape[0]

    def call_on_logits(self, y_true, logits, sample_weight=None):
        return sparse_softmax_cross_entropy(logits, _raw(y_true), sample_weight, clip=not self.from_logits)


def _check_smoothing(label_smoothing, axis, cls):
    if axis != -1:
        raise ValueError(f"{cls}: only axis=-1 (the last axis holds the classes) is supported, got axis={axis!r}")
    ls = float(label_smoothing or 0.0)
    if not 0.0 <= ls <= 1.0:
        raise ValueError(f"{cls}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return ls


def _smooth_categorical(xp, t, ls):
    """Keras' categorical label smoothing: t * (1 - ls) + ls / num_classes (before its clip of the
    probabilities, which then applies to the smoothed terms as to any soft target)."""
    if not ls:
        return t
    dt = t.dtype.type
    return t * dt(1.0 - ls) + dt(ls) / dt(t.shape[-1])


def _smooth_binary(xp, t, ls):
    """Keras' binary label smoothing: t * (1 - ls) + 0.5 * ls (labels squeezed towards 0.5)."""
    if not ls:
        return t
    dt = t.dtype.type
    return t * dt(1.0 - ls) + dt(0.5 * ls)


class CategoricalCrossentropy(Loss):
    """Keras' CategoricalCrossentropy(from_logits=False, label_smoothing=0.0, axis=-1): label_smoothing
    replaces the one-hot targets by t * (1 - ls) + ls / num_classes before the cross-entropy, in the
    probability path, the fused softmax path and from_logits=True alike."""
    name = "categorical_crossentropy"
    fused_with = "softmax"

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name=None, dtype=None):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = _check_smoothing(label_smoothing, axis, type(self).__name__)
        self.axis = -1

    def call(self, y_true, y_pred, sample_weight=None):
        xp = get_array_module(y_pred.data)
        t = xp.asarray(_raw(y_true), dtype=y_pred.dtype)
        if t.shape != y_pred.shape:
            return softmax_cross_entropy(y_pred, t)      # raises the readable shape error
        t = _smooth_categorical(xp, t, self.label_smoothing)
        p = y_pred / y_pred.sum(axis=-1, keepdims=True)
        p = ops.clip(p, EPSILON, 1.0 - EPSILON)
        n = int(np.prod(y_pred.shape[:-1]))
        if sample_weight is None:
            return -(ops.log(p) * t).sum() / n
        per = (ops.log(p) * t).sum(axis=-1)
        return -(per * _sample_weights(per, sample_weight)).sum() / n

    def call_on_logits(self, y_true, logits, sample_weight=None):
        xp = get_array_module(logits.data)
        t = xp.asarray(_raw(y_true), dtype=logits.dtype)
        if t.shape == tuple(logits.shape):
            t = _smooth_categorical(xp, t, self.label_smoothing)
        return softmax_cross_entropy(logits, t, sample_weight, clip=not self.from_logits)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "axis": self.axis}


class BinaryCrossentropy(Loss):
    """Keras' BinaryCrossentropy(from_logits=False, label_smoothing=0.0, axis=-1): label_smoothing
    squeezes the targets towards 0.5 (t * (1 - ls) + 0.5 * ls) before the cross-entropy, in the
    probability path, the fused sigmoid path and from_logits=True alike."""
    name = "binary_crossentropy"
    fused_with = "sigmoid"

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name=None, dtype=None):
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = _check_smoothing(label_smoothing, axis, type(self).__name__)
        self.axis = -1

    def call(self, y_true, y_pred, sample_weight=None):
        xp = get_array_module(y_pred.data)
        t = xp.asarray(_raw(y_true), dtype=y_pred.dtype).reshape(y_pred.shape)
        t = _smooth_binary(xp, t, self.label_smoothing)
        p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        per = ops.log(p) * t + ops.log(1.0 - p) * (1.0 - t)
        if sample_weight is None:
            return -per.mean()
        return -(per * _sample_weights(per, sample_weight)).sum() / per.size

    def call_on_logits(self, y_true, logits, sample_weight=None):
        xp = get_array_module(logits.data)
        t = xp.asarray(_raw(y_true), dtype=logits.dtype)
        if t.size == logits.size:
            t = _smooth_binary(xp, t.reshape(logits.shape), self.label_smoothing)
        # the fused path (a sigmoid model) takes Keras' probability-space value; from_logits=True as before
        return sigmoid_binary_cross_entropy(logits, t, sample_weight, keras_probs=not self.from_logits)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "axis": self.axis}


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def call(self, y_true, y_pred, sample_weight=None):
        xp = get_array_module(y_pred.data)
        t = xp.asarray(_raw(y_true), dtype=y_pred.dtype)
        if t.size == y_pred.size and t.shape != y_pred.shape:
            t = t.reshape(y_pred.shape)
        d = y_pred - t
        if sample_weight is None:
            return (d * d).mean()
        return ((d * d) * _sample_weights(d, sample_weight)).sum() / d.size


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def call(self, y_true, y_pred, sample_weight=None):
        xp = get_array_module(y_pred.data)
        t = xp.asarray(_raw(y_true), dtype=y_pred.dtype)
        if t.size == y_pred.size and t.shape != y_pred.shape:
            t = t.reshape(y_pred.shape)
        a = ops.abs_(y_pred - t)
        if sample_weight is None:
            return a.mean()
        return (a * _sample_weights(a, sample_weight)).sum() / a.size


class _PerSampleLoss(Loss):
    """A Keras LossFunctionWrapper loss: `_values` gives one value per sample (per position of y_pred
    but the last axis), reduced as Keras' 'sum_over_batch_size': sum(weight * value) / number of values
    (sample weights one per sample, or per step from a mask)."""

    def __init__(self, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def _values(self, y_true, y_pred):
        raise NotImplementedError

    def call(self, y_true, y_pred, sample_weight=None):
        values = self._values(y_true, y_pred)
        if values.ndim == 0:
            values = values.reshape(1)
        if sample_weight is None:
            return values.sum() / values.size
        return (values * _sample_weights(values, sample_weight)).sum() / values.size

    def get_config(self):
        return {"name": self.name}


class MeanAbsolutePercentageError(_PerSampleLoss):
    """100 * mean(|y_true - y_pred| / max(|y_true|, 1e-7)) over the last axis."""
    name = "mean_absolute_percentage_error"

    def _values(self, y_true, y_pred):
        return mean_absolute_percentage_error(y_true, y_pred)


class MeanSquaredLogarithmicError(_PerSampleLoss):
    """mean((log(max(y_pred, 1e-7) + 1) - log(max(y_true, 1e-7) + 1))^2) over the last axis."""
    name = "mean_squared_logarithmic_error"

    def _values(self, y_true, y_pred):
        return mean_squared_logarithmic_error(y_true, y_pred)


class Huber(_PerSampleLoss):
    """mean(0.5 e^2 where |e| <= delta, else delta |e| - 0.5 delta^2) over the last axis, e = y_pred - y_true."""
    name = "huber_loss"

    def __init__(self, delta=1.0, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.delta = float(delta)

    def _values(self, y_true, y_pred):
        return huber(y_true, y_pred, self.delta)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class LogCosh(_PerSampleLoss):
    """mean(log(cosh(y_pred - y_true))) over the last axis, as Keras: x + softplus(-2x) - log(2)."""
    name = "log_cosh"

    def _values(self, y_true, y_pred):
        return log_cosh(y_true, y_pred)


class KLDivergence(_PerSampleLoss):
    """sum(t * log(t / p)) over the last axis, t and p clipped to [1e-7, 1]."""
    name = "kl_divergence"

    def _values(self, y_true, y_pred):
        return kl_divergence(y_true, y_pred)


class Poisson(_PerSampleLoss):
    """mean(y_pred - y_true * log(y_pred + 1e-7)) over the last axis."""
    name = "poisson"

    def _values(self, y_true, y_pred):
        return poisson(y_true, y_pred)


class Hinge(_PerSampleLoss):
    """mean(max(1 - y_true * y_pred, 0)) over the last axis; 0/1 labels become -1/1 (when every label
    of the batch is 0 or 1, as Keras checks)."""
    name = "hinge"

    def _values(self, y_true, y_pred):
        return hinge(y_true, y_pred)


class SquaredHinge(_PerSampleLoss):
    """mean(max(1 - y_true * y_pred, 0)^2) over the last axis; 0/1 labels become -1/1."""
    name = "squared_hinge"

    def _values(self, y_true, y_pred):
        return squared_hinge(y_true, y_pred)


class CategoricalHinge(_PerSampleLoss):
    """max(max((1 - y_true) * y_pred) - sum(y_true * y_pred) + 1, 0) over the last axis."""
    name = "categorical_hinge"

    def _values(self, y_true, y_pred):
        return categorical_hinge(y_true, y_pred)


class CosineSimilarity(_PerSampleLoss):
    """-sum(l2_normalize(y_true) * l2_normalize(y_pred)) along `axis` (Keras' normalize: x *
    min(rsqrt(sum(x^2)), 1e7), so a zero vector gives 0)."""
    name = "cosine_similarity"

    def __init__(self, axis=-1, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.axis = int(axis)

    def _values(self, y_true, y_pred):
        return cosine_similarity(y_true, y_pred, axis=self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


_BY_NAME = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "mape": MeanAbsolutePercentageError,
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "msle": MeanSquaredLogarithmicError,
    "huber": Huber,
    "huber_loss": Huber,
    "log_cosh": LogCosh,
    "logcosh": LogCosh,
    "kl_divergence": KLDivergence,
    "kld": KLDivergence,
    "kullback_leibler_divergence": KLDivergence,
    "poisson": Poisson,
    "hinge": Hinge,
    "squared_hinge": SquaredHinge,
    "categorical_hinge": CategoricalHinge,
    "cosine_similarity": CosineSimilarity,
    "bce": BinaryCrossentropy,
}
_BY_CLASS = {c.__name__: c for c in set(_BY_NAME.values())}


class LossFunctionWrapper(Loss):
    """A loss function given to compile (`def my_loss(y_true, y_pred)`), as Keras 3 wraps it: it
    returns one value per sample and the Loss reduction averages (and weights) them."""

    def __init__(self, fn, name=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", "custom_loss"))
        self._fn, self._fn_kwargs = fn, kwargs

    def call(self, y_true, y_pred, sample_weight=None):
        return self._fn(y_true, y_pred, **self._fn_kwargs)


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
        return LossFunctionWrapper(identifier)
    raise TypeError(f"cannot interpret {identifier!r} as a loss")


def serialize(loss: Loss) -> dict:
    cls = type(loss)
    if cls.__name__ not in _BY_CLASS:
        raise TypeError(f"cannot save the custom loss {loss.name!r} with the model; "
                        "save with include_optimizer=False and compile again after loading")
    return {"class_name": cls.__name__, "config": loss.get_config()}


# Keras' loss functions: one value per sample (per position of y_pred but the last axis), as
# keras.losses.mean_squared_error(y, p) etc. return them; the Loss classes reduce.
def _probs_or_logprobs(y_pred, from_logits):
    """log-probabilities over the last axis: log_softmax of logits, or Keras' normalised and
    clipped probabilities."""
    if from_logits:
        return y_pred - y_pred.logsumexp(axis=-1, keepdims=True)
    p = y_pred / y_pred.sum(axis=-1, keepdims=True)
    return ops.log(ops.clip(p, EPSILON, 1.0 - EPSILON))


def _pred(y_pred):
    return y_pred if isinstance(y_pred, Tensor) else Tensor(np.asarray(y_pred, dtype=np.float32))


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    y_pred = _pred(y_pred)
    xp = get_array_module(y_pred.data)
    logp = _probs_or_logprobs(y_pred, from_logits)
    lead = tuple(y_pred.shape[:-1])
    y = xp.asarray(_raw(y_true)).reshape(-1).astype(np.int64)
    flat = logp.reshape(-1, y_pred.shape[-1])
    if y.shape[0] != flat.shape[0]:
        raise ValueError(f"sparse_categorical_crossentropy: {y.shape[0]} labels for predictions of shape "
                         f"{tuple(y_pred.shape)}")
    return (-flat[xp.arange(flat.shape[0]), y]).reshape(lead)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    y_pred = _pred(y_pred)
    xp = get_array_module(y_pred.data)
    ls = _check_smoothing(label_smoothing, axis, "categorical_crossentropy")
    t = _smooth_categorical(xp, xp.asarray(_raw(y_true), dtype=y_pred.dtype).reshape(y_pred.shape), ls)
    return -(Tensor._wrap(t) * _probs_or_logprobs(y_pred, from_logits)).sum(axis=-1)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    y_pred = _pred(y_pred)
    xp = get_array_module(y_pred.data)
    ls = _check_smoothing(label_smoothing, axis, "binary_crossentropy")
    t = Tensor._wrap(_smooth_binary(xp, xp.asarray(_raw(y_true), dtype=y_pred.dtype).reshape(y_pred.shape), ls))
    if from_logits:
        per = y_pred.clamp(min=0) - y_pred * t + ops.log(1.0 + ops.exp(-ops.abs_(y_pred)))
    else:
        p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        per = -(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p))
    return per.mean(axis=-1)


def _target_like(y_true, y_pred):
    xp = get_array_module(y_pred.data)
    t = xp.asarray(_raw(y_true), dtype=y_pred.dtype)
    return Tensor._wrap(t.reshape(y_pred.shape) if t.size == y_pred.size else t)


def mean_squared_error(y_true, y_pred):
    y_pred = _pred(y_pred)
    d = y_pred - _target_like(y_true, y_pred)
    return (d * d).mean(axis=-1)


def mean_absolute_error(y_true, y_pred):
    y_pred = _pred(y_pred)
    return ops.abs_(y_pred - _target_like(y_true, y_pred)).mean(axis=-1)


mse = mean_squared_error
mae = mean_absolute_error


def mean_absolute_percentage_error(y_true, y_pred):
    y_pred = _pred(y_pred)
    t = _target_like(y_true, y_pred)
    diff = ops.abs_((t - y_pred) / ops.maximum(ops.abs_(t), EPSILON))
    return diff.mean(axis=-1) * 100.0


def mean_squared_logarithmic_error(y_true, y_pred):
    y_pred = _pred(y_pred)
    t = _target_like(y_true, y_pred)
    d = ops.log(ops.maximum(y_pred, EPSILON) + 1.0) - ops.log(ops.maximum(t, EPSILON) + 1.0)
    return ops.square(d).mean(axis=-1)


def huber(y_true, y_pred, delta=1.0):
    y_pred = _pred(y_pred)
    error = y_pred - _target_like(y_true, y_pred)
    abs_error = ops.abs_(error)
    delta = np.float32(delta)
    quadratic = ops.square(error) * 0.5
    linear = abs_error * delta - np.float32(0.5) * (delta * delta)
    return ops.where(abs_error.data <= delta, quadratic, linear).mean(axis=-1)


def log_cosh(y_true, y_pred):
    from ..nn.functional import softplus      # torch's softplus (threshold 20), as Keras' torch backend
    y_pred = _pred(y_pred)
    x = y_pred - _target_like(y_true, y_pred)
    return (x + softplus(x * -2.0) - float(np.log(np.float32(2.0)))).mean(axis=-1)


def kl_divergence(y_true, y_pred):
    y_pred = _pred(y_pred)
    t = ops.clip(_target_like(y_true, y_pred), EPSILON, 1.0)
    p = ops.clip(y_pred, EPSILON, 1.0)
    return (t * ops.log(t / p)).sum(axis=-1)


def poisson(y_true, y_pred):
    y_pred = _pred(y_pred)
    t = _target_like(y_true, y_pred)
    return (y_pred - t * ops.log(y_pred + EPSILON)).mean(axis=-1)


def _hinge_labels(y_true, y_pred):
    """Keras' convert_binary_labels_to_hinge: 0/1 labels (all of them) become -1/1."""
    t = _target_like(y_true, y_pred)
    xp = get_array_module(t.data)
    if bool(xp.all((t.data == 0) | (t.data == 1))):
        return Tensor._wrap(t.data * t.dtype.type(2.0) - t.dtype.type(1.0))
    return t


def hinge(y_true, y_pred):
    y_pred = _pred(y_pred)
    return ops.maximum(1.0 - _hinge_labels(y_true, y_pred) * y_pred, 0.0).mean(axis=-1)


def squared_hinge(y_true, y_pred):
    y_pred = _pred(y_pred)
    return ops.square(ops.maximum(1.0 - _hinge_labels(y_true, y_pred) * y_pred, 0.0)).mean(axis=-1)


def categorical_hinge(y_true, y_pred):
    y_pred = _pred(y_pred)
    t = _target_like(y_true, y_pred)
    pos = (t * y_pred).sum(axis=-1)
    neg = ((1.0 - t) * y_pred).max(axis=-1)
    return ops.maximum(neg - pos + 1.0, 0.0)


def _l2_normalize(x, axis):
    """Keras' ops.normalize(x, axis, order=2): x * min(rsqrt(sum(x^2, axis)), 1 / 1e-7)."""
    inv = ops.minimum(ops.rsqrt(ops.square(x).sum(axis=axis, keepdims=True)), 1.0 / EPSILON)
    return x * inv


def cosine_similarity(y_true, y_pred, axis=-1):
    y_pred = _pred(y_pred)
    t = _target_like(y_true, y_pred)
    with np.errstate(divide="ignore"):
        return -(_l2_normalize(t, axis) * _l2_normalize(y_pred, axis)).sum(axis=axis)


mape = mean_absolute_percentage_error
msle = mean_squared_logarithmic_error
kld = kl_divergence
logcosh = log_cosh
