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
    """Natural log; log(0) = -inf and log(x < 0) = nan silently, as torch's (the word-language-model
    example builds its causal mask as torch.log(torch.tril(torch.ones(n, n))))."""
    xp = get_array_module(a.data)
    d = _float_input(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = xp.log(d)
    return from_op(out, (a,), lambda g: (g / d,), "log")


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


# ---------------------------------------------------------------- elementwise math (torch names)


def sin(a):
    xp = get_array_module(a.data)
    d = _float_input(a)
    return from_op(xp.sin(d), (a,), lambda g: (g * xp.cos(d),), "sin")


def cos(a):
    xp = get_array_module(a.data)
    d = _float_input(a)
    return from_op(xp.cos(d), (a,), lambda g: (-g * xp.sin(d),), "cos")


def square(a):
    """x * x as one node (keeps int dtypes, as torch.square does)."""
    d = a.data
    return from_op(d * d, (a,), lambda g: (g * (d + d),), "square")


def rsqrt(a):
    """1 / sqrt(x) as one node: normalisation layers written by hand use it."""
    xp = get_array_module(a.data)
    d = _float_input(a)
    out = xp.reciprocal(xp.sqrt(d))
    return from_op(out, (a,), lambda g: (g * out * out * out * d.dtype.type(-0.5),), "rsqrt")


def _erf_array(d, xp):
    """NumPy has no erf: the engine's own (kernels.npmath, used by GELU) on CPU, cupyx's on GPU."""
    if xp is np:
        from .kernels.npmath import erf as np_erf
        return np_erf(d)
    from cupyx.scipy.special import erf as cp_erf  # noqa: PLC0415 (GPU only)
    return cp_erf(d)


def erf(a):
    xp = get_array_module(a.data)
    d = _float_input(a)
    two_over_sqrt_pi = d.dtype.type(2.0 / np.sqrt(np.pi))
    return from_op(_erf_array(d, xp), (a,),
                   lambda g: (g * two_over_sqrt_pi * xp.exp(-d * d),), "erf")


def floor_divide(a, b):
    """`//`: floor division as NumPy and torch (>= 1.13) both round; torch has no derivative for it,
    so the result records no graph (a backward through it would fail in torch too)."""
    a, b = _binary_prep(a, b, "//")
    xp = get_array_module(a.data)
    return Tensor._wrap(_result_dtype_fix(xp.floor_divide(a.data, b.data), a.data, b.data))


def remainder(a, b):
    """`%`: Python's sign-of-the-divisor remainder (NumPy's mod, torch.remainder), with torch's
    gradient: 1 for a, -floor(a / b) for b."""
    a, b = _binary_prep(a, b, "%")
    ad, bd = a.data, b.data
    xp = get_array_module(ad)
    out = _result_dtype_fix(xp.mod(ad, bd), ad, bd)

    def backward(g):
        return (_unbroadcast(g, ad.shape) if a.requires_grad else None,
                _unbroadcast(-g * xp.floor_divide(ad, bd), bd.shape) if b.requires_grad else None)
    return from_op(out, (a, b), backward, "remainder")


# ---------------------------------------------------------------- scans and reductions (torch names)


def cumsum(a, axis=None, **kw):
    """Running sum along a dim (torch requires one; without it NumPy's flattened cumsum).
    Its gradient is the reversed running sum of the output gradient."""
    axis, _ = _axis_kw(axis, False, kw, "cumsum")
    xp = get_array_module(a.data)
    shape = a.shape
    if axis is None:
        out = xp.cumsum(a.data.reshape(-1))

        def backward_flat(g):
            return (xp.flip(xp.cumsum(xp.flip(g)), 0).reshape(shape),)
        return from_op(out, (a,), backward_flat, "cumsum")
    ax = axis % a.ndim
    out = xp.cumsum(a.data, axis=ax)
    return from_op(out, (a,), lambda g: (xp.flip(xp.cumsum(xp.flip(g, ax), axis=ax), ax),), "cumsum")


def _exclusive_cumprod(xp, m, reverse=False):
    """Product of the elements strictly before (or after) each one along the last axis."""
    if reverse:
        return xp.flip(_exclusive_cumprod(xp, xp.flip(m, -1)), -1)
    ones = xp.ones(m.shape[:-1] + (1,), dtype=m.dtype)
    return xp.concatenate([ones, xp.cumprod(m[..., :-1], axis=-1)], axis=-1)[..., :m.shape[-1]]


def prod(a, axis=None, keepdims=False, **kw):
    """Product over dims. The gradient is the product of all the *other* elements (prefix x suffix
    products), not out / x, so inputs that contain zeros get the right gradient."""
    axis, keepdims = _axis_kw(axis, keepdims, kw, "prod")
    xp = get_array_module(a.data)
    d = a.data
    ax = _norm_axis(axis, a.ndim)
    red = tuple(range(a.ndim)) if ax is None else ax
    out = xp.asarray(d.prod(axis=ax, keepdims=keepdims))
    shape = a.shape

    def backward(g):
        keep = [i for i in range(len(shape)) if i not in red]
        perm = keep + list(red)
        inv = tuple(np.argsort(perm))
        lead = [shape[i] for i in keep]
        m = xp.transpose(d, perm).reshape(lead + [int(np.prod([shape[i] for i in red]))])
        others = _exclusive_cumprod(xp, m) * _exclusive_cumprod(xp, m, reverse=True)
        gk = xp.transpose(_expand_back(g, shape, ax, keepdims), perm).reshape(lead + [1])
        gx = (gk * others).reshape([shape[i] for i in perm])
        return (xp.transpose(gx, inv).astype(g.dtype, copy=False),)
    return from_op(out, (a,), backward, "prod")


def logsumexp(a, axis=None, keepdims=False, **kw):
    """log(sum(exp(x))) shifted by the max so it neither overflows nor underflows; the gradient is
    the softmax along the reduced dims."""
    axis, keepdims = _axis_kw(axis, keepdims, kw, "logsumexp")
    xp = get_array_module(a.data)
    d = _float_input(a)
    ax = _norm_axis(axis, a.ndim)
    m = d.max(axis=ax, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))     # all -inf (or inf) rows: no shift
    with np.errstate(divide="ignore"):                    # log(0) = -inf is the answer there
        outk = xp.log(xp.exp(d - m).sum(axis=ax, keepdims=True)) + m
    out = outk if keepdims else outk.reshape([s for i, s in enumerate(a.shape)
                                              if ax is not None and i not in ax])
    shape = a.shape
    return from_op(out, (a,), lambda g: (_expand_back(g, shape, ax, keepdims) * xp.exp(d - outk),),
                   "logsumexp")


