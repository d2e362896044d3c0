"""keras.ops: the few backend-neutral ops that Keras tutorials use inside custom layers.

Why only these: a custom layer's call() runs on engine Tensors, whose operators (+, *, @, indexing,
reshape, transpose, sum, mean ...) already cover most Keras code; what such code additionally needs
is a way to read a shape and to make position indices (the Transformer tutorials'
`positions = ops.arange(start=0, stop=ops.shape(x)[-1], step=1)`).  Any other name raises an error
that says so, instead of an AttributeError from deep inside a layer.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor

__all__ = ["shape", "arange", "cast", "convert_to_tensor", "convert_to_numpy"]

_DTYPES = {"int32": np.int32, "int64": np.int64, "float32": np.float32, "float64": np.float64, "bool": np.bool_}


def _dtype(dtype):
    return _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype


def shape(x):
    """The shape of a tensor or array as a tuple of ints (Keras: `ops.shape(x)[-1]`)."""
    return tuple(int(s) for s in x.shape)


def arange(start, stop=None, step=1, dtype=None):
    """Keras' ops.arange: int32 when start, stop and step are ints (Keras' default), else float32.
    The tensor is on the CPU; a layer it reaches moves it to its own device."""
    if stop is None:
        start, stop = 0, start
    ints = all(isinstance(v, (int, np.integer)) for v in (start, stop, step))
    dt = _dtype(dtype) or (np.int32 if ints else np.float32)
    return Tensor(np.arange(start, stop, step, dtype=dt))


def cast(x, dtype):
    """x (a Tensor or array) in `dtype`; casting a Tensor keeps gradients flowing for float dtypes."""
    dt = np.dtype(_dtype(dtype))
    if isinstance(x, Tensor):
        return x if x.dtype == dt else x.astype(dt)
    return Tensor(np.asarray(x).astype(dt))


def convert_to_tensor(x, dtype=None):
    """An array (or a Tensor, returned as is) as a Tensor."""
    if isinstance(x, Tensor):
        return x if dtype is None else cast(x, dtype)
    return Tensor(np.asarray(x, dtype=None if dtype is None else _dtype(dtype)))


def convert_to_numpy(x):
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(f"keras.ops.{name} is not available in dptrain's Keras facade (it has: "
                         f"{', '.join(__all__)}); inside a custom layer use the engine Tensor's operators and "
                         "methods (+, *, @, reshape, transpose, sum, mean, ...) or engine.ops")
