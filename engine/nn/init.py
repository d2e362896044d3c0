"""Parameter initialisers with torch.nn.init's names, formulas and defaults.

Random numbers come from the engine's global generator (`engine.manual_seed(s)`
makes model construction reproducible) unless a `generator=` is given.  They are
drawn on the CPU in float64 and cast to the tensor's dtype, then copied into the
tensor's array in place (also on a GPU), so one seed gives the same weights on
every device.  Values differ from PyTorch's (different random streams); the
distributions are the same.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import random as _random
from ..tensor import Tensor, no_grad


def _rng(generator):
    return generator if generator is not None else _random.default_generator()


def _fill(tensor: Tensor, values):
    """Write a CPU array into the tensor's storage in place (keeps Parameter identity and device)."""
    arr = np.asarray(values, dtype=tensor.dtype)
    if backend.is_cupy_array(tensor.data):
        tensor.data[...] = backend.to_device(arr, tensor.device)
    else:
        tensor.data[...] = arr
    return tensor


def calculate_gain(nonlinearity: str, param=None) -> float:
    linear_fns = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d")
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor: Tensor):
    if tensor.ndim < 2:
        raise ValueError("fan in and fan out can not be computed for a tensor with fewer than 2 dimensions")
    receptive = int(np.prod(tensor.shape[2:])) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode {mode!r} is not supported, use 'fan_in' or 'fan_out'")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


@no_grad()
def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator=None):
    return _fill(tensor, _rng(generator).uniform(a, b, size=tensor.shape))


@no_grad()
def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    return _fill(tensor, _rng(generator).normal(mean, std, size=tensor.shape))


@no_grad()
def trunc_normal_(tensor: Tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """Normal(mean, std) truncated to [a, b] by resampling the values that fall outside."""
    rng = _rng(generator)
    vals = rng.normal(mean, std, size=tensor.shape)
    bad = (vals < a) | (vals > b)
    while bad.any():
        vals[bad] = rng.normal(mean, std, size=int(bad.sum()))
        bad = (vals < a) | (vals > b)
    return _fill(tensor, vals)


@no_grad()
def constant_(tensor: Tensor, val: float):
    tensor.data[...] = val
    return tensor


def ones_(tensor: Tensor):
    return constant_(tensor, 1.0)


def zeros_(tensor: Tensor):
    return constant_(tensor, 0.0)


@no_grad()
def eye_(tensor: Tensor):
    if tensor.ndim != 2:
        raise ValueError("eye_ only supports 2-D tensors")
    return _fill(tensor, np.eye(*tensor.shape))


@no_grad()
def dirac_(tensor: Tensor, groups: int = 1):
    if tensor.ndim not in (3, 4, 5):
        raise ValueError("dirac_ only supports 3, 4 or 5-D tensors")
    out_per_group = tensor.shape[0] // groups
    min_dim = min(out_per_group, tensor.shape[1])
    vals = np.zeros(tensor.shape)
    centre = tuple(s // 2 for s in tensor.shape[2:])
    for g in range(groups):
        for d in range(min_dim):
            vals[(g * out_per_group + d, d) + centre] = 1
    return _fill(tensor, vals)


@no_grad()
def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator=None):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -a, a, generator)


@no_grad()
def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator=None):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator)


@no_grad()
def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator=None):
    """U(-bound, bound), bound = gain * sqrt(3 / fan).  With a=sqrt(5) (the Linear/Conv default) this is
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if 0 in tensor.shape:
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound, generator)


@no_grad()
def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator=None):
    if 0 in tensor.shape:
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(tensor, 0.0, std, generator)


@no_grad()
def orthogonal_(tensor: Tensor, gain: float = 1.0, generator=None):
    if tensor.ndim < 2:
        raise ValueError("orthogonal_ only supports tensors with 2 or more dimensions")
    rows = tensor.shape[0]
    cols = tensor.size // rows
    flat = _rng(generator).normal(0.0, 1.0, size=(rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, gain * q.reshape(tensor.shape))


# Deprecated torch aliases without the trailing underscore.
uniform = uniform_
normal = normal_
constant = constant_
xavier_uniform = xavier_uniform_
xavier_normal = xavier_normal_
kaiming_uniform = kaiming_uniform_
kaiming_normal = kaiming_normal_
orthogonal = orthogonal_
