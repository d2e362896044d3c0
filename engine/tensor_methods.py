"""torch.Tensor's everyday methods that the op set does not define under these names.

Why a module of its own: ported PyTorch code calls `x.masked_fill(...)`, `ema.mul_(d).add_(p,
alpha=1 - d)`, `toks[i, :n] = ...` and `x.to(torch.float64)` without a second thought; each
missing one is an AttributeError in the middle of someone's training loop.  The differentiable
ones are compositions of ops (their gradients come for free); the in-place ones and item
assignment write `.data` and are refused where they would corrupt a graph being recorded
(a tensor that requires grad while grad mode is on), which is where torch refuses them too.
"""
from __future__ import annotations

import numpy as np

from . import factories, ops
from .backend import get_array_module
from .tensor import Tensor, is_grad_enabled

__all__ = ["install"]


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _in_place(name, compute):
    def method(a, *args, **kw):
        if a.requires_grad and is_grad_enabled():
            raise RuntimeError(f"{name}: in-place update of a tensor that requires grad; wrap it in "
                               f"`with engine.no_grad():` (parameter updates) or use the out-of-place op")
        a.data[...] = _raw(compute(a.data, *args, **kw))
        return a
    method.__name__ = name
    return method


def _setitem(a, index, value):
    """torch's `x[i, :n] = v` (collate functions, masks built by hand)."""
    if a.requires_grad and is_grad_enabled():
        raise RuntimeError("item assignment on a tensor that requires grad is not supported; use "
                           "engine.where / masked_fill, or assign under engine.no_grad()")
    a.data[ops._unwrap_index(index)] = _raw(value)


def _masked_fill(a, mask, value):
    return ops.where(mask, Tensor(np.asarray(_raw(value), dtype=a.dtype)), a)


def _expand(a, *shape):
    """Broadcast to `shape` (-1 keeps a size); adding zeros makes the gradient sum back."""
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    lead = len(shape) - a.ndim
    full = tuple(a.shape[i - lead] if d == -1 else d for i, d in enumerate(shape))
    return a + Tensor(get_array_module(a.data).zeros(full, dtype=a.dtype))


def _softmax(a, dim=None, **kw):
    from .nn import functional as F      # engine.nn is built on this package: imported when called
    return F.softmax(a, dim=dim, **kw)


def _log_softmax(a, dim=None, **kw):
    from .nn import functional as F
    return F.log_softmax(a, dim=dim, **kw)


def _new_factory(make):
    """x.new_zeros(...) & co.: a new tensor with x's dtype and device unless told otherwise."""
    def method(a, *args, dtype=None, device=None, requires_grad=False, **kw):
        return make(*args, dtype=dtype or a.dtype, device=device or a.device,
                    requires_grad=requires_grad, **kw)
    return method


def _new_tensor(a, data, dtype=None, device=None, requires_grad=False):
    """A copy of data (torch never aliases here) with x's dtype and device by default."""
    data = _raw(data)
    data = data.copy() if hasattr(data, "shape") else data
    return Tensor(data, dtype=dtype or a.dtype, device=device or a.device, requires_grad=requires_grad)


# torch's legacy type names, what `x.type()` returns and `x.type('torch.LongTensor')` accepts
_TYPE_NAMES = {"float32": "FloatTensor", "float64": "DoubleTensor", "float16": "HalfTensor",
               "int64": "LongTensor", "int32": "IntTensor", "int16": "ShortTensor", "int8": "CharTensor",
               "uint8": "ByteTensor", "bool": "BoolTensor"}
_TYPE_DTYPES = {v: k for k, v in _TYPE_NAMES.items()}


def _type(a, dtype=None, non_blocking=False, **kw):
    """torch's x.type(): with no argument the type name ('torch.FloatTensor', or
    'torch.cuda.FloatTensor' on a GPU); with a dtype or a type name a cast, differentiable to
    floating types as x.to(dtype) is (data.py of the word-language-model example tokenises with
    `torch.tensor(ids).type(torch.int64)`)."""
    if dtype is None:
        prefix = "torch.cuda." if str(a.device).startswith("cuda") else "torch."
        return prefix + _TYPE_NAMES.get(str(a.dtype), str(a.dtype))
    if isinstance(dtype, str) and dtype.rsplit(".", 1)[-1] in _TYPE_DTYPES:
        dtype = _TYPE_DTYPES[dtype.rsplit(".", 1)[-1]]
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return ops.astype(a, dtype)
    return Tensor._wrap(a.data.astype(dtype))


