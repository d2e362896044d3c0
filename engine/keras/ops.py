"""keras.ops: the backend-neutral ops that Keras tutorials use inside custom layers, losses and metrics.

Why these: a custom layer's call() runs on engine Tensors, whose operators (+, *, @, indexing,
reshape, transpose, sum, mean ...) already cover most Keras code; what Keras 3 code spells as
`ops.<name>` (the position indices of the Transformer tutorials, `ops.mean(ops.square(y_true -
y_pred), axis=-1)` in a custom loss, `ops.one_hot(y, 10)`, `ops.expand_dims(img, 0)`,
`ops.sigmoid(logits)`, `ops.argmax`, `ops.cast` in a custom metric) maps onto engine ops with Keras'
(NumPy's) argument names and defaults.  Each takes Tensors, arrays or numbers, returns a Tensor, and
keeps gradients flowing where Keras' does (integer and boolean results carry none).  Any other name
raises an error that says so, instead of an AttributeError from deep inside a layer.
"""
from __future__ import annotations

import numpy as np

from .. import ops as _ops
from ..tensor import Tensor

__all__ = ["shape", "arange", "cast", "convert_to_tensor", "convert_to_numpy",
           "expand_dims", "squeeze", "reshape", "transpose", "concatenate", "stack", "flip",
           "add", "subtract", "multiply", "divide", "true_divide", "power", "negative", "maximum", "minimum",
           "abs", "absolute", "square", "sqrt", "exp", "log", "tanh", "sigmoid", "relu", "softmax",
           "log_softmax", "sum", "mean", "max", "min", "std", "var", "argmax", "argmin", "matmul", "clip",
           "where", "equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "one_hot",
           "zeros", "ones", "zeros_like", "ones_like", "full", "full_like"]

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


def _t(x):
    """A Tensor for x (numbers and arrays become float32 unless integer/boolean, as Keras converts them)."""
    if isinstance(x, Tensor):
        return x
    arr = np.asarray(x)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return Tensor(arr)


def _weak(number, dtype):
    """A Python number next to a typed operand takes that operand's dtype (Keras' weak types): 2 with
    a float32 tensor stays float32, 2.5 with an integer tensor makes float32."""
    dtype = np.dtype(dtype)
    if isinstance(number, float) and dtype.kind in "iub":
        dtype = np.dtype(np.float32)
    return np.asarray(number, dtype=dtype)


def _pair(a, b):
    """Two operands as Tensors on one device (a number or array follows the Tensor's device; a
    Python number takes the other operand's dtype, as Keras' weak types do)."""
    a_num, b_num = isinstance(a, (bool, int, float)), isinstance(b, (bool, int, float))
    if a_num and not b_num:
        b = _t(b)
        a = Tensor(_weak(a, b.dtype))
    elif b_num and not a_num:
        a = _t(a)
        b = Tensor(_weak(b, a.dtype))
    a, b = _t(a), _t(b)
    if a.device != b.device:
        if a.device != "cpu":
            b = b.to(a.device)
        else:
            a = a.to(b.device)
    return a, b


def _axes(axis):
    return tuple(axis) if isinstance(axis, (list, tuple)) else axis


# ---------------------------------------------------------------- shapes
def expand_dims(x, axis):
    x = _t(x)
    for a in sorted(a % (x.ndim + len(_as_tuple(axis))) for a in _as_tuple(axis)):
        x = _ops.unsqueeze(x, a)
    return x


def _as_tuple(axis):
    return tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)


def squeeze(x, axis=None):
    x = _t(x)
    if axis is None:
        return _ops.squeeze(x)
    for a in sorted((a % x.ndim for a in _as_tuple(axis)), reverse=True):
        if x.shape[a] != 1:
            raise ValueError(f"keras.ops.squeeze: axis {a} of shape {tuple(x.shape)} is not 1")
        x = _ops.squeeze(x, a)
    return x


def reshape(x, newshape):
    return _ops.reshape(_t(x), tuple(newshape) if isinstance(newshape, (list, tuple)) else (newshape,))


def transpose(x, axes=None):
    x = _t(x)
    return _ops.transpose(x, tuple(axes) if axes is not None else tuple(reversed(range(x.ndim))))


def concatenate(xs, axis=0):
    return _ops.concat([_t(v) for v in xs], axis=axis)


def stack(xs, axis=0):
    return _ops.stack([_t(v) for v in xs], axis=axis)


def flip(x, axis=None):
    x = _t(x)
    return _ops.flip(x, *(range(x.ndim) if axis is None else _as_tuple(axis)))


# ---------------------------------------------------------------- elementwise
def add(x1, x2):
    a, b = _pair(x1, x2)
    return a + b


def subtract(x1, x2):
    a, b = _pair(x1, x2)
    return a - b


def multiply(x1, x2):
    a, b = _pair(x1, x2)
    return a * b


def divide(x1, x2):
    a, b = _pair(x1, x2)
    return a / b


true_divide = divide


def power(x1, x2):
    a, b = _pair(x1, x2)
    return _ops.power(a, b)


def negative(x):
    return -_t(x)


def maximum(x1, x2):
    return _ops.maximum(*_pair(x1, x2))


