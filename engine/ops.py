"""The differentiable op set, written once against the array module of the inputs.

Each op computes its result with `xp` (numpy or cupy, whichever owns the data) and
hands `from_op` a closure that maps the output gradient to input gradients.
Broadcasting follows NumPy; `_unbroadcast` sums gradients back to each input's shape.
"""
from __future__ import annotations

import collections

import numpy as np

from .backend import get_array_module, scatter_add
from .tensor import DEFAULT_FLOAT, Tensor, as_tensor, from_op

# ---------------------------------------------------------------- helpers


def _unbroadcast(g, shape):
    """Sum g over the axes that broadcasting added or stretched to reach g.shape."""
    if tuple(g.shape) == tuple(shape):
        return g
    nlead = g.ndim - len(shape)
    axes = tuple(range(nlead)) + tuple(
        i + nlead for i, s in enumerate(shape) if s == 1 and g.shape[i + nlead] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    if nlead:
        g = g.reshape(shape)
    return g


def _check_same_device(a: Tensor, b: Tensor, opname: str):
    da, db = a.data, b.data
    if type(da) is type(db) and type(da) is np.ndarray:
        return
    if a.device != b.device:
        raise RuntimeError(
            f"'{opname}' got tensors on different devices: {a.device} and {b.device}; "
            f"move one with .to('{a.device}')")


def _check_broadcast(a: Tensor, b: Tensor, opname: str):
    if a.shape != b.shape:
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ValueError(
                f"'{opname}': shapes {a.shape} and {b.shape} cannot be broadcast together "
                "(NumPy rules: trailing dimensions must be equal or 1)") from None


def _result_dtype_fix(out, *inputs):
    """No silent float32 -> float64 promotion (e.g. int / int, or numpy scalar quirks)."""
    if out.dtype == np.float64 and not any(x.dtype == np.float64 for x in inputs):
        return out.astype(DEFAULT_FLOAT)
    return out


def _binary_prep(a, b, opname):
    if not isinstance(a, Tensor):
        a = as_tensor(a, like=b)
    if not isinstance(b, Tensor):
        b = as_tensor(b, like=a)
    _check_same_device(a, b, opname)
    _check_broadcast(a, b, opname)
    return a, b


def _norm_axis(axis, ndim):
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        return tuple(sorted(ax % ndim for ax in axis)) if ndim else ()
    return (axis % ndim,) if ndim else ()


def _axis_kw(axis, keepdims, kwargs, opname):
    """Accept PyTorch's dim=/keepdim= as aliases of axis=/keepdims=."""
    if "dim" in kwargs:
        if axis is not None:
            raise TypeError(f"{opname}: give axis= or dim=, not both")
        axis = kwargs.pop("dim")
    if "keepdim" in kwargs:
        keepdims = kwargs.pop("keepdim")
    if kwargs:
        raise TypeError(f"{opname}: unexpected arguments {sorted(kwargs)}")
    return axis, keepdims


# ---------------------------------------------------------------- binary ops


def add(a, b):
    a, b = _binary_prep(a, b, "+")
    out = _result_dtype_fix(a.data + b.data, a.data, b.data)
    sa, sb = a.shape, b.shape
    return from_op(out, (a, b), lambda g: (_unbroadcast(g, sa), _unbroadcast(g, sb)), "add")


def sub(a, b):
    a, b = _binary_prep(a, b, "-")
    out = _result_dtype_fix(a.data - b.data, a.data, b.data)
    sa, sb = a.shape, b.shape
    return from_op(out, (a, b), lambda g: (_unbroadcast(g, sa), _unbroadcast(-g, sb)), "sub")


def mul(a, b):
    a, b = _binary_prep(a, b, "*")
    ad, bd = a.data, b.data
    out = _result_dtype_fix(ad * bd, ad, bd)

    def backward(g):
        return (_unbroadcast(g * bd, ad.shape) if a.requires_grad else None,
                _unbroadcast(g * ad, bd.shape) if b.requires_grad else None)
    return from_op(out, (a, b), backward, "mul")


def div(a, b):
    a, b = _binary_prep(a, b, "/")
    ad, bd = a.data, b.data
    if ad.dtype.kind != "f" and bd.dtype.kind != "f":
        ad, bd = ad.astype(DEFAULT_FLOAT), bd.astype(DEFAULT_FLOAT)
    out = _result_dtype_fix(ad / bd, ad, bd)

    def backward(g):
        ga = _unbroadcast(g / bd, ad.shape) if a.requires_grad else None
        gb = _unbroadcast(-g * out / bd, bd.shape) if b.requires_grad else None
        return ga, gb
    return from_op(out, (a, b), backward, "div")


def power(a, b):
    if not isinstance(b, Tensor) and not isinstance(a, Tensor):
        raise TypeError("power needs a tensor operand")
    if isinstance(a, Tensor) and not isinstance(b, Tensor) and np.isscalar(b):
        ad = a.data
        e = float(b)
        if ad.dtype.kind != "f" and not float(e).is_integer():
            ad = ad.astype(DEFAULT_FLOAT)
        xp = get_array_module(ad)
        exp = xp.asarray(e, dtype=ad.dtype) if ad.dtype.kind == "f" else int(e)
        out = ad ** exp

        def backward(g):
            if e == 2.0:
                return (g * (ad + ad),)
            return (g * (e * ad ** (exp - 1)),)
        return from_op(out, (a,), backward, "pow")
    a, b = _binary_prep(a, b, "**")
    ad, bd = a.data, b.data
    xp = get_array_module(ad)
    out = _result_dtype_fix(ad ** bd, ad, bd)

    def backward(g):
        ga = _unbroadcast(g * bd * ad ** (bd - 1), ad.shape) if a.requires_grad else None
        gb = None
        if b.requires_grad:
            safe = xp.where(ad > 0, ad, xp.ones_like(ad))
            gb = _unbroadcast(g * out * xp.log(safe), bd.shape)
        return ga, gb
    return from_op(out, (a, b), backward, "pow")


def matmul(a, b):
    a, b = _binary_prep_matmul(a, b)
    ad, bd = a.data, b.data
    out = ad @ bd
    xp = get_array_module(ad)

    def backward(g):
        ga = gb = None
        if ad.ndim == 1 and bd.ndim == 1:
            return (g * bd if a.requires_grad else None, g * ad if b.requires_grad else None)
        a2, b2, g2 = ad, bd, g
        if ad.ndim == 1:
            a2 = ad[None, :]
            g2 = g2[..., None, :]
        if bd.ndim == 1:
            b2 = bd[:, None]
            g2 = g2[..., None]
        if a.requires_grad:
            ga = g2 @ xp.swapaxes(b2, -1, -2)
            if ad.ndim == 1:
                ga = ga.reshape(ga.shape[:-2] + (ga.shape[-1],)).reshape(-1, ad.shape[0]).sum(0)
            else:
                ga = _unbroadcast(ga, ad.shape)
        if b.requires_grad:
            gb = xp.swapaxes(a2, -1, -2) @ g2
            if bd.ndim == 1:
                gb = gb.reshape(-1, bd.shape[0]).sum(0) if gb.ndim > 2 else gb[:, 0]
            else:
                gb = _unbroadcast(gb, bd.shape)
        return ga, gb
    return from_op(out, (a, b), backward, "matmul")


def _binary_prep_matmul(a, b):
    if not isinstance(a, Tensor):
        a = as_tensor(a, like=b)
    if not isinstance(b, Tensor):
        b = as_tensor(b, like=a)
    _check_same_device(a, b, "@")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"'@': both operands need at least one dimension, got shapes {a.shape} and {b.shape}")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ValueError(f"'@': shapes {a.shape} and {b.shape} are not aligned "
                         f"({ka} (last dim of the left) != {kb} (rows of the right))")
    if a.ndim > 2 and b.ndim > 2:
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"'@': batch dimensions of {a.shape} and {b.shape} cannot be broadcast") from None
    return a, b


