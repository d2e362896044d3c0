"""Keras metrics as running (stateful) accumulators over an epoch.

`fit` and `evaluate` report, like Keras, the value over all samples seen so far in
the epoch, not the last batch.  Metrics are computed on raw arrays without
recording a graph.  Accuracy metrics work on logits as well as probabilities
(argmax is the same; the binary threshold moves from 0.5 to 0), which is what lets
the model train on logits under the fused loss.  On a masked output (Keras 3's
MeanMetricWrapper with the mask as sample weight) a metric averages the unmasked steps only.
A metric compiled as one of `weighted_metrics` also takes the sample weights (Keras 3's
reduce_to_samplewise_values): each sample's value, averaged over its (unmasked) steps, counts
with its weight, so the result is sum(w * value) / sum(w).
"""
from __future__ import annotations

import copy

import numpy as np

from ..backend import get_array_module
from ..tensor import Tensor

__all__ = ["Metric", "MetricVariable", "Mean", "MeanAbsolutePercentageError", "SparseCategoricalAccuracy", "CategoricalAccuracy", "BinaryAccuracy",
           "MeanSquaredError", "MeanAbsoluteError", "get", "with_log_names"]


def _raw(y):
    return y.data if isinstance(y, Tensor) else y


class MetricVariable:
    """A metric's state variable (Keras 3's `self.add_variable(...)`): a float32 array with assign,
    assign_add, assign_sub and numpy(); float() of a scalar one is its value, so result() may return it."""

    def __init__(self, value, name):
        self.name = name
        self._initial = np.array(value, dtype=np.float32)
        self.value = self._initial.copy()

    @staticmethod
    def _raw(v):
        return np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float32)

    def assign(self, v):
        self.value = np.broadcast_to(self._raw(v), self._initial.shape).astype(np.float32)

    def assign_add(self, v):
        self.assign(self.value + self._raw(v))

    def assign_sub(self, v):
        self.assign(self.value - self._raw(v))

    def numpy(self):
        return self.value.copy()

    @property
    def shape(self):
        return self.value.shape

    def __array__(self, dtype=None, copy=None):
        return self.value if dtype is None else self.value.astype(dtype)

    def __float__(self):
        return float(self.value)

    def __repr__(self):
        return f"<MetricVariable {self.name}={self.value}>"

    # Keras variables take part in arithmetic (`return self.total / self.count` in result()); here the
    # result is a float32 numpy array, which result() may return.
    def _binary(op, reflected=False):
        def method(self, other):
            a, b = self.value, MetricVariable._raw(other)
            return op(b, a) if reflected else op(a, b)
        return method

    __add__, __radd__ = _binary(np.add), _binary(np.add, True)
    __sub__, __rsub__ = _binary(np.subtract), _binary(np.subtract, True)
    __mul__, __rmul__ = _binary(np.multiply), _binary(np.multiply, True)
    __truediv__, __rtruediv__ = _binary(np.divide), _binary(np.divide, True)
    __pow__, __rpow__ = _binary(np.power), _binary(np.power, True)
    del _binary

    def __neg__(self):
        return -self.value

    def __abs__(self):
        return np.abs(self.value)


