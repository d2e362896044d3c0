"""BatchNorm1d / BatchNorm2d (running statistics as buffers), LayerNorm and GroupNorm."""
from __future__ import annotations

import numbers

import numpy as np

from ..tensor import DEFAULT_FLOAT, Tensor
from . import functional as F
from . import init
from ._factory import new_param, place
from .functional import ShapeError
from .module import Module


class _BatchNorm(Module):
    _expected_dims: tuple = ()
    _layout: str = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, bias: bool = True):
        super().__init__()
        self.num_features = int(num_features)
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self._has_bias = bias
        if affine:
            self.weight = new_param((num_features,), device, dtype)
            if bias:
                self.bias = new_param((num_features,), device, dtype)
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        dt = np.dtype(dtype) if dtype is not None else np.dtype(DEFAULT_FLOAT)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(place(np.zeros(num_features, dtype=dt), device)))
            self.register_buffer("running_var", Tensor(place(np.ones(num_features, dtype=dt), device)))
            self.register_buffer("num_batches_tracked", Tensor(place(np.array(0, dtype=np.int64), device)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input(self, input):
        shape = tuple(input.shape)
        if len(shape) not in self._expected_dims or shape[1] != self.num_features:
            raise ShapeError(f"{self!r}: expected input of shape {self._layout.format(C=self.num_features)}, "
                             f"got {shape}")

    def forward(self, input):
        self._check_input(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.data[...] += 1
            if self.momentum is None:          # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.data)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_stats = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if use_stats else None,
                            self.running_var if use_stats else None, self.weight, self.bias,
                            bn_training, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self._has_bias}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Normalises (N, C) or (N, C, L) input per channel C."""
    _expected_dims = (2, 3)
    _layout = "(N, {C}) or (N, {C}, L)"


class BatchNorm2d(_BatchNorm):
    """Normalises (N, C, H, W) input per channel C."""
    _expected_dims = (4,)
    _layout = "(N, {C}, H, W)"


class LayerNorm(Module):
    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (int(normalized_shape),)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self._has_bias = bias
        _affine_params(self, self.normalized_shape, elementwise_affine, bias, device, dtype)

    def reset_parameters(self):
        _reset_affine(self)

    def forward(self, input):
        k = len(self.normalized_shape)
        shape = tuple(input.shape)
        if shape[len(shape) - k:] != self.normalized_shape or len(shape) < k:
            raise ShapeError(f"{self!r}: expected input whose last dimensions are {self.normalized_shape}, "
                             f"got {shape}")
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
                + (f", bias={self._has_bias}" if self.elementwise_affine else ""))


def _affine_params(module, shape, affine, bias, device, dtype):
    """weight (ones) and optional bias (zeros) of the given shape, or None parameters, as
    PyTorch's LayerNorm / GroupNorm register them (state_dict keys stay the same)."""
    if affine:
        module.weight = new_param(shape, device, dtype)
        if bias:
            module.bias = new_param(shape, device, dtype)
        else:
            module.register_parameter("bias", None)
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)
    _reset_affine(module)


def _reset_affine(module):
    if module.weight is not None:
        init.ones_(module.weight)
    if module.bias is not None:
        init.zeros_(module.bias)


class GroupNorm(Module):
    """Normalises (N, C, *) input over groups of C / num_groups channels; per-channel affine
    weight (ones) and bias (zeros) as PyTorch.  Batch-size independent, unlike BatchNorm."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None,
                 dtype=None, bias: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels {num_channels} must be divisible by num_groups {num_groups}")
        self.num_groups, self.num_channels = int(num_groups), int(num_channels)
        self.eps, self.affine = eps, affine
        _affine_params(self, (self.num_channels,), affine, bias, device, dtype)

    def reset_parameters(self):
        _reset_affine(self)

    def forward(self, input):
        shape = tuple(input.shape)
        if len(shape) < 2 or shape[1] != self.num_channels:
            raise ShapeError(f"{self!r}: expected input of shape (N, {self.num_channels}, *), got {shape}")
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