def maximum(a, b):
    a, b = _binary_prep(a, b, "maximum")
    ad, bd = a.data, b.data
    xp = get_array_module(ad)
    out = xp.maximum(ad, bd)

    def backward(g):
        # Ties split the gradient evenly, the same choice as PyTorch.
        wa = (ad > bd) + 0.5 * (ad == bd)
        wa = wa.astype(g.dtype)
        return (_unbroadcast(g * wa, ad.shape) if a.requires_grad else None,
                _unbroadcast(g * (1 - wa), bd.shape) if b.requires_grad else None)
    return from_op(out, (a, b), backward, "maximum")


def minimum(a, b):
    a, b = _binary_prep(a, b, "minimum")
    ad, bd = a.data, b.data
    xp = get_array_module(ad)
    out = xp.minimum(ad, bd)

    def backward(g):
        wa = ((ad < bd) + 0.5 * (ad == bd)).astype(g.dtype)
        return (_unbroadcast(g * wa, ad.shape) if a.requires_grad else None,
                _unbroadcast(g * (1 - wa), bd.shape) if b.requires_grad else None)
    return from_op(out, (a, b), backward, "minimum")


def where(cond, a, b):
    c = cond.data if isinstance(cond, Tensor) else cond
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = Tensor(a)
    a, b = _binary_prep(a, b, "where")
    xp = get_array_module(a.data)
    c = xp.asarray(c).astype(bool)
    out = xp.where(c, a.data, b.data)
    sa, sb = a.shape, b.shape

    def backward(g):
        z = xp.zeros((), dtype=g.dtype)
        return (_unbroadcast(xp.where(c, g, z), sa) if a.requires_grad else None,
                _unbroadcast(xp.where(c, z, g), sb) if b.requires_grad else None)
    return from_op(out, (a, b), backward, "where")