class Metric:
    """Base of the metrics.  Built-in ones keep a running (total, count); a user subclass written for Keras 3
    (`update_state(y_true, y_pred, sample_weight=None)`, `result()`, state from `self.add_variable(...)`,
    optionally `reset_state()`) receives y_true and y_pred as float32 Tensors - the probabilities even when
    the model trains on logits under the fused loss - and the sample weights only as a weighted metric."""

    name = "metric"

    def __init__(self, name=None, dtype=None):
        if name:
            self.name = name
        self._variables = []
        self.total = 0.0
        self.count = 0

    def add_variable(self, shape=(), initializer="zeros", dtype=None, aggregation="sum", name=None):
        """A state variable of `shape` started (and reset) by `initializer` ('zeros', 'ones' or a number)."""
        if name is not None and not isinstance(name, str):      # Keras 2 order: add_weight(name, shape, ...)
            name, shape = shape, name
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in (shape or ()))
        if isinstance(initializer, (int, float)):
            init = float(initializer)
        elif initializer in ("zeros", None):
            init = 0.0
        elif initializer == "ones":
            init = 1.0
        else:
            raise ValueError(f"metric {self.name!r}: add_variable initializer must be 'zeros', 'ones' or a number, "
                             f"got {initializer!r}")
        v = MetricVariable(np.full(shape, init, dtype=np.float32), name or f"variable_{len(self._variables)}")
        self._variables.append(v)
        return v

    def add_weight(self, name=None, shape=(), initializer="zeros", dtype=None, aggregation="sum", **kwargs):
        """Keras 2's spelling of add_variable (`self.add_weight(name="tp", initializer="zeros")`)."""
        return self.add_variable(shape=shape, initializer=initializer, name=name)

    @property
    def variables(self):
        return list(self.__dict__.get("_variables", []))

    def reset_state(self):
        if not self._user_api():        # a user metric may name its own variables total / count
            self.total = 0.0
            self.count = 0
        for v in self.__dict__.get("_variables", []):
            v.value = v._initial.copy()

    def reset_states(self):             # Keras 2's name
        self.reset_state()

    def _user_api(self) -> bool:
        """The subclass defines Keras 3's update_state(y_true, y_pred, sample_weight=None) itself."""
        return type(self).update_state not in (Metric.update_state, Mean.update_state)

    def update_state(self, y_true, y_pred, sample_weight=None, *, logits=False, mask=None):
        """Keras' update_state(y_true, y_pred, sample_weight=None); `logits` (y_pred holds logits
        of a fused loss) and `mask` are the facade's own, keyword-only."""
        if mask is None and sample_weight is None:
            value, count = self.batch_value(_raw(y_true), _raw(y_pred), logits)
            self.total += float(value)
            self.count += int(count)
            return
        value, count = self.weighted_batch_value(_raw(y_true), _raw(y_pred), logits, _raw(mask),
                                                 _raw(sample_weight))
        self.total += float(value)
        self.count += float(count)

    def batch_value(self, y_true, y_pred, logits):
        """-> (sum over the batch, number of samples)"""
        raise NotImplementedError

    def step_values(self, y_true, y_pred, logits):
        """The metric at every position of y_pred but the last axis (what Keras' metric functions
        return), for masks and sample weights."""
        raise NotImplementedError(f"{type(self).__name__} does not support masked outputs or weighted_metrics: "
                                  "define step_values(y_true, y_pred, logits)")

    def weighted_batch_value(self, y_true, y_pred, logits, mask=None, sample_weight=None):
        """Keras 3's Mean with a weight per step: the mask (1 on kept steps) times the sample's weight.
        Per sample, the mean of value * weight and of weight over the steps; total and count sum those
        (one weight per sample and no mask: sum(w * value) / sum(w))."""
        v = self.step_values(y_true, y_pred, logits).astype("float64")
        xp = get_array_module(v)
        w = xp.ones(v.shape, dtype=v.dtype)
        if sample_weight is not None:
            w = w * xp.asarray(sample_weight, dtype=v.dtype).reshape((-1,) + (1,) * (v.ndim - 1))
        if mask is not None:
            w = w * xp.asarray(mask).astype(v.dtype).reshape(v.shape)
        axes = tuple(range(1, v.ndim))
        if not axes:
            return (v * w).sum(), w.sum()
        return (v * w).mean(axis=axes).sum(), w.mean(axis=axes).sum()

    def result(self):
        return self.total / self.count if self.count else 0.0

    def __repr__(self):
        return f"<metric {self.name}: {self.result():.4f}>"


class Mean(Metric):
    """keras.metrics.Mean: the weighted mean of every value given (`update_state(values,
    sample_weight=None)`, weights broadcast to the values); also the facade's loss tracker."""

    name = "mean"

    def update_state(self, values, sample_weight=None):
        v = np.asarray(_raw(values), dtype=np.float64)
        w = np.ones_like(v) if sample_weight is None else np.broadcast_to(
            np.asarray(_raw(sample_weight), dtype=np.float64).reshape(
                np.shape(_raw(sample_weight)) + (1,) * (v.ndim - np.ndim(_raw(sample_weight)))), v.shape)
        self.total += float((v * w).sum())
        self.count += float(w.sum())

    def update(self, value, weight=1):
        self.total += float(value) * weight
        self.count += weight


