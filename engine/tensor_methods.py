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