# ---------------------------------------------------------------- unary ops


def neg(a):
    return from_op(-a.data, (a,), lambda g: (-g,), "neg")


def _float_input(a):
    d = a.data
    return d if d.dtype.kind == "f" else d.astype(DEFAULT_FLOAT)


def exp(a):
    xp = get_array_module(a.data)
    out = xp.exp(_float_input(a))
    return from_op(out, (a,), lambda g: (g * out,), "exp")


def log(a):
    xp = get_array_module(a.data)
    d = _float_input(a)
    return from_op(xp.log(d), (a,), lambda g: (g / d,), "log")


def sqrt(a):
    xp = get_array_module(a.data)
    out = xp.sqrt(_float_input(a))
    return from_op(out, (a,), lambda g: (g / (out + out),), "sqrt")


def tanh(a):
    xp = get_array_module(a.data)
    out = xp.tanh(_float_input(a))
    return from_op(out, (a,), lambda g: (g * (1 - out * out),), "tanh")


def sigmoid(a):
    xp = get_array_module(a.data)
    d = _float_input(a)
    # 0.5 * (1 + tanh(x/2)) never overflows, unlike 1 / (1 + exp(-x)).
    out = xp.tanh(d * d.dtype.type(0.5))
    out += 1
    out *= d.dtype.type(0.5)
    return from_op(out, (a,), lambda g: (g * out * (1 - out),), "sigmoid")


def relu(a):
    xp = get_array_module(a.data)
    d = a.data
    out = xp.maximum(d, 0).astype(d.dtype, copy=False)
    return from_op(out, (a,), lambda g: (g * (d > 0),), "relu")


def abs_(a):
    xp = get_array_module(a.data)
    d = a.data
    return from_op(xp.abs(d), (a,), lambda g: (g * xp.sign(d),), "abs")


def clip(a, min=None, max=None):
    xp = get_array_module(a.data)
    d = a.data
    out = xp.clip(d, min, max)

    def backward(g):
        mask = xp.ones(d.shape, dtype=bool)
        if min is not None:
            mask &= d >= min
        if max is not None:
            mask &= d <= max
        return (g * mask,)
    return from_op(out, (a,), backward, "clip")


def astype(a, dtype):
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    src = a.dtype
    out = a.data.astype(dtype)
    return from_op(out, (a,), lambda g: (g.astype(src),), "astype")


# ---------------------------------------------------------------- reductions


def _expand_back(g, shape, axis, keepdims):
    """Reshape a reduced gradient so it broadcasts against the input shape."""
    if axis is None:
        return g.reshape((1,) * len(shape)) if not keepdims else g
    if not keepdims:
        full = list(shape)
        for ax in axis:
            full[ax] = 1
        g = g.reshape(full)
    return g


def sum_(a, axis=None, keepdims=False, **kw):
    axis, keepdims = _axis_kw(axis, keepdims, kw, "sum")
    xp = get_array_module(a.data)
    ax = _norm_axis(axis, a.ndim)
    out = a.data.sum(axis=ax, keepdims=keepdims)
    out = xp.asarray(out)
    shape = a.shape

    def backward(g):
        return (xp.broadcast_to(_expand_back(g, shape, ax, keepdims), shape),)
    return from_op(out, (a,), backward, "sum")


