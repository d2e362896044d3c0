"""Fused bias + activation, forward and backward, for numpy and cupy arrays.

    y          = bias_act_forward(x, bias=None, act="relu", axis=1)
    dx, dbias  = bias_act_backward(grad, act, y=y, x=x, bias=bias, axis=1)

`bias` has shape (x.shape[axis],) and is broadcast along `axis` (1 for NCHW and for (N, features) inputs,
-1 for channels-last).  act is one of ACT_CODES; "gelu" is the exact erf form and "gelu_tanh" PyTorch's
approximate="tanh".  Fusing saves one full read+write of the activation tensor per direction on the GPU
(one ElementwiseKernel instead of an add kernel then an activation kernel).

Backward needs the output y for relu/tanh/sigmoid (cheapest, nothing recomputed) and the input x (+ bias)
for gelu, whose derivative is not a function of its output.  Whichever is needed must be given; if both
are, y is used when it suffices.  dbias is None when bias is None.
"""
from __future__ import annotations

import numpy as np

from . import _runtime as rt
from . import _source
from .npmath import erf as _np_erf

#: activation name -> kind code understood by act.cuh
ACT_CODES = {"none": 0, "identity": 0, "linear": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "tanh": 4,
             "sigmoid": 5}
_FROM_OUTPUT = {"none", "identity", "linear", "relu", "tanh", "sigmoid"}

_PRE = "act.cuh"
_FWD_BIAS = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_bias_act_fwd", "T x, T b, int32 kind", "T y", "y = dpt_act_forward(x + b, kind);", _PRE, ("kind",)))
_FWD = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_act_fwd", "T x, int32 kind", "T y", "y = dpt_act_forward(x, kind);", _PRE, ("kind",)))
_BWD_OUT = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_act_bwd_out", "T g, T y, int32 kind", "T dz", "dz = g * dpt_act_grad_from_output(y, kind);", _PRE,
    ("kind",)))
_BWD_IN_BIAS = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_bias_act_bwd_in", "T g, T x, T b, int32 kind", "T dz",
    "dz = g * dpt_act_grad_from_input(x + b, kind);", _PRE, ("kind",)))
_BWD_IN = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_act_bwd_in", "T g, T x, int32 kind", "T dz", "dz = g * dpt_act_grad_from_input(x, kind);", _PRE,
    ("kind",)))


def _kind(act: str, approximate: str = "none") -> str:
    act = (act or "none").lower()
    if act == "gelu" and approximate == "tanh":
        act = "gelu_tanh"
    if act not in ACT_CODES:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACT_CODES)}")
    return act


def _bias_shape(x, bias, axis):
    axis = axis % x.ndim
    if bias.shape != (x.shape[axis],):
        raise ValueError(f"bias shape {bias.shape} does not match x.shape[{axis}] = {x.shape[axis]}")
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return tuple(shape), axis


def bias_act_forward(x, bias=None, act="relu", axis=1, approximate="none"):
    """act(x + bias) with bias broadcast along `axis`."""
    name = _kind(act, approximate)
    if rt.is_cupy(x):
        return forward_gpu(x, bias, name, axis)
    return forward_cpu(x, bias, name, axis)


def bias_act_backward(grad, act, y=None, x=None, bias=None, axis=1, approximate="none"):
    """(dx, dbias): gradient w.r.t. the pre-bias input and the bias (dbias None when bias is None)."""
    name = _kind(act, approximate)
    if y is None and x is None:
        raise ValueError("bias_act_backward needs the forward output y or the input x")
    if name not in _FROM_OUTPUT and x is None:
        raise ValueError(f"bias_act_backward: {name} derivative needs the pre-activation input x")
    if rt.is_cupy(grad):
        return backward_gpu(grad, name, y, x, bias, axis)
    return backward_cpu(grad, name, y, x, bias, axis)


# ---------------------------------------------------------------------------------------------------- CPU

_SQRT1_2 = 0.7071067811865476
_SQRT2_PI = 0.7978845608028654
_INV_SQRT_2PI = 0.3989422804014327
_GELU_K = 0.044715


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def act_forward_cpu(z, name):
    """act(z) in numpy (z is not modified)."""
    if name in ("none", "identity", "linear"):
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0)
    if name == "gelu":
        return (0.5 * z * (1 + _np_erf(z * z.dtype.type(_SQRT1_2)))).astype(z.dtype, copy=False)
    if name == "gelu_tanh":
        return (0.5 * z * (1 + np.tanh(_SQRT2_PI * (z + _GELU_K * z ** 3)))).astype(z.dtype, copy=False)
    if name == "tanh":
        return np.tanh(z)
    return _sigmoid(z)