def _norm2(a, ax, keepdim):
    """sqrt(sum(x^2)) as one node whose gradient is 0 (not 0/0) where the norm is 0, as torch's."""
    xp = get_array_module(a.data)
    d = _float_input(a)
    out = xp.sqrt((d * d).sum(axis=ax, keepdims=keepdim))
    shape = a.shape

    def backward(g):
        o = _expand_back(out, shape, ax, keepdim)
        o = xp.where(o == 0, xp.ones_like(o), o)
        return (_expand_back(g, shape, ax, keepdim) * d / o,)
    return from_op(xp.asarray(out), (a,), backward, "norm")


def norm(a, p="fro", dim=None, keepdim=False, dtype=None, **kw):
    """torch's Tensor.norm: vector p-norm over `dim` (all elements when None); 'fro' and 2 are the
    same thing here (a Frobenius norm over the dims given). 'nuc' and matrix 2-norms are not here."""
    dim = kw.pop("axis", dim)
    keepdim = kw.pop("keepdims", keepdim)
    if kw:
        raise TypeError(f"norm: unexpected arguments {sorted(kw)}")
    if dtype is not None:
        a = astype(a, dtype)
    ax = _norm_axis(dim, a.ndim)
    if p in ("fro", 2, 2.0):
        return _norm2(a, ax, keepdim)
    if isinstance(p, str):
        raise ValueError(f"norm: p={p!r} is not supported (vector norms: a number, inf, or 'fro')")
    if p == 1:
        return sum_(abs_(a), axis=ax, keepdims=keepdim)
    if p in (np.inf, -np.inf):
        return _minmax(abs_(a), ax, keepdim, {}, "max" if p > 0 else "min")
    if p == 0:      # how many elements are non-zero; no gradient, as in torch
        d = _float_input(a)
        return Tensor._wrap(get_array_module(d).asarray((d != 0).sum(axis=ax, keepdims=keepdim)
                                                        .astype(d.dtype)))
    return power(sum_(power(abs_(a), p), axis=ax, keepdims=keepdim), 1.0 / p)


