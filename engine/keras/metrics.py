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
The confusion-matrix metrics (Precision, Recall, AUC, TruePositives, ...) follow Keras 3's own
update_state(y_true, y_pred, sample_weight=None) instead: they get what Keras' get (the
probabilities of a softmax / sigmoid model, the raw outputs under from_logits=True, no mask) and
count in float32 variables as keras.src.metrics.metrics_utils does.
"""
from __future__ import annotations

import copy

import numpy as np

from ..backend import get_array_module, is_cupy_array
from ..tensor import Tensor

__all__ = ["Metric", "MetricVariable", "Mean", "MeanAbsolutePercentageError", "SparseCategoricalAccuracy", "CategoricalAccuracy", "BinaryAccuracy",
           "MeanSquaredError", "MeanAbsoluteError", "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy",
           "Precision", "Recall", "AUC", "TruePositives", "FalsePositives", "TrueNegatives", "FalseNegatives",
           "get", "serialize", "with_log_names"]


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

    def get_config(self):
        return {"name": self.name}

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

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}

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


def _in_top_k(xp, target_idx, y_pred, k, what):
    """Keras' ops.in_top_k (torch backend): the target's score is >= the k-th largest score (ties count)."""
    c = y_pred.shape[-1]
    if not 1 <= k <= c:
        raise ValueError(f"{what}: k={k} needs at least k classes, but the predictions have {c} "
                         f"(Keras fails there too: selected index k out of range); pass a smaller k")
    kth = xp.partition(y_pred, c - k, axis=-1)[..., c - k]
    idx = xp.asarray(target_idx).astype(np.int64).reshape(y_pred.shape[:-1])
    target = xp.take_along_axis(y_pred, idx[..., None], axis=-1)[..., 0]
    return target >= kth


class TopKCategoricalAccuracy(Metric):
    """How often the one-hot target's class is among the k highest scores (Keras: ties with the k-th
    score count as hits).  Logits rank as the probabilities do."""
    _direction = "up"
    name = "top_k_categorical_accuracy"

    def __init__(self, k=5, name=None, dtype=None):
        self.k = int(k)
        super().__init__(name)

    def step_values(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        t = xp.asarray(y_true).reshape(y_pred.shape)
        return _in_top_k(xp, t.argmax(axis=-1), y_pred, self.k, self.name)

    def batch_value(self, y_true, y_pred, logits):
        v = self.step_values(y_true, y_pred, logits)
        return v.sum(), v.size

    def get_config(self):
        return {"name": self.name, "k": self.k}


class SparseTopKCategoricalAccuracy(Metric):
    """How often the integer label is among the k highest scores (Keras: ties with the k-th score
    count as hits)."""
    _direction = "up"
    name = "sparse_top_k_categorical_accuracy"

    def __init__(self, k=5, name=None, dtype=None, from_sorted_ids=False):
        if from_sorted_ids:
            raise ValueError("SparseTopKCategoricalAccuracy(from_sorted_ids=True) is not supported")
        self.k = int(k)
        super().__init__(name)

    def step_values(self, y_true, y_pred, logits):
        xp = get_array_module(y_pred)
        y = xp.asarray(y_true)
        if y.size != int(np.prod(y_pred.shape[:-1])):
            raise ValueError(f"{self.name}: {y.size} labels for predictions of shape {tuple(y_pred.shape)}; "
                             "give one integer label per sample")
        return _in_top_k(xp, y, y_pred, self.k, self.name)

    def batch_value(self, y_true, y_pred, logits):
        v = self.step_values(y_true, y_pred, logits)
        return v.sum(), v.size

    def get_config(self):
        return {"name": self.name, "k": self.k}


# ------------------------------------------------------------------ confusion-matrix metrics
# Keras 3's keras.src.metrics.metrics_utils.update_confusion_matrix_variables, in NumPy (float32 state).

_NEG_INF = -1e10
_TP, _FP, _TN, _FN = "tp", "fp", "tn", "fn"


def _host(v):
    """A Tensor / cupy array / MetricVariable / list as a float32 NumPy array."""
    if isinstance(v, Tensor):
        v = v.data
    if is_cupy_array(v):
        v = v.get()
    if isinstance(v, MetricVariable):
        v = v.value
    return np.asarray(v, dtype=np.float32)


def _same_rank(x1, x2, expand_rank_1=True):
    """keras.src.losses.loss.squeeze_or_expand_to_same_rank."""
    if x1.ndim == x2.ndim + 1 and x1.shape[-1] == 1:
        if x2.ndim == 1 and expand_rank_1:
            x2 = x2[..., None]
        else:
            x1 = x1[..., 0]
    elif x2.ndim == x1.ndim + 1 and x2.shape[-1] == 1:
        if x1.ndim == 1 and expand_rank_1:
            x1 = x1[..., None]
        else:
            x2 = x2[..., 0]
    return x1, x2


def _parse_thresholds(thresholds, default):
    if thresholds is None:
        return [float(default)]
    ts = [thresholds] if isinstance(thresholds, (int, float, np.number)) else list(thresholds)
    bad = [t for t in ts if t is None or t < 0 or t > 1]
    if bad:
        raise ValueError(f"Threshold values must be in [0, 1]. Received: {bad}")
    return [float(t) for t in ts]


def _evenly_distributed(thresholds):
    n = len(thresholds)
    if n < 3:
        return False
    return bool(np.allclose(thresholds, np.arange(n, dtype=np.float32) / (n - 1), atol=1e-7))


def _sigmoid32(x):
    """1 / (1 + exp(-x)) in float32, as torch's sigmoid rounds it."""
    one = np.float32(1)
    with np.errstate(over="ignore"):
        return one / (one + np.exp(-x))


