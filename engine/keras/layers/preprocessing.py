"""Preprocessing layers that keep their statistics as weights: Normalization (with adapt()) and
Rescaling."""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ...tensor import Tensor
from .base import Layer, shape_str

__all__ = ["Normalization", "Rescaling"]


class Normalization(Layer):
    """Feature-wise (x - mean) / max(sqrt(variance), 1e-7) on `axis` (default the last; None: one
    mean over everything), with mean and variance from `adapt(data)` (population variance, as
    Keras) or given directly; `invert=True` maps back (mean + x * std).  Keras 3's weights: after
    adapt (or without given statistics) non-trainable `mean` and `variance` of shape (the kept
    axes' sizes) and a scalar `count`; with mean= / variance= given, no weights."""

    layout_agnostic = False
    supports_masking = True

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        super().__init__(**kwargs)
        if axis is None:
            axis = ()
        self.axis = (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)
        if (mean is None) != (variance is None):
            raise ValueError("Normalization: pass both mean and variance, or neither (and call adapt())")
        self._init_mean, self._init_var = mean, variance
        self.invert = bool(invert)

    def _keep_axes(self, input_shape):
        nd = len(input_shape)
        if any(not -nd <= a < nd for a in self.axis):
            raise ValueError(f"All `axis` values must be in the range [-ndim, ndim). Received inputs with "
                             f"ndim={nd}, while axis={self.axis}")
        keep = tuple(sorted(a % nd for a in self.axis))
        if any(input_shape[a] is None for a in keep):
            raise ValueError(f'layer "{self.name}" (Normalization): axis {self.axis} of input shape '
                             f"{shape_str(input_shape)} must be known")
        return keep

    def build(self, input_shape):
        keep = self._keep_axes(input_shape)
        self._broadcast = tuple(input_shape[d] if d in keep else 1 for d in range(1, len(input_shape)))
        shape = tuple(input_shape[d] for d in keep)
        if self._init_mean is None:
            self.add_weight("mean", shape, "zeros", trainable=False)
            self.add_weight("variance", shape, "ones", trainable=False)
            self.add_weight("count", (), "zeros", trainable=False)
        else:                                   # constants, as Keras (not weights)
            def fixed(v):
                v = np.asarray(v, np.float32)
                if v.ndim:                      # trailing dims go to the kept axes, as Keras reshapes them
                    full = [1] * len(input_shape)
                    for i in range(1, v.ndim + 1):
                        full[keep[-i]] = v.shape[-i]
                    v = v.reshape(full[1:])
                return Tensor(np.broadcast_to(v, self._broadcast).astype(np.float32))
            self._fixed = (fixed(self._init_mean), fixed(self._init_var))

    def _stats(self):
        if self._init_mean is not None:
            return self._fixed
        return self.mean.reshape(self._broadcast), self.variance.reshape(self._broadcast)

    def adapt(self, data, batch_size=None, steps=None):
        """Compute mean and variance of `data` (an array of samples) over every axis but `axis`."""
        arr = np.asarray(data.data if isinstance(data, Tensor) else data, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if not self.built:
            self._build_for((None,) + arr.shape[1:])
            self.built = True
        if self._init_mean is not None:
            raise ValueError("Normalization: adapt() on a layer created with mean= and variance= "
                             "(Keras: they are fixed)")
        keep = self._keep_axes(arr.shape)
        red = tuple(a for a in range(arr.ndim) if a not in keep)
        xp = get_array_module(self.mean.data)       # the weights may live on a GPU
        self.mean.data[...] = xp.asarray(arr.mean(axis=red).reshape(self.mean.shape).astype(np.float32))
        self.variance.data[...] = xp.asarray(arr.var(axis=red).reshape(self.variance.shape).astype(np.float32))
        self.count.data[...] = float(np.prod([arr.shape[a] for a in red]))

    def expected_input_shape(self):
        s = self.input_shape_built
        if s is None:
            return None
        axes = {a % len(s) for a in self.axis}
        return tuple(s[i] if i in axes else None for i in range(len(s)))

    def call(self, inputs, training=False):
        from ... import ops
        mean, variance = self._stats()
        std = ops.maximum(ops.sqrt(variance), 1e-7)
        if self.invert:
            return mean + inputs * std
        return (inputs - mean) / std

    def get_config(self):
        cfg = {**super().get_config(), "axis": list(self.axis), "invert": self.invert}
        if self._init_mean is not None:
            cfg["mean"] = np.asarray(self._init_mean, np.float32).tolist()
            cfg["variance"] = np.asarray(self._init_var, np.float32).tolist()
        return cfg


class Rescaling(Layer):
    """x * scale + offset (e.g. Rescaling(1./255) for uint8 images)."""

    layout_agnostic = True
    supports_masking = True

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        # a number, or one per channel (the last axis), as Keras
        self.scale = float(scale) if np.ndim(scale) == 0 else np.asarray(scale, np.float32)
        self.offset = float(offset) if np.ndim(offset) == 0 else np.asarray(offset, np.float32)
        self.layout_agnostic = np.ndim(scale) == 0 and np.ndim(offset) == 0

    def call(self, inputs, training=False):
        scale = self.scale if np.ndim(self.scale) == 0 else Tensor._wrap(
            get_array_module(inputs.data).asarray(self.scale))
        y = inputs * scale
        if np.ndim(self.offset):
            return y + Tensor._wrap(get_array_module(inputs.data).asarray(self.offset))
        return y + self.offset if self.offset else y

    def call_internal(self, x, layout, training, final_logits=False):
        if not self.layout_agnostic and layout != "channels_last":
            from .base import CL, to_channels_last
            x, layout = to_channels_last(x), CL
        return self.call(x, training), layout

    def get_config(self):
        def plain(v):
            return v.tolist() if isinstance(v, np.ndarray) else v
        return {**super().get_config(), "scale": plain(self.scale), "offset": plain(self.offset)}