# ---------------------------------------------------------------- einsum and batched products


def _einsum_subscripts(eq, shapes):
    """Rewrite an einsum equation with explicit subscripts and an explicit output: '...' becomes
    letters the equation does not use, so backward can swap operand and output subscripts."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise ValueError(f"einsum: equation {eq!r} names {len(ins)} operands, got {len(shapes)}")
    ell_dims = []
    for s, shp in zip(ins, shapes):
        n = len(shp) - (len(s) - 3) if "..." in s else 0
        if ("..." not in s and len(s) != len(shp)) or n < 0:
            raise ValueError(f"einsum: subscripts {s!r} do not fit an operand of shape {tuple(shp)}")
        ell_dims.append(n)
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in eq]
    ell = "".join(free[:max(ell_dims, default=0)])
    subs = [s.replace("...", ell[len(ell) - n:]) for s, n in zip(ins, ell_dims)]
    if arrow:
        out = rhs.replace("...", ell)
    else:     # implicit output: broadcast dims, then the letters used once, in alphabetical order
        counts = collections.Counter("".join(ins).replace("...", ""))
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1))
    return subs, out


def _einsum_call(xp, subs, out, arrays):
    """xp.einsum; NumPy gets optimize=True so contractions go through BLAS (tensordot)."""
    kw = {"optimize": True} if xp is np else {}
    return xp.einsum(",".join(subs) + "->" + out, *arrays, **kw)


def _einsum_grad(xp, g, i, subs, out, arrays):
    """Gradient for operand i: einsum of the output gradient with the other operands, then
    broadcast over letters only operand i had, summed over its broadcast (size-1) dims, and
    written onto the diagonal where a letter repeats in its subscripts ('ii->i')."""
    s, shape = subs[i], arrays[i].shape
    others = [j for j in range(len(subs)) if j != i]
    avail = set(out).union(*[subs[j] for j in others])
    uniq = "".join(dict.fromkeys(s))
    keep = "".join(c for c in uniq if c in avail)
    gi = _einsum_call(xp, [out] + [subs[j] for j in others], keep, [g] + [arrays[j] for j in others])
    gi = gi.reshape([gi.shape[keep.index(c)] if c in keep else 1 for c in uniq])
    own = [shape[s.index(c)] for c in uniq]
    gi = xp.broadcast_to(_unbroadcast(gi, own), own)
    if len(uniq) == len(s):
        return gi
    full = xp.zeros(shape, dtype=gi.dtype)
    where = tuple(xp.arange(shape[p]).reshape([-1 if k == uniq.index(c) else 1 for k in range(len(uniq))])
                  for p, c in enumerate(s))
    full[where] = gi
    return full


def einsum(equation, *operands):
    """torch.einsum / np.einsum, with '...' and implicit outputs; also einsum(eq, [a, b])."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    first = next((t for t in operands if isinstance(t, Tensor)), None)
    ts = [t if isinstance(t, Tensor) else as_tensor(t, like=first) for t in operands]
    for t in ts[1:]:
        _check_same_device(ts[0], t, "einsum")
    subs, out_sub = _einsum_subscripts(equation, [t.shape for t in ts])
    arrays = [t.data for t in ts]
    xp = get_array_module(*arrays)
    out = _result_dtype_fix(xp.asarray(_einsum_call(xp, subs, out_sub, arrays)), *arrays)

    def backward(g):
        return tuple(_einsum_grad(xp, g, i, subs, out_sub, arrays).astype(arrays[i].dtype, copy=False)
                     if t.requires_grad else None for i, t in enumerate(ts))
    return from_op(out, tuple(ts), backward, "einsum")