def _filter_top_k(x, k):
    """Keras' _filter_top_k: the k highest scores of each row kept, the others set to -1e10."""
    idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    keep = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(keep, idx, True, axis=-1)
    return np.where(keep, x, np.float32(_NEG_INF)).astype(np.float32)


def _confusion_counts(wanted, y_true, y_pred, thresholds, evenly, top_k=None, class_id=None, sample_weight=None,
                      multi_label=False, label_weights=None, what="metric"):
    """{'tp' | 'fp' | 'tn' | 'fn': counts per threshold (T,) or (T, labels) with multi_label}."""
    y_true, y_pred = _host(y_true), _host(y_pred)
    thr = np.asarray(thresholds, dtype=np.float32)
    with_eps = bool(evenly and (thresholds[0] < 0.0 or thresholds[-1] > 1.0))
    y_pred, y_true = _same_rank(y_pred, y_true)
    if sample_weight is not None:
        sw = _host(sample_weight)[..., None]
        _, sample_weight = _same_rank(y_true, sw, expand_rank_1=False)
    if top_k is not None:
        y_pred = _filter_top_k(y_pred, top_k)
    if class_id is not None:
        if y_pred.ndim == 1:
            raise ValueError(f"When class_id is provided, y_pred must be a 2D array with shape (num_samples, "
                             f"num_classes), found shape: {y_pred.shape}")
        y_true, y_pred = y_true[..., class_id, None], y_pred[..., class_id, None]
    if y_true.size != y_pred.size:
        raise ValueError(f"{what}: targets of shape {y_true.shape} for predictions of shape {y_pred.shape}; "
                         "give one 0/1 target per prediction (one-hot targets for a softmax output)")
    y_true = y_true.reshape(y_pred.shape)
    weights = np.ones(y_pred.shape, dtype=np.float32)
    if sample_weight is not None:
        weights = weights * np.broadcast_to(sample_weight, y_pred.shape)
    if label_weights is not None and not multi_label:
        weights = weights * np.broadcast_to(np.asarray(label_weights, dtype=np.float32), y_pred.shape)
    pos = y_true != 0
    if not multi_label:
        y_pred, pos, weights = y_pred.reshape(-1), pos.reshape(-1), weights.reshape(-1)
    n_thr = thr.shape[0]
    out = {}
    if evenly:              # Keras' bucketed path: ceil(p * (T - 1)) - 1 in float32, p clipped to [0, 1]
        p = np.clip(y_pred, np.float32(0), np.float32(1))
        bucket = np.ceil(p * np.float32(n_thr - 1)) - np.float32(1)
        if with_eps:
            bucket = np.maximum(bucket, 0)
        bucket = bucket.astype(np.int64)
        true_w = np.where(pos, weights, 0).astype(np.float64)
        false_w = np.where(pos, 0, weights).astype(np.float64)
        ok = (bucket >= 0) & (bucket < n_thr)

        def per_bucket(w):
            if multi_label:
                cols = [np.bincount(bucket[:, j][ok[:, j]], w[:, j][ok[:, j]], minlength=n_thr)
                        for j in range(bucket.shape[1])]
                return np.stack(cols, axis=1)
            return np.bincount(bucket[ok], w[ok], minlength=n_thr)
        tp = np.cumsum(per_bucket(true_w)[::-1], axis=0)[::-1]
        fp = np.cumsum(per_bucket(false_w)[::-1], axis=0)[::-1]
        total_true, total_false = true_w.sum(axis=0), false_w.sum(axis=0)
        counts = {_TP: tp, _FP: fp, _TN: total_false - fp, _FN: total_true - tp}
        return {c: counts[c].astype(np.float32) for c in wanted}
    shape = (n_thr,) + (1,) * y_pred.ndim
    pred_pos = y_pred[None] > thr.reshape(shape)
    w = weights[None].astype(np.float64)
    cond = {_TP: (pos, True), _FP: (~pos, True), _TN: (~pos, False), _FN: (pos, False)}
    for c in wanted:
        label, want_pos = cond[c]
        hit = (pred_pos if want_pos else ~pred_pos) & label[None]
        out[c] = np.where(hit, w, 0.0).sum(axis=1).astype(np.float32)
    return out