def act_grad_cpu(name, y=None, z=None):
    """d act/d z, from the output y when `name` allows it and y is given, else from z."""
    if y is not None and name in _FROM_OUTPUT:
        if name == "relu":
            return (y > 0).astype(y.dtype)
        if name == "tanh":
            return 1 - y * y
        if name == "sigmoid":
            return y * (1 - y)
        return np.ones_like(y)
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "gelu":
        cdf = 0.5 * (1 + _np_erf(z * z.dtype.type(_SQRT1_2)))
        return (cdf + z * np.exp(-0.5 * z * z) * _INV_SQRT_2PI).astype(z.dtype, copy=False)
    if name == "gelu_tanh":
        t = np.tanh(_SQRT2_PI * (z + _GELU_K * z ** 3))
        return (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT2_PI * (1 + 3 * _GELU_K * z * z)).astype(
            z.dtype, copy=False)
    if name == "tanh":
        t = np.tanh(z)
        return 1 - t * t
    if name == "sigmoid":
        s = _sigmoid(z)
        return s * (1 - s)
    return np.ones_like(z)


def forward_cpu(x, bias, name, axis=1):
    z = x
    if bias is not None:
        shape, _ = _bias_shape(x, bias, axis)
        z = x + bias.reshape(shape)
        if name == "relu":
            return np.maximum(z, 0, out=z)
    return act_forward_cpu(z, name)


def _sum_except(a, axis):
    return a.sum(axis=tuple(d for d in range(a.ndim) if d != axis))


def backward_cpu(grad, name, y=None, x=None, bias=None, axis=1):
    if name in ("none", "identity", "linear"):
        dz = grad
    elif y is not None and name in _FROM_OUTPUT:
        dz = grad * act_grad_cpu(name, y=y)
    else:
        z = x if bias is None else x + bias.reshape(_bias_shape(x, bias, axis)[0])
        dz = grad * act_grad_cpu(name, z=z)
    dbias = None
    if bias is not None:
        _, ax = _bias_shape(dz, bias, axis)
        dbias = _sum_except(dz, ax)
    return dz, dbias


# ---------------------------------------------------------------------------------------------------- GPU


def _xp_of(a):
    return rt.cupy() if rt.is_cupy(a) else np


def forward_gpu(x, bias, name, axis=1, launcher=None):
    """One ElementwiseKernel launch (cupy broadcasts the reshaped bias); `launcher` is for the emulator."""
    launcher = launcher or rt.LAUNCHER
    xp = _xp_of(x)
    rt.float_suffix(x.dtype)
    kind = rt.i32(ACT_CODES[name])
    y = xp.empty(x.shape, dtype=x.dtype)
    if bias is None:
        launcher.elementwise(_FWD.name, x, kind, y)
    else:
        shape, _ = _bias_shape(x, bias, axis)
        launcher.elementwise(_FWD_BIAS.name, x, bias.astype(x.dtype, copy=False).reshape(shape), kind, y)
    return y


def backward_gpu(grad, name, y=None, x=None, bias=None, axis=1, launcher=None):
    launcher = launcher or rt.LAUNCHER
    xp = _xp_of(grad)
    rt.float_suffix(grad.dtype)
    kind = rt.i32(ACT_CODES[name])
    if name in ("none", "identity", "linear"):
        dz = grad
    else:
        dz = xp.empty(grad.shape, dtype=grad.dtype)
        if y is not None and name in _FROM_OUTPUT:
            launcher.elementwise(_BWD_OUT.name, grad, y, kind, dz)
        elif bias is None:
            launcher.elementwise(_BWD_IN.name, grad, x, kind, dz)
        else:
            shape, _ = _bias_shape(x, bias, axis)
            launcher.elementwise(_BWD_IN_BIAS.name, grad, x, bias.astype(x.dtype, copy=False).reshape(shape),
                                 kind, dz)
    dbias = None
    if bias is not None:
        _, ax = _bias_shape(dz, bias, axis)
        dbias = _sum_except(dz, ax)
    return dz, dbias