class SparseCategoricalAccuracy(Metric):
    _direction = "up"
    name = "sparse_categorical_accuracy"

    def step_values(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        return y_pred.argmax(axis=-1) == xp.asarray(y_true).reshape(y_pred.shape[:-1])

    def batch_value(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        pred = y_pred.reshape(-1, y_pred.shape[-1]).argmax(axis=1)
        y = xp.asarray(y_true).reshape(-1)
        return (pred == y).sum(), pred.shape[0]


class CategoricalAccuracy(Metric):
    _direction = "up"
    name = "categorical_accuracy"

    def step_values(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        return y_pred.argmax(axis=-1) == xp.asarray(y_true).reshape(y_pred.shape).argmax(axis=-1)

    def batch_value(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        pred = y_pred.reshape(-1, y_pred.shape[-1]).argmax(axis=1)
        y = xp.asarray(y_true).reshape(-1, y_pred.shape[-1]).argmax(axis=1)
        return (pred == y).sum(), pred.shape[0]


class BinaryAccuracy(Metric):
    """Keras': the prediction thresholded to 0/1 must equal y_true exactly (soft labels count as misses)."""
    _direction = "up"
    name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = threshold
        super().__init__(name)

    def step_values(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        thr = 0.0 if logits else self.threshold
        y = xp.asarray(y_true).reshape(y_pred.shape)
        return ((y_pred > thr).astype(y_pred.dtype) == y).mean(axis=-1)

    def batch_value(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        thr = 0.0 if logits else self.threshold
        pred = (y_pred > thr).reshape(-1).astype(y_pred.dtype)
        y = xp.asarray(y_true).reshape(-1)
        return (pred == y).sum(), pred.shape[0]


class MeanSquaredError(Metric):
    _direction = "down"
    name = "mean_squared_error"

    def step_values(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        return ((y_pred - xp.asarray(y_true, dtype=y_pred.dtype).reshape(y_pred.shape)) ** 2).mean(axis=-1)

    def batch_value(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        t = xp.asarray(y_true, dtype=y_pred.dtype).reshape(y_pred.shape)
        per_sample = ((y_pred - t) ** 2).reshape(y_pred.shape[0], -1).mean(axis=1)
        return per_sample.sum(), y_pred.shape[0]


class MeanAbsoluteError(Metric):
    _direction = "down"
    name = "mean_absolute_error"

    def step_values(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        return xp.abs(y_pred - xp.asarray(y_true, dtype=y_pred.dtype).reshape(y_pred.shape)).mean(axis=-1)

    def batch_value(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        t = xp.asarray(y_true, dtype=y_pred.dtype).reshape(y_pred.shape)
        per_sample = xp.abs(y_pred - t).reshape(y_pred.shape[0], -1).mean(axis=1)
        return per_sample.sum(), y_pred.shape[0]


class MeanAbsolutePercentageError(Metric):
    """100 * mean(|y_true - y_pred| / max(|y_true|, 1e-7)) over the last axis, as Keras."""
    _direction = "down"
    name = "mean_absolute_percentage_error"

    def step_values(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        t = xp.asarray(y_true, dtype=y_pred.dtype).reshape(y_pred.shape)
        return 100.0 * (xp.abs(t - y_pred) / xp.maximum(xp.abs(t), 1e-7)).mean(axis=-1)

    def batch_value(self, y_true, y_pred, logits):
        v = self.step_values(y_true, y_pred, logits)
        return v.reshape(v.shape[0], -1).mean(axis=1).sum(), y_pred.shape[0]


_BY_NAME = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError, "mape": MeanAbsolutePercentageError,
}


def _accuracy_class(loss_name, output_shape, y_shape):
    """Keras' choice for 'accuracy': from the shapes of the targets and the predictions
    (keras.src.trainers.compile_utils: binary when the prediction has one unit, sparse when the
    targets have fewer axes or a last axis of 1, else categorical).  Without targets (a
    DataLoader, or a model loaded before it saw data) the loss decides."""
    p_last = output_shape[-1] if output_shape else None
    if y_shape is not None and output_shape:
        if p_last == 1:
            return BinaryAccuracy
        y_last = y_shape[-1] if len(y_shape) else None
        if len(y_shape) < len(output_shape) or (y_last == 1 and p_last is not None and p_last > 1):
            return SparseCategoricalAccuracy
        return CategoricalAccuracy
    loss_name = loss_name or ""              # an output without a loss (compile(loss=[None, ...]))
    if "binary" in loss_name or p_last == 1:
        return BinaryAccuracy
    if loss_name.startswith("sparse"):
        return SparseCategoricalAccuracy
    return CategoricalAccuracy


def get(identifier, loss_name: str, output_shape, y_shape=None) -> Metric:
    """Resolve a metric; 'accuracy'/'acc' picks the variant Keras picks (see _accuracy_class)."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if not isinstance(identifier, str):
        raise TypeError(f"cannot interpret {identifier!r} as a metric; use a name such as 'accuracy'")
    key = identifier.lower()
    if key in ("accuracy", "acc"):
        cls = _accuracy_class(loss_name, output_shape, y_shape)
        return cls(name=identifier)           # History keys use the name the user wrote
    if key not in _BY_NAME:
        raise ValueError(f"unknown metric {identifier!r}; known: accuracy, {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[key](name=identifier)


def with_log_names(entries):
    """entries: (metric, output name or "", weighted) in Keras' order: the plain metrics (of every
    output), then the weighted ones.  -> the metrics named as Keras 3 logs them (CompileMetrics.result):
    `<output>_<name>` for several outputs; a repeated name gets `_1`, `_2`, ...; a weighted metric
    whose name a plain one has becomes `weighted_<name>` (compile(metrics=['mae'],
    weighted_metrics=['mae']) logs `mae` and `weighted_mae`).  Each metric is marked `_weighted`
    (it takes the sample weights); one that must be renamed, or is listed twice, is a copy, so a
    user's Metric object keeps its name."""
    counts, out = {}, []
    for m, prefix, weighted in entries:
        pre = f"{prefix}_" if prefix else ""
        name = pre + m.name
        if name in counts and weighted:
            name = f"{pre}weighted_{m.name}"
        if name in counts:
            counts[name] += 1
            name = f"{name}_{counts[name] - 1}"
        else:
            counts[name] = 1
        if name != m.name or any(m is o for o in out):
            m = copy.deepcopy(m)
            m.name = name
        m._weighted = bool(weighted)
        out.append(m)
    return out