def _divide_no_nan(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, np.float32(0), a / np.where(b == 0, np.float32(1), b)).astype(np.float32)


class _ConfusionMetric(Metric):
    """Base of the confusion-matrix metrics: Keras 3's update_state(y_true, y_pred, sample_weight=None)
    on float32 count variables.  In fit / evaluate they see what Keras' see: the probabilities of a
    model ending in a softmax / sigmoid (also when it trains on the logits under the fused loss), the
    raw outputs under from_logits=True, sample weights only as weighted_metrics, and no output mask."""

    _counts = ()            # which of tp / fp / tn / fn the metric keeps
    _top_k = None
    _class_id = None

    def _init_thresholds(self, thresholds, default):
        self.init_thresholds = thresholds
        self.thresholds = _parse_thresholds(thresholds, default)
        self._thresholds_distributed_evenly = _evenly_distributed(self.thresholds)
        for c in self._counts:
            setattr(self, _VAR_NAMES[c], self.add_variable(shape=(len(self.thresholds),), name=_VAR_NAMES[c]))

    def update_state(self, y_true, y_pred, sample_weight=None):
        counts = _confusion_counts(self._counts, y_true, y_pred, self.thresholds, self._thresholds_distributed_evenly,
                                   top_k=self._top_k, class_id=self._class_id, sample_weight=sample_weight,
                                   what=self.name)
        for c, v in counts.items():
            var = getattr(self, _VAR_NAMES[c])
            var.assign(var.value + v)

    def _per_threshold(self, r):
        return r[0] if len(self.thresholds) == 1 else r

    def __repr__(self):
        return f"<metric {self.name}: {np.round(np.asarray(self.result(), dtype=np.float64), 4)}>"


_VAR_NAMES = {_TP: "true_positives", _FP: "false_positives", _TN: "true_negatives", _FN: "false_negatives"}


class _ConfusionMatrixConditionCount(_ConfusionMetric):
    # Keras gives the raw counts no direction: EarlyStopping / ModelCheckpoint in 'auto' mode raise for them
    _direction = None

    def __init__(self, thresholds=None, name=None, dtype=None):
        super().__init__(name)
        self._init_thresholds(thresholds, 0.5)
        self.accumulator = getattr(self, _VAR_NAMES[self._counts[0]])

    def result(self):
        return self._per_threshold(self.accumulator.value.copy())

    def get_config(self):
        return {"name": self.name, "thresholds": self.init_thresholds}


class TruePositives(_ConfusionMatrixConditionCount):
    """The (weighted) number of positives predicted above each threshold (default 0.5)."""
    name = "true_positives"
    _counts = (_TP,)


class FalsePositives(_ConfusionMatrixConditionCount):
    """The (weighted) number of negatives predicted above each threshold (default 0.5)."""
    name = "false_positives"
    _counts = (_FP,)


class TrueNegatives(_ConfusionMatrixConditionCount):
    """The (weighted) number of negatives predicted at or below each threshold (default 0.5)."""
    name = "true_negatives"
    _counts = (_TN,)


class FalseNegatives(_ConfusionMatrixConditionCount):
    """The (weighted) number of positives predicted at or below each threshold (default 0.5)."""
    name = "false_negatives"
    _counts = (_FN,)


class _PrecisionRecall(_ConfusionMetric):
    """tp / (tp + the other count) at each threshold; top_k / class_id as Keras (with top_k the
    default threshold is -1e10: the k highest scores are the positives)."""
    _direction = "up"
    _other = ""

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        super().__init__(name)
        self._top_k, self._class_id = top_k, class_id
        self.top_k, self.class_id = top_k, class_id
        self._init_thresholds(thresholds, 0.5 if top_k is None else _NEG_INF)

    def result(self):
        tp = self.true_positives.value
        return self._per_threshold(_divide_no_nan(tp, tp + getattr(self, self._other).value))

    def get_config(self):
        return {"name": self.name, "thresholds": self.init_thresholds, "top_k": self.top_k, "class_id": self.class_id}