def _narrow(a, dim, start, length):
    """x.narrow(dim, start, length): the view x[..., start:start + length, ...] along dim
    (negative start counts from the end, as torch's)."""
    dim = int(dim) % a.ndim
    size = a.shape[dim]
    start = int(start) + size if int(start) < 0 else int(start)
    if not (0 <= start <= size and 0 <= length and start + length <= size):
        raise IndexError(f"narrow(): start ({start}) + length ({length}) exceeds dimension size ({size}) "
                         f"of dim {dim} in a tensor of shape {a.shape}")
    return ops.getitem(a, (slice(None),) * dim + (slice(start, start + int(length)),))


def _t(a):
    """torch's x.t(): transpose of a tensor of at most 2 dims (0-d and 1-d come back as they are)."""
    if a.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {a.ndim}D; "
                           "use x.transpose(dim0, dim1) or x.permute(...)")
    return ops.transpose(a) if a.ndim == 2 else a


def _random_fill(name, draw):
    """uniform_ / normal_: refill in place from engine.manual_seed's generator (or generator=),
    as the init code of ported models does under no_grad."""
    def compute(x, *args, generator=None, **kw):
        from . import random as _random
        values = draw(_random.resolve(generator=generator), x.shape, *args, **kw)
        xp = get_array_module(x)
        return xp.asarray(values.astype(x.dtype, copy=False))
    return _in_place(name, compute)


def _index(a):
    """operator.index for a 0-d integer tensor: `classes[labels[j]]` (the classifier tutorial) and
    `range(n)[t]`.  Only 0-d, so a (1,)-shaped index tensor keeps its shape in numpy indexing."""
    if a.ndim != 0 or a.dtype.kind not in "iu":
        raise TypeError(f"only 0-d integer tensors can be converted to an index, got shape {a.shape} "
                        f"dtype {a.dtype}; use int(t) / t.item() or index with the tensor itself")
    return int(a.data.item())


def _wrap_bits(op):
    return lambda a, b: Tensor._wrap(op(a.data, _raw(b)))


def install() -> None:
    T = Tensor
    T.masked_fill = _masked_fill
    T.view_as = T.reshape_as = lambda a, other: ops.reshape(a, other.shape)
    T.expand = _expand
    T.expand_as = lambda a, other: _expand(a, other.shape)
    T.contiguous = lambda a, *args, **kw: a          # numpy views need no compaction for our ops
    T.type_as = lambda a, other: ops.astype(a, other.dtype)
    T.int = lambda a: Tensor._wrap(a.data.astype(np.int32))
    T.bool = lambda a: Tensor._wrap(a.data.astype(np.bool_))
    T.softmax, T.log_softmax = _softmax, _log_softmax
    T.__and__ = T.__rand__ = _wrap_bits(lambda x, y: x & y)
    T.__or__ = T.__ror__ = _wrap_bits(lambda x, y: x | y)
    T.__xor__ = T.__rxor__ = _wrap_bits(lambda x, y: x ^ y)
    T.__invert__ = lambda a: Tensor._wrap(~a.data)
    T.add_ = _in_place("add_", lambda x, b, alpha=1: x + _raw(b) * alpha)
    T.sub_ = _in_place("sub_", lambda x, b, alpha=1: x - _raw(b) * alpha)
    T.mul_ = _in_place("mul_", lambda x, b: x * _raw(b))
    T.div_ = _in_place("div_", lambda x, b: x / _raw(b))
    T.zero_ = _in_place("zero_", lambda x: 0)
    T.fill_ = _in_place("fill_", lambda x, v: _raw(v))
    T.copy_ = _in_place("copy_", lambda x, src, non_blocking=False: _raw(src))
    T.clamp_ = _in_place("clamp_", lambda x, min=None, max=None: get_array_module(x).clip(x, min, max))
    T.masked_fill_ = _in_place("masked_fill_",
                               lambda x, mask, v: get_array_module(x).where(_raw(mask), _raw(v), x))
    T.__setitem__ = _setitem
    T.new_zeros = _new_factory(factories.zeros)
    T.new_ones = _new_factory(factories.ones)
    T.new_empty = _new_factory(factories.empty)
    T.new_full = _new_factory(factories.full)
    T.new_tensor = _new_tensor
    T.is_floating_point = lambda a: a.dtype.kind == "f"
    T.type = _type
    T.__index__ = _index
    T.narrow = _narrow
    T.t = _t
    T.uniform_ = _random_fill("uniform_", lambda rng, shape, a=0.0, b=1.0, **_: rng.uniform(a, b, shape))
    T.normal_ = _random_fill("normal_", lambda rng, shape, mean=0.0, std=1.0, **_: rng.normal(mean, std, shape))