def mean(a, axis=None, keepdims=False, **kw):
    axis, keepdims = _axis_kw(axis, keepdims, kw, "mean")
    xp = get_array_module(a.data)
    ax = _norm_axis(axis, a.ndim)
    d = _float_input(a)
    out = xp.asarray(d.mean(axis=ax, keepdims=keepdims))
    shape = a.shape
    count = a.size if ax is None else int(np.prod([shape[i] for i in ax]))

    def backward(g):
        g = _expand_back(g, shape, ax, keepdims) / g.dtype.type(max(count, 1))
        return (xp.broadcast_to(g, shape),)
    return from_op(out, (a,), backward, "mean")


def _minmax(a, axis, keepdims, kw, name):
    axis, keepdims = _axis_kw(axis, keepdims, kw, name)
    xp = get_array_module(a.data)
    ax = _norm_axis(axis, a.ndim)
    if a.size == 0:
        raise ValueError(f"{name}() of an empty tensor of shape {a.shape}")
    d = a.data
    out = xp.asarray(d.max(axis=ax, keepdims=keepdims) if name == "max"
                     else d.min(axis=ax, keepdims=keepdims))
    shape = a.shape

    def backward(g):
        o = _expand_back(out, shape, ax, keepdims)
        mask = (d == o).astype(g.dtype)
        mask /= mask.sum(axis=ax, keepdims=True)
        return (_expand_back(g, shape, ax, keepdims) * mask,)
    return from_op(out, (a,), backward, name)


class MinMax(collections.namedtuple("MinMax", ["values", "indices"])):
    """What torch.max(x, dim) / x.max(dim=...) return (torch.return_types.max)."""

    __slots__ = ()

    def __array__(self, *args, **kwargs):
        # numpy-style code that treats the result as the values (x - x.max(dim=1)) fails loudly
        # instead of broadcasting the (values, indices) pair, as torch raises a TypeError there
        raise TypeError("max/min with dim= returns (values, indices) as in torch; use .values "
                        "(or axis= for NumPy's values-only result)")


def _minmax_dispatch(a, args, kw, name):
    """NumPy style (`axis=` keyword, or no axis): the reduced values, as documented.
    PyTorch style (`dim=` keyword or a positional dim): (values, indices), as torch returns;
    a Tensor as second argument is the elementwise maximum/minimum (torch.max(a, b))."""
    if len(args) > 2:
        raise TypeError(f"{name}() takes at most 2 positional arguments after the tensor")
    if args and isinstance(args[0], Tensor):
        if len(args) > 1 or kw:
            raise TypeError(f"{name}(a, b): no further arguments")
        return (maximum if name == "max" else minimum)(a, args[0])
    torch_style = "dim" in kw or (bool(args) and args[0] is not None)
    if not torch_style:
        axis = args[0] if args else kw.pop("axis", None)
        keepdims = args[1] if len(args) > 1 else kw.pop("keepdims", False)
        return _minmax(a, axis, keepdims, kw, name)
    if "axis" in kw:
        raise TypeError(f"{name}: give axis= or dim=, not both")
    dim = kw.pop("dim") if "dim" in kw else args[0]
    keepdim = args[1] if len(args) > 1 else kw.pop("keepdim", kw.pop("keepdims", False))
    if kw:
        raise TypeError(f"{name}: unexpected arguments {sorted(kw)}")
    values = _minmax(a, dim, keepdim, {}, name)
    indices = (argmax if name == "max" else argmin)(a, axis=dim, keepdims=keepdim)
    return MinMax(values, indices)


def max_(a, *args, **kw):
    return _minmax_dispatch(a, args, kw, "max")


def min_(a, *args, **kw):
    return _minmax_dispatch(a, args, kw, "min")


def var(a, *args, ddof=None, **kw):
    """NumPy's var for `axis=` (ddof=0 unless given); PyTorch's for `dim=` or a positional dim
    (unbiased, correction=1, unless `unbiased=`/`correction=` say otherwise), as `max` does."""
    torch_style = "dim" in kw or (bool(args) and args[0] is not None)
    if len(args) > 2:
        raise TypeError("var() takes at most 2 positional arguments after the tensor")
    if "unbiased" in kw:
        ddof = 1 if kw.pop("unbiased") else 0
    if "correction" in kw:
        ddof = kw.pop("correction")
    if ddof is None:
        ddof = 1 if torch_style else 0
    axis = args[0] if args else kw.pop("axis", None)
    keepdims = args[1] if len(args) > 1 else kw.pop("keepdims", False)
    axis, keepdims = _axis_kw(axis, keepdims, kw, "var")
    m = mean(a, axis=axis, keepdims=True)
    diff = a - m
    ax = _norm_axis(axis, a.ndim)
    count = a.size if ax is None else int(np.prod([a.shape[i] for i in ax]))
    return sum_(diff * diff, axis=axis, keepdims=keepdims) / max(count - ddof, 1)


