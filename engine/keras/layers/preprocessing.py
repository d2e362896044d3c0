"""Preprocessing layers that keep their statistics as weights: Normalization (with adapt()) and
Rescaling."""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ...tensor import Tensor
from .base import Layer, shape_str

__all__ = ["Normalization", "Rescaling"]


class Normalization(Layer):
    """Feature-wise (x - mean) / max(sqrt(variance), 1e-7) on `axis` (default the last), with
    mean and variance from `adapt(data)` (population variance, as Keras) or given directly.
    The statistics are non-trainable weights `mean` and `variance`."""

    layout_agnostic = False
    supports_masking = True

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        if invert:
            raise ValueError("Normalization: invert=True is not supported")
        super().__init__(**kwargs)
        if axis is None:
            axis = ()
        self.axis = (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)
        if (mean is None) != (variance is None):
            raise ValueError("Normalization: pass both mean and variance, or neither (and call adapt())")
        self._init_mean, self._init_var = mean, variance

    def _stat_shape(self, input_shape):
        nd = len(input_shape)
        axes = [a % nd for a in self.axis]
        if any(input_shape[a] is None for a in axes):
            raise ValueError(f'layer "{self.name}" (Normalization): axis {self.axis} of input shape '
                             f"{shape_str(input_shape)} must be known")
        return tuple(input_shape[a] if a in axes else 1 for a in range(1, nd))

    def build(self, input_shape):
        shape = self._stat_shape(input_shape)
        self.add_weight("mean", shape, "zeros", trainable=False)
        self.add_weight("variance", shape, "ones", trainable=False)
        if self._init_mean is not None:
            xp = get_array_module(self.mean.data)
            self.mean.data[...] = xp.asarray(np.broadcast_to(np.asarray(self._init_mean, np.float32), shape))
            self.variance.data[...] = xp.asarray(np.broadcast_to(np.asarray(self._init_var, np.float32), shape))

    def adapt(self, data, batch_size=None, steps=None):
        """Compute mean and variance of `data` (an array of samples) over every axis but `axis`."""
        arr = np.asarray(data.data if isinstance(data, Tensor) else data, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if not self.built:
            self._build_for((None,) + arr.shape[1:])
            self.built = True
        nd = arr.ndim
        axes = {a % nd for a in self.axis}
        red = tuple(a for a in range(nd) if a not in axes)
        shape = self.mean.shape
        xp = get_array_module(self.mean.data)       # the weights may live on a GPU
        self.mean.data[...] = xp.asarray(arr.mean(axis=red).reshape(shape).astype(np.float32))
        self.variance.data[...] = xp.asarray(arr.var(axis=red).reshape(shape).astype(np.float32))

    def expected_input_shape(self):
        s = self.input_shape_built
        if s is None:
            return None
        axes = {a % len(s) for a in self.axis}
        return tuple(s[i] if i in axes else None for i in range(len(s)))

    def call(self, inputs, training=False):
        from ... import ops
        std = ops.maximum(ops.sqrt(self.variance), 1e-7)
        return (inputs - self.mean) / std

    def get_config(self):
        return {**super().get_config(), "axis": list(self.axis)}


class Rescaling(Layer):
    """x * scale + offset (e.g. Rescaling(1./255) for uint8 images)."""

    layout_agnostic = True
    supports_masking = True

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = float(scale), float(offset)

    def call(self, inputs, training=False):
        y = inputs * self.scale
        return y + self.offset if self.offset else y

    def call_internal(self, x, layout, training, final_logits=False):
        return self.call(x, training), layout

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}