class Precision(_PrecisionRecall):
    """tp / (tp + fp) at each threshold (default 0.5: y_pred > 0.5 is a positive)."""
    name = "precision"
    _counts = (_TP, _FP)
    _other = "false_positives"


class Recall(_PrecisionRecall):
    """tp / (tp + fn) at each threshold (default 0.5)."""
    name = "recall"
    _counts = (_TP, _FN)
    _other = "false_negatives"


class AUC(_ConfusionMetric):
    """Keras' AUC: the confusion matrix at num_thresholds (default 200) evenly spaced thresholds in
    [0, 1] (the first just below 0, the last just above 1), or at the given `thresholds`; curve 'ROC',
    'PR' or 'PRGAIN', summation_method 'interpolation' (for PR Davis & Goadrich's interpolation, as
    Keras), 'minoring' or 'majoring'; multi_label / label_weights / from_logits as Keras."""
    _direction = "up"
    name = "auc"

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation", name=None, dtype=None,
                 thresholds=None, multi_label=False, num_labels=None, label_weights=None, from_logits=False):
        super().__init__(name)
        curve_s, method_s = str(curve).upper(), str(summation_method).lower()
        if curve_s not in ("ROC", "PR", "PRGAIN"):
            raise ValueError(f'Invalid AUC curve value: "{curve}". Expected values are ["PR", "ROC", "PRGAIN"]')
        if method_s not in ("interpolation", "majoring", "minoring"):
            raise ValueError(f'Invalid AUC summation method value: "{summation_method}". Expected values are '
                             '["interpolation", "majoring", "minoring"]')
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            ts = sorted(_parse_thresholds(thresholds, 0.5))
            self.num_thresholds = len(ts) + 2
            self._thresholds_distributed_evenly = _evenly_distributed([0.0] + ts + [1.0])
        else:
            if num_thresholds <= 1:
                raise ValueError(f"Argument `num_thresholds` must be an integer > 1. Received: "
                                 f"num_thresholds={num_thresholds}")
            self.num_thresholds = int(num_thresholds)
            ts = [(i + 1) * 1.0 / (self.num_thresholds - 1) for i in range(self.num_thresholds - 2)]
            self._thresholds_distributed_evenly = True
        self._thresholds = np.array([0.0 - 1e-7] + ts + [1.0 + 1e-7])
        self.curve, self.summation_method = curve_s, method_s
        self.multi_label = bool(multi_label)
        self.num_labels = num_labels
        self.label_weights = None if label_weights is None else np.asarray(label_weights, dtype=np.float32)
        self._from_logits = bool(from_logits)
        self._built = False
        if self.multi_label:
            if num_labels:
                self._build((None, num_labels))
        else:
            if num_labels:
                raise ValueError("`num_labels` is needed only when `multi_label` is True.")
            self._build(None)

    @property
    def thresholds(self):
        return list(self._thresholds)

    def _build(self, shape):
        if self.multi_label:
            if len(shape) != 2:
                raise ValueError(f"`y_pred` must have rank 2 when `multi_label=True`. Found rank {len(shape)}. "
                                 f"Full shape received for `y_pred`: {shape}")
            var_shape = (self.num_thresholds, int(shape[1]))
        else:
            var_shape = (self.num_thresholds,)
        for c in (_TP, _FP, _TN, _FN):
            setattr(self, _VAR_NAMES[c], self.add_variable(shape=var_shape, name=_VAR_NAMES[c]))
        self._built = True

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = _host(y_pred)
        if not self._built:
            self._build(y_pred.shape)
        if self._from_logits:
            y_pred = _sigmoid32(y_pred)
        counts = _confusion_counts((_TP, _FP, _TN, _FN), y_true, y_pred, self.thresholds,
                                   self._thresholds_distributed_evenly, sample_weight=sample_weight,
                                   multi_label=self.multi_label,
                                   label_weights=None if self.multi_label else self.label_weights, what=self.name)
        for c, v in counts.items():
            var = getattr(self, _VAR_NAMES[c])
            var.assign(var.value + v)

    def _by_label(self, terms):
        if not self.multi_label:
            return np.float32(terms.sum())
        by_label = terms.sum(axis=0)
        if self.label_weights is None:
            return np.float32(by_label.mean())
        return _divide_no_nan(np.float32((by_label * self.label_weights).sum()), np.float32(self.label_weights.sum()))

    def interpolate_pr_auc(self):
        n = self.num_thresholds
        tp, fp, fn = self.true_positives.value, self.false_positives.value, self.false_negatives.value
        dtp = tp[:n - 1] - tp[1:]
        p = tp + fp
        dp = p[:n - 1] - p[1:]
        prec_slope = _divide_no_nan(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - prec_slope * p[1:]
        safe_p_ratio = np.where((p[:n - 1] > 0) & (p[1:] > 0), _divide_no_nan(p[:n - 1], np.maximum(p[1:], 0)),
                                np.float32(1)).astype(np.float32)
        increment = _divide_no_nan(prec_slope * (dtp + intercept * np.log(safe_p_ratio)),
                                   np.maximum(tp[1:] + fn[1:], 0))
        return self._by_label(increment)

    def result(self):
        if not self._built:
            return np.float32(0)
        if self.curve == "PR" and self.summation_method == "interpolation":
            return self.interpolate_pr_auc()
        tp, fp = self.true_positives.value, self.false_positives.value
        tn, fn = self.true_negatives.value, self.false_negatives.value
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide_no_nan(fp, fp + tn), recall
        elif self.curve == "PR":
            x, y = recall, _divide_no_nan(tp, tp + fp)
        else:
            scale = _divide_no_nan(tp + fn, tn + fp)
            recall_gain = np.float32(1) - scale * _divide_no_nan(fn, tp)
            precision_gain = np.float32(1) - scale * _divide_no_nan(fp, tp)
            recall_gain = np.maximum(np.where(tp == 0, np.float32(0), recall_gain), 0)
            precision_gain = np.where(tp == 0, np.float32(1), precision_gain)
            x, y = recall_gain, precision_gain
        n = self.num_thresholds
        if self.summation_method == "interpolation":
            heights = (y[:n - 1] + y[1:]) / np.float32(2)
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:n - 1], y[1:])
        else:
            heights = np.maximum(y[:n - 1], y[1:])
        return self._by_label((x[:n - 1] - x[1:]) * heights)

    def get_config(self):
        config = {"name": self.name, "num_thresholds": self.num_thresholds, "curve": self.curve,
                  "summation_method": self.summation_method, "multi_label": self.multi_label,
                  "num_labels": self.num_labels,
                  "label_weights": None if self.label_weights is None else self.label_weights.tolist(),
                  "from_logits": self._from_logits}
        if self._init_from_thresholds:
            config["thresholds"] = [float(t) for t in self.thresholds[1:-1]]
        return config


