"""Keras' 1-D convolution and pooling for sequences (batch, timesteps, features), run through the
2-D paths on a (N, C, 1, T) view; Keras' arguments, defaults and kernel layout (k, in, out)."""
from __future__ import annotations

import contextlib

import numpy as np

from ...backend import get_array_module
from ...nn import functional as F
from ...tensor import Tensor, from_op
from .. import activations, initializers
from .base import Layer
from .convolutional import _check_format, _out_len, _pad_nchw, _same_pads, MaxPooling2D, AveragePooling2D
from .core import _WithActivation, _shape_error

__all__ = ["Conv1D", "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D"]


def _one(v, what):
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{what} must be an int or a 1-tuple, got {v}")
        v = v[0]
    return int(v)


def _seq_to_nchw(x):
    """(N, T, C) -> (N, C, 1, T)"""
    n, t, c = x.shape
    return x.transpose(0, 2, 1).reshape(n, c, 1, t)


def _nchw_to_seq(y):
    """(N, C, 1, T) -> (N, T, C)"""
    n, c, _, t = y.shape
    return y.reshape(n, c, t).transpose(0, 2, 1)


class Conv1D(_WithActivation):
    """Keras' Conv1D on (N, T, C): kernel (kernel_size, in, filters); padding 'valid', 'same'
    (TensorFlow's split, the extra step at the end) or 'causal' (all padding before the sequence)."""

    input_ndim = 3

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        kwargs.update(kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer)
        _check_format(data_format, "Conv1D")
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _one(kernel_size, "Conv1D kernel_size")
        self.strides = _one(strides, "Conv1D strides")
        self.dilation_rate = _one(dilation_rate, "Conv1D dilation_rate")
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same", "causal"):
            raise ValueError(f"Conv1D: padding must be 'valid', 'same' or 'causal', got {padding!r}")
        self.groups = int(groups)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        cin = input_shape[-1]
        if cin is None:
            raise ValueError(f'layer "{self.name}" (Conv1D) needs a known feature axis (last)')
        if cin % self.groups or self.filters % self.groups:
            raise ValueError(f'layer "{self.name}" (Conv1D): groups={self.groups} must divide the input '
                             f"channels ({cin}) and filters ({self.filters})")
        self.add_weight("kernel", (self.kernel_size, cin // self.groups, self.filters), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    def expected_input_shape(self):
        return (None, None, self.input_shape_built[-1]) if self.input_shape_built else None

    def compute_output_shape(self, input_shape):
        n, t, _ = input_shape
        pad = "same" if self.padding == "same" else "valid"
        if self.padding == "causal":
            t = None if t is None else t + (self.kernel_size - 1) * self.dilation_rate
        return (n, _out_len(t, self.kernel_size, self.strides, self.dilation_rate, pad), self.filters)

    def call(self, inputs, training=False, final_logits=False):
        x = _seq_to_nchw(inputs)
        k, d = self.kernel_size, self.dilation_rate
        if self.padding == "same":
            x = _pad_nchw(x, ((0, 0), _same_pads(x.shape[3], k, self.strides, d)), 0.0)
        elif self.padding == "causal":
            x = _pad_nchw(x, ((0, 0), ((k - 1) * d, 0)), 0.0)
        if x.shape[3] < (k - 1) * d + 1:
            raise _shape_error(self, inputs.shape, f"at least {(k - 1) * d + 1} timesteps",
                               " (use padding='same' or a smaller kernel)")
        weight = self.kernel.transpose(2, 1, 0).reshape(self.filters, -1, 1, k)   # (out, in, 1, k)
        kw = {"dilation": (1, d)} if d != 1 else {}
        if self.groups != 1:
            kw["groups"] = self.groups
        y = F.conv2d(x, weight, self.bias if self.use_bias else None, stride=(1, self.strides), padding=(0, 0), **kw)
        return self._activate(_nchw_to_seq(y), final_logits)

    def call_internal(self, x, layout, training, final_logits=False):
        return self.call(x, training, final_logits), layout

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": [self.kernel_size],
                "strides": [self.strides], "padding": self.padding, "dilation_rate": [self.dilation_rate],
                "groups": self.groups, "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias, "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}


class _Pooling1D(Layer):
    input_ndim = 3
    _pool2d = None

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        _check_format(data_format, type(self).__name__)
        super().__init__(**kwargs)
        self.pool_size = _one(pool_size, f"{type(self).__name__} pool_size")
        self.strides = _one(strides, f"{type(self).__name__} strides") if strides is not None else self.pool_size
        self.padding = str(padding).lower()
        # the 2-D pooling on a (N, C, 1, T) view does the work ('same' handled as Keras does)
        object.__setattr__(self, "_p2", self._pool2d((1, self.pool_size), (1, self.strides), self.padding,
                                                     name=f"_{self.name}_2d"))

    def compute_output_shape(self, input_shape):
        n, t, c = input_shape
        return (n, _out_len(t, self.pool_size, self.strides, 1, self.padding), c)

    def check_input_shape(self, shape, built=True):
        super().check_input_shape(shape, built)
        if self.padding == "valid" and shape[1] is not None and shape[1] < self.pool_size:
            raise _shape_error(self, shape, f"at least pool_size={self.pool_size} timesteps")

    def call(self, inputs, training=False):
        return _nchw_to_seq(self._p2._call_nchw(_seq_to_nchw(inputs), training))

    def get_config(self):
        return {**super().get_config(), "pool_size": [self.pool_size], "strides": [self.strides],
                "padding": self.padding}


class MaxPooling1D(_Pooling1D):
    _pool2d = MaxPooling2D


class AveragePooling1D(_Pooling1D):
    _pool2d = AveragePooling2D


class _GlobalPooling1D(Layer):
    input_ndim = 3

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        _check_format(data_format, type(self).__name__)
        super().__init__(**kwargs)
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        n, _, c = input_shape
        return (n, 1, c) if self.keepdims else (n, c)

    def call(self, inputs, training=False):
        return self._reduce(inputs)

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class GlobalAveragePooling1D(_GlobalPooling1D):
    """The mean over the steps; with a mask (Keras 3), the mean over the unmasked steps, and no
    mask after it.  A sequence with no unmasked step gives NaN (0 / 0), as in Keras."""

    supports_masking = True

    def _reduce(self, x):
        return x.mean(axis=1, keepdims=self.keepdims)

    def call(self, inputs, training=False, mask=None):
        if mask is None:
            return self._reduce(inputs)
        return masked_mean(inputs, mask, self.keepdims)

    def compute_mask(self, inputs, mask=None):
        return None


def masked_mean(x: Tensor, mask, keepdims: bool) -> Tensor:
    """sum(x * m, steps) / sum(m, steps) for x (N, T, C) and a (N, T) mask m, one graph node."""
    xp = get_array_module(x.data)
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"GlobalAveragePooling1D: the mask must have shape (batch, steps) = {tuple(x.shape[:2])}, "
                         f"got {tuple(mask.shape)}")
    m = mask.astype(x.dtype)[:, :, None]
    count = m.sum(axis=1, keepdims=True)                      # (N, 1, 1)
    with _quiet(xp):
        out = (x.data * m).sum(axis=1, keepdims=True) / count   # 0 / 0 for an all-masked row
    n, _, c = x.shape

    def backward(g):
        with _quiet(xp):
            return (g.reshape(n, 1, c) * m / count,)
    return from_op(out if keepdims else out.reshape(n, c), (x,), backward, "masked_mean")


def _quiet(xp):
    """numpy's divide/invalid warnings off (Keras returns NaN for an all-masked row silently)."""
    return np.errstate(divide="ignore", invalid="ignore") if xp is np else contextlib.nullcontext()


class GlobalMaxPooling1D(_GlobalPooling1D):
    """The max over the steps.  As in Keras 3 it takes no mask: a mask reaching it is dropped with
    Keras' warning, and padded steps take part in the max."""

    def _reduce(self, x):
        return x.max(axis=1, keepdims=self.keepdims)