def minimum(x1, x2):
    return _ops.minimum(*_pair(x1, x2))


def abs(x):     # noqa: A001 - Keras' name
    return _ops.abs_(_t(x))


absolute = abs


def square(x):
    x = _t(x)
    return x * x


def sqrt(x):
    return _ops.sqrt(_t(x))


def exp(x):
    return _ops.exp(_t(x))


def log(x):
    return _ops.log(_t(x))


def tanh(x):
    return _ops.tanh(_t(x))


def sigmoid(x):
    return _ops.sigmoid(_t(x))


def relu(x):
    return _ops.relu(_t(x))


def softmax(x, axis=-1):
    from ..nn import functional as F
    return F.softmax(_t(x), axis=axis)


def log_softmax(x, axis=-1):
    from ..nn import functional as F
    return F.log_softmax(_t(x), axis=axis)


def clip(x, x_min, x_max):
    return _ops.clip(_t(x), x_min, x_max)


def where(condition, x1=None, x2=None):
    if x1 is None and x2 is None:
        raise ValueError("keras.ops.where(condition) without x1 and x2 (nonzero indices) is not available; "
                         "use numpy.nonzero on keras.ops.convert_to_numpy(condition)")
    a, b = _pair(x1, x2)
    return _ops.where(_t(condition), a, b)


def _compare(fn):
    def op(x1, x2):
        a, b = _pair(x1, x2)
        return fn(a, b)
    return op


equal = _compare(lambda a, b: a == b)
not_equal = _compare(lambda a, b: a != b)
greater = _compare(lambda a, b: a > b)
greater_equal = _compare(lambda a, b: a >= b)
less = _compare(lambda a, b: a < b)
less_equal = _compare(lambda a, b: a <= b)


# ---------------------------------------------------------------- reductions (NumPy's axis / keepdims)
def sum(x, axis=None, keepdims=False):      # noqa: A001 - Keras' name
    return _ops.sum_(_t(x), axis=_axes(axis), keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return _ops.mean(_t(x), axis=_axes(axis), keepdims=keepdims)


def max(x, axis=None, keepdims=False, initial=None):      # noqa: A001 - Keras' name
    if initial is not None:
        return maximum(_ops.max_(_t(x), axis=_axes(axis), keepdims=keepdims), initial)
    return _ops.max_(_t(x), axis=_axes(axis), keepdims=keepdims)


def min(x, axis=None, keepdims=False, initial=None):      # noqa: A001 - Keras' name
    if initial is not None:
        return minimum(_ops.min_(_t(x), axis=_axes(axis), keepdims=keepdims), initial)
    return _ops.min_(_t(x), axis=_axes(axis), keepdims=keepdims)


def var(x, axis=None, keepdims=False):
    """Population variance (NumPy's ddof=0, as Keras)."""
    return _ops.var(_t(x), axis=_axes(axis), keepdims=keepdims, ddof=0)


def std(x, axis=None, keepdims=False):
    return _ops.sqrt(var(x, axis, keepdims))


def argmax(x, axis=None, keepdims=False):
    """int32 indices, as Keras (the flattened index when axis is None)."""
    return cast(_ops.argmax(_t(x), axis=axis, keepdims=keepdims), "int32")


def argmin(x, axis=None, keepdims=False):
    return cast(_ops.argmin(_t(x), axis=axis, keepdims=keepdims), "int32")


def matmul(x1, x2):
    a, b = _pair(x1, x2)
    return a @ b


# ---------------------------------------------------------------- creation
def one_hot(x, num_classes, axis=-1, dtype=None, sparse=False):
    """Integer labels -> one-hot float32 (Keras' default dtype) with the class axis at `axis`; labels
    outside [0, num_classes) give all-zero rows, as in Keras."""
    if sparse:
        raise ValueError("keras.ops.one_hot: sparse=True is not supported (outputs are dense)")
    arr = convert_to_numpy(x).astype(np.int64)
    classes = np.arange(int(num_classes))
    out = (arr[..., None] == classes).astype(_dtype(dtype) or np.float32)
    if axis != -1:
        out = np.moveaxis(out, -1, axis)
    return Tensor(out)


def zeros(shape, dtype=None):
    return Tensor(np.zeros(tuple(_as_tuple(shape)), dtype=_dtype(dtype) or np.float32))


def ones(shape, dtype=None):
    return Tensor(np.ones(tuple(_as_tuple(shape)), dtype=_dtype(dtype) or np.float32))


def full(shape, fill_value, dtype=None):
    return Tensor(np.full(tuple(_as_tuple(shape)), fill_value, dtype=_dtype(dtype) or np.float32))


def zeros_like(x, dtype=None):
    return zeros(shape(x), dtype or convert_to_numpy(x).dtype)


def ones_like(x, dtype=None):
    return ones(shape(x), dtype or convert_to_numpy(x).dtype)


def full_like(x, fill_value, dtype=None):
    return full(shape(x), fill_value, dtype or convert_to_numpy(x).dtype)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(f"keras.ops.{name} is not available in dptrain's Keras facade (it has: "
                         f"{', '.join(__all__)}); inside a custom layer use the engine Tensor's operators and "
                         "methods (+, *, @, reshape, transpose, sum, mean, ...) or engine.ops")