_BY_NAME = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError, "mape": MeanAbsolutePercentageError,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "precision": Precision, "recall": Recall, "auc": AUC,
    "true_positives": TruePositives, "false_positives": FalsePositives,
    "true_negatives": TrueNegatives, "false_negatives": FalseNegatives,
}
#: Keras also takes the class names (metrics=["AUC"], ["TruePositives"]); the log keeps the name as written
_BY_CLASS_NAME = {cls.__name__: cls for cls in set(_BY_NAME.values())}


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
    if isinstance(identifier, dict):          # serialize()'s {"class_name", "config"}
        cls = _BY_CLASS_NAME.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"unknown metric class {identifier.get('class_name')!r}")
        return cls(**identifier.get("config", {}))
    if not isinstance(identifier, str):
        raise TypeError(f"cannot interpret {identifier!r} as a metric; use a name such as 'accuracy'")
    key = identifier.lower()
    if key in ("accuracy", "acc"):
        cls = _accuracy_class(loss_name, output_shape, y_shape)
        return cls(name=identifier)           # History keys use the name the user wrote
    cls = _BY_CLASS_NAME.get(identifier) or _BY_NAME.get(key)
    if cls is None:
        raise ValueError(f"unknown metric {identifier!r}; known: accuracy, {', '.join(sorted(_BY_NAME))}")
    return cls(name=identifier)


def serialize(metric):
    """A built-in metric object as {"class_name", "config"} (get() rebuilds it, its name and settings
    included, e.g. AUC(curve="PR", name="pr_auc")); a name string stays a name; a user's metric class
    gives its name, as before."""
    if isinstance(metric, str):
        return metric
    cls = type(metric)
    if _BY_CLASS_NAME.get(cls.__name__) is cls:
        return {"class_name": cls.__name__, "config": metric.get_config()}
    return metric.name


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
