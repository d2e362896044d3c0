"""Conv2D and the pooling layers: Keras arguments, engine NCHW kernels underneath.

The kernel is stored in Keras' layout (kh, kw, in, out) so get_weights /
set_weights / saved files are interchangeable with Keras; each call views it as
PyTorch's (out, in, kh, kw) for engine.nn.functional.conv2d (a 4-axis transpose
of a small array, differentiable).  'same' padding follows Keras/TensorFlow: the
extra row/column of an odd total padding goes at the bottom/right.
"""
from __future__ import annotations


import numpy as np

from ...backend import get_array_module
from ...nn import functional as F
from ...tensor import Tensor
from ... import ops
from .. import activations, initializers
from .base import CF, CL, Layer, to_channels_first
from .core import _WithActivation, _shape_error

__all__ = ["Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D"]


def _pair(v, what):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v}")
    return v


def _check_format(data_format, cls):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{cls}: only data_format='channels_last' (Keras' default) is supported; "
                         "transpose your data to (N, H, W, C)")


def _check_padding(padding, cls):
    padding = str(padding).lower()
    if padding not in ("valid", "same"):
        raise ValueError(f"{cls}: padding must be 'valid' or 'same', got {padding!r}")
    return padding


def _out_len(n, k, s, d, padding):
    if n is None:
        return None
    if padding == "same":
        return -(-n // s)
    eff = (k - 1) * d + 1
    return (n - eff) // s + 1 if n >= eff else 0


def _same_pads(n, k, s, d=1):
    eff = (k - 1) * d + 1
    total = max((-(-n // s) - 1) * s + eff - n, 0)
    return total // 2, total - total // 2


def _pad_nchw(x, pads, value):
    """Pad H and W of an NCHW tensor with a constant (differentiable; asymmetric allowed)."""
    (top, bottom), (left, right) = pads
    xp = get_array_module(x.data)

    def const(shape):
        return Tensor(xp.full(shape, value, dtype=x.dtype))

    n, c, h, w = x.shape
    if top or bottom:
        parts = ([const((n, c, top, w))] if top else []) + [x] + \
                ([const((n, c, bottom, w))] if bottom else [])
        x = ops.concat(parts, axis=2)
    h = x.shape[2]
    if left or right:
        parts = ([const((n, c, h, left))] if left else []) + [x] + \
                ([const((n, c, h, right))] if right else [])
        x = ops.concat(parts, axis=3)
    return x


def conv2d_keras(x, weight, bias, kernel_size, strides, dilation, padding, groups=1):
    """F.conv2d on NCHW x with Keras' padding ('same': TensorFlow's, the odd extra row/column at the
    bottom/right); weight is PyTorch's (out, in / groups, kh, kw)."""
    pad = (0, 0)
    if padding == "same":
        ph = _same_pads(x.shape[2], kernel_size[0], strides[0], dilation[0])
        pw = _same_pads(x.shape[3], kernel_size[1], strides[1], dilation[1])
        if ph[0] == ph[1] and pw[0] == pw[1]:
            pad = (ph[0], pw[0])
        else:
            x = _pad_nchw(x, (ph, pw), 0.0)
    kw = {"dilation": tuple(dilation)} if tuple(dilation) != (1, 1) else {}
    if groups != 1:
        kw["groups"] = groups
    return F.conv2d(x, weight, bias, stride=tuple(strides), padding=pad, **kw)


class _Spatial(Layer):
    """Layers that run on NCHW internally and accept either layout."""

    input_ndim = 4

    def call(self, inputs, training=False):
        y, layout = self.call_internal(inputs, CL, training)
        return y.transpose(0, 2, 3, 1) if layout == CF else y

    def call_internal(self, x, layout, training, final_logits=False):
        if layout == CL:
            x = to_channels_first(x)
        return self._call_nchw(x, training, final_logits), CF


class Conv2D(_Spatial, _WithActivation):
    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, groups=1,
                 **kwargs):
        kwargs.update(kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer)
        _check_format(data_format, "Conv2D")
        super().__init__(**kwargs)
        if int(filters) <= 0:
            raise ValueError(f"Conv2D: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "Conv2D kernel_size")
        self.strides = _pair(strides, "Conv2D strides")
        self.dilation_rate = _pair(dilation_rate, "Conv2D dilation_rate")
        self.padding = _check_padding(padding, "Conv2D")
        self.groups = int(groups)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        cin = input_shape[-1]
        if cin is None:
            raise ValueError(f'layer "{self.name}" (Conv2D) needs a known channel axis (last), got '
                             f"input shape {input_shape}")
        if cin % self.groups or self.filters % self.groups:
            raise ValueError(f'layer "{self.name}" (Conv2D): groups={self.groups} must divide the input '
                             f"channels ({cin}) and filters ({self.filters})")
        kh, kw = self.kernel_size
        self.add_weight("kernel", (kh, kw, cin // self.groups, self.filters), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    def expected_input_shape(self):
        return (None, None, None, self.input_shape_built[-1]) if self.input_shape_built else None

    def check_input_shape(self, shape, built=True):
        super().check_input_shape(shape, built)
        h, w = shape[1], shape[2]
        if self.padding == "valid":
            for n, k, d in ((h, self.kernel_size[0], self.dilation_rate[0]),
                            (w, self.kernel_size[1], self.dilation_rate[1])):
                if n is not None and n < (k - 1) * d + 1:
                    raise _shape_error(self, shape, f"spatial size >= the kernel {self.kernel_size}",
                                       " (use padding='same' or a smaller kernel)")

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        return (n, _out_len(h, self.kernel_size[0], self.strides[0], self.dilation_rate[0], self.padding),
                _out_len(w, self.kernel_size[1], self.strides[1], self.dilation_rate[1], self.padding),
                self.filters)

    def _call_nchw(self, x, training, final_logits=False):
        weight = self.kernel.transpose(3, 2, 0, 1)            # (kh,kw,in,out) -> (out,in,kh,kw)
        y = conv2d_keras(x, weight, self.bias if self.use_bias else None, self.kernel_size, self.strides,
                         self.dilation_rate, self.padding, self.groups)
        return self._activate(y, final_logits)

    def fusable_with_pool(self, pool) -> bool:
        """Conv2D(relu) -> MaxPooling2D(2) can run as the engine's fused conv+relu+pool op."""
        return (self.activation is activations.relu and self.groups == 1
                and type(pool) is MaxPooling2D and pool.pool_size == (2, 2) and pool.strides == (2, 2)
                and pool.padding == "valid" and hasattr(F, "conv2d_relu_max_pool2d"))

    def call_fused_pool(self, x, layout):
        """max_pool2d(relu(conv(x)), 2) as one node (same values and gradients as the three)."""
        if layout == CL:
            x = to_channels_first(x)
        weight = self.kernel.transpose(3, 2, 0, 1)
        pad = (0, 0)
        if self.padding == "same":
            ph = _same_pads(x.shape[2], self.kernel_size[0], self.strides[0], self.dilation_rate[0])
            pw = _same_pads(x.shape[3], self.kernel_size[1], self.strides[1], self.dilation_rate[1])
            if ph[0] == ph[1] and pw[0] == pw[1]:
                pad = (ph[0], pw[0])
            else:
                x = _pad_nchw(x, (ph, pw), 0.0)
        return F.conv2d_relu_max_pool2d(x, weight, self.bias if self.use_bias else None,
                                        stride=self.strides, padding=pad, dilation=self.dilation_rate), CF

    def _activate(self, y, final_logits):
        if final_logits or self.activation is activations.linear:
            return y
        if not self.activation.elementwise:
            # e.g. softmax: Keras' axis -1 is the channel axis, axis 1 here
            return self.activation(y.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        return self.activation(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding,
                "dilation_rate": list(self.dilation_rate), "groups": self.groups,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}


class _Pooling2D(_Spatial):
    mode = "max"

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        _check_format(data_format, type(self).__name__)
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, f"{type(self).__name__} pool_size")
        self.strides = _pair(strides, f"{type(self).__name__} strides") if strides is not None \
            else self.pool_size
        self.padding = _check_padding(padding, type(self).__name__)

    def check_input_shape(self, shape, built=True):
        super().check_input_shape(shape, built)
        if self.padding == "valid":
            for n, k in zip(shape[1:3], self.pool_size):
                if n is not None and n < k:
                    raise _shape_error(self, shape, f"spatial size >= pool_size {self.pool_size}",
                                       " (use padding='same' or a smaller pool)")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, _out_len(h, self.pool_size[0], self.strides[0], 1, self.padding),
                _out_len(w, self.pool_size[1], self.strides[1], 1, self.padding), c)

    def _call_nchw(self, x, training, final_logits=False):
        k, s = self.pool_size, self.strides
        if self.padding == "valid":
            return self._pool(x, k, s, (0, 0))
        ph = _same_pads(x.shape[2], k[0], s[0])
        pw = _same_pads(x.shape[3], k[1], s[1])
        return self._pool_same(x, k, s, ph, pw)

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    def _pool(self, x, k, s, pad):
        return F.max_pool2d(x, k, s, pad)

    def _pool_same(self, x, k, s, ph, pw):
        # padded cells must never win: pad with the lowest finite value
        return F.max_pool2d(_pad_nchw(x, (ph, pw), float(np.finfo(np.float32).min)), k, s, (0, 0))


class AveragePooling2D(_Pooling2D):
    def _pool(self, x, k, s, pad):
        return F.avg_pool2d(x, k, s, pad)

    def _pool_same(self, x, k, s, ph, pw):
        # Keras averages over the real cells of each window only
        summed = F.avg_pool2d(_pad_nchw(x, (ph, pw), 0.0), k, s, (0, 0))
        xp = get_array_module(x.data)
        ones = Tensor(xp.ones((1, 1) + x.shape[2:], dtype=x.dtype))
        frac = F.avg_pool2d(_pad_nchw(ones, (ph, pw), 0.0), k, s, (0, 0))
        return summed / frac.data


class _GlobalPooling2D(Layer):
    input_ndim = 4

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        _check_format(data_format, type(self).__name__)
        super().__init__(**kwargs)
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        n, _, _, c = input_shape
        return (n, 1, 1, c) if self.keepdims else (n, c)

    def call(self, inputs, training=False):
        y, layout = self.call_internal(inputs, CL, training)
        return y

    def call_internal(self, x, layout, training, final_logits=False):
        axes = (2, 3) if layout == CF else (1, 2)
        y = self._reduce(x, axes, self.keepdims)
        return y, (layout if self.keepdims else CL)

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    @staticmethod
    def _reduce(x, axes, keepdims):
        return x.mean(axis=axes, keepdims=keepdims)


class GlobalMaxPooling2D(_GlobalPooling2D):
    @staticmethod
    def _reduce(x, axes, keepdims):
        return x.max(axis=axes, keepdims=keepdims)