def std(a, *args, **kw):
    """sqrt(var(...)), with var's NumPy/PyTorch defaults."""
    return sqrt(var(a, *args, **kw))


# ---------------------------------------------------------------- shape ops


def reshape(a, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    src = a.shape
    try:
        out = a.data.reshape(shape)
    except ValueError:
        raise ValueError(f"cannot reshape a tensor of shape {src} ({a.size} elements) "
                         f"into shape {tuple(shape)}") from None
    return from_op(out, (a,), lambda g: (g.reshape(src),), "reshape")


def transpose(a, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    if not axes:
        axes = tuple(reversed(range(a.ndim)))
    elif len(axes) == 2 and a.ndim != 2:
        # PyTorch style transpose(dim0, dim1) swaps two axes.
        perm = list(range(a.ndim))
        i, j = axes[0] % a.ndim, axes[1] % a.ndim
        perm[i], perm[j] = perm[j], perm[i]
        axes = tuple(perm)
    if sorted(ax % a.ndim for ax in axes) != list(range(a.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation for a tensor of shape {a.shape}")
    axes = tuple(ax % a.ndim for ax in axes)
    xp = get_array_module(a.data)
    inv = tuple(np.argsort(axes))
    return from_op(xp.transpose(a.data, axes), (a,), lambda g: (xp.transpose(g, inv),), "transpose")


def flatten(a, start_dim=0, end_dim=-1):
    if a.ndim == 0:
        return reshape(a, (1,))
    s, e = start_dim % a.ndim, end_dim % a.ndim
    shape = a.shape[:s] + (int(np.prod(a.shape[s:e + 1])),) + a.shape[e + 1:]
    return reshape(a, shape)


def unsqueeze(a, axis):
    axis = axis if axis >= 0 else axis + a.ndim + 1
    return reshape(a, a.shape[:axis] + (1,) + a.shape[axis:])


def squeeze(a, axis=None):
    if axis is None:
        shape = tuple(s for s in a.shape if s != 1)
    else:
        axis = axis % a.ndim
        if a.shape[axis] != 1:
            return a
        shape = a.shape[:axis] + a.shape[axis + 1:]
    return reshape(a, shape)


def _is_advanced(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    for it in items:
        if isinstance(it, (list, Tensor)) or hasattr(it, "__array_interface__") \
                or hasattr(it, "__cuda_array_interface__"):
            return True
    return False


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def getitem(a, index):
    idx = _unwrap_index(index)
    xp = get_array_module(a.data)
    if isinstance(idx, list):
        idx = xp.asarray(idx)
    try:
        out = a.data[idx]
    except IndexError as e:
        raise IndexError(f"index {index!r} is out of range for a tensor of shape {a.shape}: {e}") from None
    advanced = _is_advanced(idx)
    shape = a.shape   # backward writes into a zero array of this shape through the same index

    def backward(g):
        gz = xp.zeros(shape, dtype=g.dtype)
        if advanced:
            scatter_add(xp, gz, idx, g)   # repeated indices accumulate
        else:
            gz[idx] = g
        return (gz,)
    return from_op(xp.asarray(out) if out.ndim == 0 else out, (a,), backward, "getitem")


def _tensor_list(tensors, opname):
    """The inputs of concat/stack as Tensors on one device (scalars/arrays take the first's dtype)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{opname} needs at least one tensor")
    first = tensors[0] if isinstance(tensors[0], Tensor) else Tensor(tensors[0])
    ts = [t if isinstance(t, Tensor) else as_tensor(t, like=first) for t in tensors]
    for t in ts[1:]:
        _check_same_device(ts[0], t, opname)
    return ts


def concat(tensors, axis=None, **kw):
    axis, _ = _axis_kw(axis, False, kw, "concat")
    axis = 0 if axis is None else axis
    ts = _tensor_list(tensors, "concat")
    ax = axis % ts[0].ndim
    for t in ts[1:]:
        if t.ndim != ts[0].ndim or any(s1 != s2 for i, (s1, s2) in enumerate(zip(t.shape, ts[0].shape)) if i != ax):
            raise ValueError(f"concat along axis {axis}: shapes {ts[0].shape} and {t.shape} differ "
                             "outside the concatenation axis")
    xp = get_array_module(ts[0].data)
    out = xp.concatenate([t.data for t in ts], axis=ax)
    bounds = np.cumsum([t.shape[ax] for t in ts])[:-1]

    def backward(g):
        return tuple(xp.split(g, bounds, axis=ax))
    return from_op(out, tuple(ts), backward, "concat")


def stack(tensors, axis=None, **kw):
    axis, _ = _axis_kw(axis, False, kw, "stack")
    axis = 0 if axis is None else axis
    ts = _tensor_list(tensors, "stack")
    for t in ts[1:]:
        if t.shape != ts[0].shape:
            raise ValueError(f"stack needs tensors of equal shape, got {ts[0].shape} and {t.shape}")
    return concat([unsqueeze(t, axis) for t in ts], axis=axis)


# ---------------------------------------------------------------- non-differentiable


def _compare(name, fn):
    def op(a, b):
        if not isinstance(a, Tensor):
            a = as_tensor(a, like=b)
        if not isinstance(b, Tensor):
            b = as_tensor(b, like=a)
        _check_same_device(a, b, name)
        _check_broadcast(a, b, name)
        return Tensor._wrap(fn(a.data, b.data))
    return op


def _arg_reduction(name):
    """argmax / argmin: integer results, no gradient."""
    def op(a, axis=None, keepdims=False, **kw):
        axis, keepdims = _axis_kw(axis, keepdims, kw, name)
        xp = get_array_module(a.data)
        out = getattr(xp, name)(a.data, axis=axis)
        if keepdims and axis is not None:
            out = xp.expand_dims(out, axis)
        return Tensor._wrap(xp.asarray(out))
    op.__name__ = name
    return op


argmax = _arg_reduction("argmax")
argmin = _arg_reduction("argmin")


# ---------------------------------------------------------------- attach to Tensor


def _install():
    T = Tensor
    T.__add__ = lambda a, b: add(a, b)
    T.__radd__ = lambda a, b: add(b, a)
    T.__sub__ = lambda a, b: sub(a, b)
    T.__rsub__ = lambda a, b: sub(b, a)
    T.__mul__ = lambda a, b: mul(a, b)
    T.__rmul__ = lambda a, b: mul(b, a)
    T.__truediv__ = lambda a, b: div(a, b)
    T.__rtruediv__ = lambda a, b: div(b, a)
    T.__pow__ = lambda a, b: power(a, b)
    T.__rpow__ = lambda a, b: power(as_tensor(b, like=a), a)
    T.__matmul__ = lambda a, b: matmul(a, b)
    T.__rmatmul__ = lambda a, b: matmul(b, a)
    T.__neg__ = neg
    T.__pos__ = lambda a: a
    T.__abs__ = abs_
    T.__getitem__ = getitem
    T.__lt__ = _compare("<", lambda x, y: x < y)
    T.__le__ = _compare("<=", lambda x, y: x <= y)
    T.__gt__ = _compare(">", lambda x, y: x > y)
    T.__ge__ = _compare(">=", lambda x, y: x >= y)
    T.__eq__ = _compare("==", lambda x, y: x == y)
    T.__ne__ = _compare("!=", lambda x, y: x != y)
    T.__hash__ = object.__hash__
    T.eq = T.__eq__
    T.ne = T.__ne__
    T.exp, T.log, T.sqrt, T.tanh, T.sigmoid, T.relu, T.abs = exp, log, sqrt, tanh, sigmoid, relu, abs_
    T.neg = neg
    T.sum, T.mean, T.max, T.min, T.var = sum_, mean, max_, min_, var
    T.std = std
    T.argmax, T.argmin = argmax, argmin
    T.reshape = reshape
    T.view = reshape
    T.transpose = transpose
    T.permute = lambda a, *axes: transpose(a, *axes) if len(axes) != 2 or a.ndim == 2 \
        else transpose(a, tuple(axes))
    T.T = property(lambda a: transpose(a))
    T.flatten = flatten
    T.unsqueeze = unsqueeze
    T.squeeze = squeeze
    T.clip = clip
    T.clamp = clip
    T.astype = astype
    T.float = lambda a: astype(a, np.float32)
    T.double = lambda a: astype(a, np.float64)
    T.long = lambda a: Tensor._wrap(a.data.astype(np.int64))
    T.pow = lambda a, b: power(a, b)
    T.matmul = lambda a, b: matmul(a, b)
    T.all = lambda a: Tensor._wrap(get_array_module(a.data).asarray(a.data.all()))
    T.any = lambda a: Tensor._wrap(get_array_module(a.data).asarray(a.data.any()))


_install()
