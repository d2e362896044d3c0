"""DepthwiseConv2D and SeparableConv2D (Keras 3's layers, channels-last, Keras' weight layouts).

Why: keras.io's "Image classification from scratch" (a small Xception) is built from
SeparableConv2D.  Both run on the engine's grouped convolution: the depthwise step is a conv
with groups = input channels, whose output channel c * depth_multiplier + m is input channel c
under kernel [:, :, c, m], exactly TensorFlow's depthwise order, so weights are interchangeable
with Keras:

- DepthwiseConv2D: `kernel` (kh, kw, in, depth_multiplier), `bias` (in * depth_multiplier,).
- SeparableConv2D: `depthwise_kernel` (kh, kw, in, depth_multiplier), `pointwise_kernel`
  (1, 1, in * depth_multiplier, filters), `bias` (filters,); strides, dilation and padding apply
  to the depthwise step, the pointwise step is a 1x1 convolution, then bias and activation.

Initialisers are Keras' (glorot_uniform on the Keras-layout shapes, so the fans are Keras'; zero bias).
"""
from __future__ import annotations

from .. import activations, initializers
from .convolutional import Conv2D, _check_format, _check_padding, _out_len, _pair, conv2d_keras

__all__ = ["DepthwiseConv2D", "SeparableConv2D"]


class _DepthwiseBase(Conv2D):
    """Conv2D's shape checks, activation and config handling, with a depthwise kernel."""

    def _init_common(self, kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier,
                     activation, use_bias, bias_initializer, kwargs):
        kind = type(self).__name__
        _check_format(data_format, kind)
        super(Conv2D, self).__init__(**kwargs)
        if int(depth_multiplier) <= 0:
            raise ValueError(f"{kind}: depth_multiplier must be a positive integer, got {depth_multiplier!r}")
        self.depth_multiplier = int(depth_multiplier)
        self.kernel_size = _pair(kernel_size, f"{kind} kernel_size")
        self.strides = _pair(strides, f"{kind} strides")
        self.dilation_rate = _pair(dilation_rate, f"{kind} dilation_rate")
        if self.strides != (1, 1) and self.dilation_rate != (1, 1):
            raise ValueError(f"{kind}: strides > 1 together with dilation_rate > 1 is not supported (as in Keras)")
        self.padding = _check_padding(padding, kind)
        self.groups = 1
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.bias_initializer = initializers.get(bias_initializer)

    def _cin(self, input_shape):
        cin = input_shape[-1]
        if cin is None:
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}) needs a known channel axis (last), '
                             f"got input shape {input_shape}")
        return cin

    def _depthwise(self, x, kernel, bias):
        """kernel (kh, kw, in, dm) -> PyTorch's grouped weight (in * dm, 1, kh, kw)."""
        kh, kw, cin, dm = kernel.shape
        weight = kernel.reshape(kh, kw, 1, cin * dm).transpose(3, 2, 0, 1)
        return conv2d_keras(x, weight, bias, self.kernel_size, self.strides, self.dilation_rate, self.padding,
                            groups=cin)

    def _out_hw(self, input_shape):
        _, h, w, _ = input_shape
        return (_out_len(h, self.kernel_size[0], self.strides[0], self.dilation_rate[0], self.padding),
                _out_len(w, self.kernel_size[1], self.strides[1], self.dilation_rate[1], self.padding))

    def fusable_with_pool(self, pool) -> bool:
        return False

    def _base_config(self):
        cfg = super(Conv2D, self).get_config()
        return {**cfg, "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding, "dilation_rate": list(self.dilation_rate),
                "depth_multiplier": self.depth_multiplier, "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias, "bias_initializer": initializers.serialize(self.bias_initializer)}


class DepthwiseConv2D(_DepthwiseBase):
    """Each input channel convolved with its own depth_multiplier filters (Keras 3's DepthwiseConv2D)."""

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        self._init_common(kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier,
                          activation, use_bias, bias_initializer, kwargs)
        self.depthwise_initializer = initializers.get(depthwise_initializer)

    def build(self, input_shape):
        cin = self._cin(input_shape)
        self.filters = cin * self.depth_multiplier
        kh, kw = self.kernel_size
        self.add_weight("kernel", (kh, kw, cin, self.depth_multiplier), self.depthwise_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self._out_hw(input_shape) + (self._cin(input_shape) * self.depth_multiplier,)

    def _call_nchw(self, x, training, final_logits=False):
        y = self._depthwise(x, self.kernel, self.bias if self.use_bias else None)
        return self._activate(y, final_logits)

    def get_config(self):
        return {**self._base_config(),
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer)}


class SeparableConv2D(_DepthwiseBase):
    """Depthwise convolution, then a 1x1 convolution to `filters` channels (Keras 3's SeparableConv2D)."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        self._init_common(kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier,
                          activation, use_bias, bias_initializer, kwargs)
        if int(filters) <= 0:
            raise ValueError(f"SeparableConv2D: filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.pointwise_initializer = initializers.get(pointwise_initializer)

    def build(self, input_shape):
        cin = self._cin(input_shape)
        kh, kw = self.kernel_size
        dm = self.depth_multiplier
        self.add_weight("depthwise_kernel", (kh, kw, cin, dm), self.depthwise_initializer)
        self.add_weight("pointwise_kernel", (1, 1, cin * dm, self.filters), self.pointwise_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self._out_hw(input_shape) + (self.filters,)

    def _call_nchw(self, x, training, final_logits=False):
        y = self._depthwise(x, self.depthwise_kernel, None)
        pointwise = self.pointwise_kernel.transpose(3, 2, 0, 1)     # (1,1,in*dm,f) -> (f,in*dm,1,1)
        y = conv2d_keras(y, pointwise, self.bias if self.use_bias else None, (1, 1), (1, 1), (1, 1), "valid")
        return self._activate(y, final_logits)

    def get_config(self):
        return {**self._base_config(), "filters": self.filters,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "pointwise_initializer": initializers.serialize(self.pointwise_initializer)}