def bmm(a, b):
    """Batched matrix product of (B, n, m) and (B, m, p); unlike matmul it does not broadcast."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"bmm needs (B, n, m) and (B, m, p) tensors, got {a.shape} and {b.shape}")
    return matmul(a, b)


# ---------------------------------------------------------------- indexing, slicing, reordering


def _dim_grid(xp, index, dim):
    """An advanced-index tuple selecting x[..., index[i, j, k], ...] at every position of index."""
    nd = index.ndim
    return tuple(index if d == dim else xp.arange(index.shape[d]).reshape(
        [-1 if k == d else 1 for k in range(nd)]) for d in range(nd))


def gather(a, dim, index, sparse_grad=False):
    """torch.gather: out[i][j] = x[index[i][j]][j] (dim 0); backward scatter-adds, so an index
    that repeats accumulates its gradients."""
    xp = get_array_module(a.data)
    idx = index.data if isinstance(index, Tensor) else xp.asarray(index)
    dim = dim % a.ndim
    if idx.ndim != a.ndim or any(idx.shape[d] > a.shape[d] for d in range(a.ndim) if d != dim):
        raise ValueError(f"gather: index of shape {tuple(idx.shape)} does not fit a tensor of shape "
                         f"{a.shape} along dim {dim} (same ndim, no larger outside dim)")
    grid = _dim_grid(xp, idx, dim)
    shape = a.shape

    def backward(g):
        return (scatter_add(xp, xp.zeros(shape, dtype=g.dtype), grid, g),)
    return from_op(a.data[grid], (a,), backward, "gather")


def index_select(a, dim, index):
    """x selected along dim by a 1-D index (repeats allowed: their gradients accumulate)."""
    idx = index.data if isinstance(index, Tensor) else get_array_module(a.data).asarray(index)
    if idx.ndim != 1:
        raise ValueError(f"index_select: index must be 1-D, got shape {tuple(idx.shape)}")
    return getitem(a, (slice(None),) * (dim % a.ndim) + (idx,))


def split(a, split_size_or_sections, dim=0):
    """torch.split: pieces of one size (the last may be smaller) or of the sizes listed, as views
    whose gradients flow back into x."""
    dim = dim % a.ndim
    n = a.shape[dim]
    if isinstance(split_size_or_sections, (int, np.integer)):
        size = int(split_size_or_sections)
        if size <= 0:
            raise ValueError(f"split: split_size must be positive, got {size}")
        sizes = [min(size, n - s) for s in range(0, n, size)] or [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} sum to {sum(sizes)}, not {n} (size of dim {dim})")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    pre = (slice(None),) * dim
    return tuple(getitem(a, pre + (slice(int(s), int(e)),)) for s, e in zip(starts[:-1], starts[1:]))


def chunk(a, chunks, dim=0):
    """torch.chunk: pieces of ceil(n / chunks) elements, so there may be fewer than `chunks`."""
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be positive, got {chunks}")
    n = a.shape[dim % a.ndim]
    return split(a, max(-(-n // chunks), 1), dim)


def unbind(a, dim=0):
    """The slices along dim, each without that dim."""
    dim = dim % a.ndim
    pre = (slice(None),) * dim
    return tuple(getitem(a, pre + (i,)) for i in range(a.shape[dim]))


def _dims_arg(dims):
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        return tuple(dims[0])
    return tuple(dims)


def flip(a, *dims):
    """torch.flip(x, dims) and x.flip(*dims)."""
    xp = get_array_module(a.data)
    ax = tuple(d % a.ndim for d in _dims_arg(dims))
    return from_op(xp.flip(a.data, axis=ax), (a,), lambda g: (xp.flip(g, axis=ax),), "flip")


def tril(a, diagonal=0):
    xp = get_array_module(a.data)
    return from_op(xp.tril(a.data, diagonal), (a,), lambda g: (xp.tril(g, diagonal),), "tril")


def triu(a, diagonal=0):
    xp = get_array_module(a.data)
    return from_op(xp.triu(a.data, diagonal), (a,), lambda g: (xp.triu(g, diagonal),), "triu")


def repeat(a, *sizes):
    """torch's Tensor.repeat, which is np.tile (NumPy's repeat is torch's repeat_interleave).
    The gradient sums the copies: g seen as (reps0, n0, reps1, n1, ...) summed over the reps."""
    sizes = tuple(int(s) for s in _dims_arg(sizes))
    if len(sizes) < a.ndim:
        raise ValueError(f"repeat: give a count for each of the {a.ndim} dims (got {sizes}); "
                         "torch.tile pads missing counts with 1")
    xp = get_array_module(a.data)
    shape = (1,) * (len(sizes) - a.ndim) + a.shape
    out = xp.tile(a.data.reshape(shape), sizes)
    src = a.shape

    def backward(g):
        pairs = [v for pair in zip(sizes, shape) for v in pair]
        return (g.reshape(pairs).sum(axis=tuple(range(0, len(pairs), 2))).reshape(src),)
    return from_op(out, (a,), backward, "repeat")


def tile(a, dims):
    """torch.tile: repeat with missing leading counts taken as 1."""
    dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
    return repeat(a, (1,) * (a.ndim - len(dims)) + dims)


# ---------------------------------------------------------------- sorting and selection


class SortResult(collections.namedtuple("SortResult", ["values", "indices"])):
    """What torch.sort / torch.topk return: values (differentiable) and int64 indices."""

    __slots__ = ()

    def __array__(self, *args, **kwargs):
        raise TypeError("sort/topk return (values, indices) as in torch; use .values")


def _sort_order(a, dim, descending):
    """Indices that sort along dim. Equal elements keep their index order (torch's stable sort)
    both ways, and NaN counts as the largest value, as in torch."""
    xp = get_array_module(a.data)
    d = a.data
    if descending:
        if d.dtype.kind == "f":
            d = xp.where(xp.isnan(d), xp.asarray(-np.inf, dtype=d.dtype), -d)
        else:
            d = -d.astype(np.int64)
    kw = {"kind": "stable"} if xp is np else {}      # cupy's sort is always stable
    return xp.argsort(d, axis=dim, **kw)


def _dim_alias(dim, kw, opname):
    """A dim given positionally, as dim= or as NumPy's axis=."""
    if "axis" in kw:
        dim = kw.pop("axis")
    if kw:
        raise TypeError(f"{opname}: unexpected arguments {sorted(kw)}")
    return dim


def sort(a, dim=-1, descending=False, stable=False, **kw):
    dim = _dim_alias(dim, kw, "sort") % a.ndim
    order = _sort_order(a, dim, descending)
    return SortResult(gather(a, dim, order), Tensor._wrap(order))


def argsort(a, dim=-1, descending=False, stable=False, **kw):
    dim = _dim_alias(dim, kw, "argsort") % a.ndim
    return Tensor._wrap(_sort_order(a, dim, descending))


def topk(a, k, dim=-1, largest=True, sorted=True, **kw):
    """The k largest (or smallest) along dim, as (values, indices); always in sorted order."""
    dim = _dim_alias(dim, kw, "topk") % a.ndim
    if not 0 <= k <= a.shape[dim]:
        raise ValueError(f"topk: k={k} is out of range for dim {dim} of size {a.shape[dim]}")
    order = _sort_order(a, dim, largest)
    order = order[(slice(None),) * dim + (slice(0, k),)]
    return SortResult(gather(a, dim, order), Tensor._wrap(order))


# ---------------------------------------------------------------- predicates and comparisons


def _predicate(name):
    """isnan / isinf / isfinite: bool tensors, no gradient."""
    def op(a):
        return Tensor._wrap(getattr(get_array_module(a.data), name)(a.data))
    op.__name__ = name
    return op


isnan = _predicate("isnan")
isinf = _predicate("isinf")
isfinite = _predicate("isfinite")


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    """torch.allclose: a Python bool (NumPy's broadcasting rules)."""
    a, b = _binary_prep(a, b, "allclose")
    xp = get_array_module(a.data)
    return bool(xp.allclose(a.data, b.data, rtol=rtol, atol=atol, equal_nan=equal_nan))


def equal(a, b):
    """torch.equal: True when shapes and all elements are equal."""
    if not isinstance(b, Tensor):
        b = as_tensor(b, like=a)
    _check_same_device(a, b, "equal")
    return a.shape == b.shape and bool((a.data == b.data).all())


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
    T.__floordiv__ = lambda a, b: floor_divide(a, b)
    T.__rfloordiv__ = lambda a, b: floor_divide(b, a)
    T.__mod__ = lambda a, b: remainder(a, b)
    T.__rmod__ = lambda a, b: remainder(b, a)
    T.floor_divide, T.remainder = floor_divide, remainder
    T.sin, T.cos, T.square, T.rsqrt, T.erf = sin, cos, square, rsqrt, erf
    T.cumsum, T.prod, T.logsumexp, T.norm = cumsum, prod, logsumexp, norm
    T.gather, T.index_select = gather, index_select
    T.split, T.chunk, T.unbind = split, chunk, unbind
    T.flip = flip
    T.tril, T.triu = tril, triu
    T.repeat, T.tile = repeat, tile
    T.sort, T.argsort, T.topk = sort, argsort, topk
    T.isnan, T.isinf, T.isfinite = isnan, isinf, isfinite
    T.allclose, T.equal = allclose, equal
    T.bmm = bmm


_install()
