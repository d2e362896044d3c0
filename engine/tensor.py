"""Tensor and the reverse-mode autodiff contract.

A Tensor wraps one array (numpy or cupy) and, when it was produced by an op on
tensors that require gradients, remembers its parents and a closure that maps the
gradient of the output to the gradients of the parents.  `backward()` walks that
graph without recursion, in dependency order: a node runs only after every node
that consumed it has handed over its gradient.  Leaves are finalised (hooks,
accumulation into `.grad`) the moment their last consumer is done, which is what
lets DistributedDataParallel start all-reducing the last layer's gradients while
the rest of backward is still running.

Ops live in `engine.ops`; they all build their results through `from_op`.
"""
from __future__ import annotations

import threading

import numpy as np

from . import backend
from .backend import get_array_module

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


class _GradMode:
    """Context manager / decorator that sets gradient recording for this thread."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.prev = is_grad_enabled()
        _state.grad_enabled = self.enabled
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = self.prev
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with _GradMode(self.enabled):
                return fn(*args, **kwargs)
        return wrapper


def no_grad(fn=None):
    """Ops inside record no graph (evaluation, optimizer updates).

    `with no_grad():`, `@no_grad()` or, as in PyTorch 2, `@no_grad` without parentheses."""
    mode = _GradMode(False)
    return mode(fn) if callable(fn) else mode


def enable_grad():
    return _GradMode(True)


class set_grad_enabled(_GradMode):
    """torch.set_grad_enabled(flag): takes effect when called, so it works as a plain call
    (`engine.set_grad_enabled(False)`) and, restoring the previous mode on exit, as a context
    manager (`with engine.set_grad_enabled(is_train):`)."""

    def __init__(self, enabled: bool):
        super().__init__(bool(enabled))
        self.prev = is_grad_enabled()
        _state.grad_enabled = self.enabled

    def __enter__(self):
        return self

    def __call__(self, fn):
        # used as a decorator: the mode applies inside fn only (as torch's does)
        _state.grad_enabled = self.prev
        return super().__call__(fn)


def inference_mode(mode=True):
    """torch.inference_mode: here the same as no_grad() (mode=False: enable_grad()); also a
    decorator with or without parentheses."""
    if callable(mode):
        return _GradMode(False)(mode)
    return _GradMode(not mode)


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor)


DEFAULT_FLOAT = np.float32
_FLOAT_KINDS = "f"


def _to_array(data, dtype=None):
    """Turn user data into an array; Python floats default to float32, not float64."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray) or backend.is_cupy_array(data):
        arr = data
    else:
        arr = np.asarray(data)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(DEFAULT_FLOAT)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if arr.dtype != dtype:
            arr = arr.astype(dtype)
    return arr


class _Size(int):
    """An int (NumPy's element count) that PyTorch code can also call: x.size() / x.size(0)."""

    def __new__(cls, n, shape):
        obj = super().__new__(cls, n)
        obj._shape = shape
        return obj

    def __call__(self, dim=None):
        return self._shape if dim is None else self._shape[dim]


class RemovableHandle:
    def __init__(self, hooks: list, fn):
        self._hooks, self._fn = hooks, fn

    def remove(self):
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)


def _freed_backward(g):
    raise RuntimeError(
        "Trying to backward through the graph a second time, but its buffers were freed "
        "by the first backward. Pass retain_graph=True to the first backward() call.")


class Tensor:
    """An array plus the bookkeeping reverse-mode autodiff needs."""

    __array_ufunc__ = None          # make `ndarray + Tensor` call Tensor.__radd__
    __array_priority__ = 1000

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        arr = _to_array(data, dtype)
        if device is not None:
            arr = backend.to_device(arr, backend.parse_device(device))
        if requires_grad and arr.dtype.kind not in "fc":
            raise TypeError(
                f"only floating point tensors can require gradients, got dtype {arr.dtype}; "
                "create it with dtype='float32' (or float64)")
        self._set_fields(arr, bool(requires_grad))

    def _set_fields(self, data, requires_grad):
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._parents = ()
        self._backward = None
        self._op = None
        self._hooks = None
        self._post_hooks = None
        self._retain_grad = False

    # ------------------------------------------------------------ properties
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        """Element count (NumPy's `.size`); also callable like PyTorch's `size()` / `size(dim)`."""
        return _Size(self.data.size, tuple(self.data.shape))

    def numel(self):
        return int(self.data.size)

    def dim(self):
        return self.data.ndim

    @property
    def device(self) -> "backend.Device":
        """The device name, "cpu" or "cuda:N": a str that also has torch.device's .type/.index."""
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._backward is None

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extra = ""
        if self.dtype != DEFAULT_FLOAT and self.dtype.kind == "f":
            extra += f", dtype={self.dtype}"
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        if self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    __hash__ = object.__hash__

    # ------------------------------------------------------------ conversions
    def numpy(self):
        """The data as a numpy array (shared with the tensor on CPU, copied from GPU)."""
        d = self.data
        if backend.is_cupy_array(d):
            return d.get()
        return d if type(d) is np.ndarray else np.asarray(d)   # a Parameter's ParamArray: a plain view

    def tolist(self):
        return self.numpy().tolist()

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.item()

    def __format__(self, spec):
        # torch: f"{loss:.4f}" formats a one-element tensor like its Python number
        if spec and self.data.size == 1:
            return format(self.item(), spec)
        return format(str(self), spec)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(
                f"the truth value of a tensor of shape {self.shape} is ambiguous; use .any() or .all()")
        return bool(self.data.item())

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a.astype(dtype) if dtype is not None else a

    def detach(self) -> "Tensor":
        return Tensor._wrap(self.data)

    def clone(self) -> "Tensor":
        return from_op(self.data.copy(), (self,), lambda g: (g,), "clone")

    def to(self, device=None, dtype=None, **kw) -> "Tensor":
        """Move to a device (differentiable: the gradient flows back to the source device).

        Like torch, `x.to(dtype)` (a dtype as the first argument) and `x.to(other_tensor)` work,
        and `non_blocking=`/`copy=` are accepted (host copies are always synchronous)."""
        kw.pop("non_blocking", None)
        kw.pop("copy", None)
        if kw:
            raise TypeError(f"to(): unexpected arguments {sorted(kw)}")
        if isinstance(device, Tensor):
            device, dtype = device.device, device.dtype if dtype is None else dtype
        elif device is not None and not isinstance(device, int) and _is_dtype(device):
            device, dtype = None, device
        out = self
        if dtype is not None:
            out = out.astype(dtype)
        if device is None:
            return out
        src, dst = out.device, backend.parse_device(device)
        if src == dst:
            return out
        moved = backend.to_device(out.data, dst)
        return from_op(moved, (out,), lambda g: (backend.to_device(g, src),), "to")

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index=0):
        return self.to(f"cuda:{index}")

    # ------------------------------------------------------------ autodiff
    @classmethod
    def _wrap(cls, data, requires_grad=False):
        t = cls.__new__(cls)
        if isinstance(data, np.generic):     # numpy returns scalars for 0-d results
            data = np.asarray(data)
        t._set_fields(data, requires_grad)
        return t

    def requires_grad_(self, flag=True):
        if flag and self.data.dtype.kind not in "fc":
            raise TypeError(f"only floating point tensors can require gradients, got dtype {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self):
        """Keep `.grad` on a non-leaf tensor after backward."""
        self._retain_grad = True

    def zero_grad(self):
        self.grad = None

    def register_hook(self, fn) -> RemovableHandle:
        """fn(grad) runs once per backward with this leaf's gradient from that backward,
        before it is accumulated into `.grad`; it may return a replacement gradient."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(fn)
        return RemovableHandle(self._hooks, fn)

    def register_post_accumulate_grad_hook(self, fn) -> RemovableHandle:
        """fn(tensor) runs right after this leaf's `.grad` has been updated by a backward."""
        if not self.is_leaf:
            raise RuntimeError("post-accumulate-grad hooks are only for leaf tensors")
        if self._post_hooks is None:
            self._post_hooks = []
        self._post_hooks.append(fn)
        return RemovableHandle(self._post_hooks, fn)

    def _finalize_leaf(self, g, handed=None):
        """Run hooks and accumulate g into .grad: this leaf's gradient for this backward is complete.

        `handed` holds the ids of arrays already given to other leaves in this backward: g is
        kept without a copy only when nothing else can see it (not a view, not shared with
        another leaf, not the caller's gradient, not replaced by a hook)."""
        owned = handed is not None
        if self._hooks:
            gt = Tensor._wrap(g)
            for hook in list(self._hooks):
                r = hook(gt)
                if r is not None:
                    gt = r if isinstance(r, Tensor) else Tensor._wrap(r)
                    owned = False
            g = gt.data
        if self.grad is None:
            # Own the buffer: g may alias an upstream array (e.g. `+` passes g to both inputs).
            if (not owned or id(g) in handed or getattr(g, "base", None) is not None
                    or not getattr(g.flags, "writeable", True)):   # cupy arrays have no such flag
                g = g.copy()
            else:
                handed.add(id(g))
            self.grad = Tensor._wrap(g)
        else:
            self.grad = Tensor._wrap(self.grad.data + g)
        if self._post_hooks:
            for hook in list(self._post_hooks):
                hook(self)

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`."""
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the computation "
                "had requires_grad=True (or it ran inside engine.no_grad())")
        xp = get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() on a non-scalar tensor of shape {self.shape} needs an explicit "
                    "gradient: pass grad= of the same shape, or reduce first with .sum() or .mean()")
            g0 = xp.ones_like(self.data)
        else:
            g0 = _to_array(grad, self.dtype)
            if tuple(g0.shape) != self.shape:
                raise ValueError(f"backward(grad=...) got a gradient of shape {tuple(g0.shape)} "
                                 f"for a tensor of shape {self.shape}")
        run_backward(self, g0, retain_graph)

    # Ops are attached to this class by engine.ops.


def run_backward(root: Tensor, g0, retain_graph: bool):
    # Count, for every node reachable from root, how many edges consume it.
    deps = {}
    stack = [root]
    seen = {id(root)}
    while stack:
        node = stack.pop()
        for p in node._parents:
            if not p.requires_grad:
                continue
            pid = id(p)
            deps[pid] = deps.get(pid, 0) + 1
            if pid not in seen:
                seen.add(pid)
                stack.append(p)

    grads = {id(root): g0}
    handed = {id(g0)}          # the caller's (or our ones_like) root gradient is never kept as-is
    if root.is_leaf:
        root._finalize_leaf(grads.pop(id(root)))
        return
    ready = [root]
    while ready:
        node = ready.pop()
        g = grads.pop(id(node), None)
        fn = node._backward
        parents = node._parents
        if not retain_graph:
            node._backward = _freed_backward
            node._parents = ()
        if node._retain_grad and g is not None:
            node.grad = Tensor._wrap(g if node.grad is None else node.grad.data + g)
        if g is not None:
            if isinstance(g, np.generic):
                g = np.asarray(g)
            pgrads = fn(g)
            if len(pgrads) != len(parents):
                raise RuntimeError(f"internal error: backward of '{node._op}' returned "
                                   f"{len(pgrads)} gradients for {len(parents)} inputs")
        else:
            pgrads = (None,) * len(parents)
        del g
        for p, pg in zip(parents, pgrads):
            if not p.requires_grad:
                continue
            pid = id(p)
            if pg is not None:
                if isinstance(pg, np.generic):
                    pg = np.asarray(pg)
                if tuple(pg.shape) != p.shape:
                    raise RuntimeError(
                        f"internal error: backward of '{node._op}' produced a gradient of shape "
                        f"{tuple(pg.shape)} for an input of shape {p.shape}")
                prev = grads.get(pid)
                grads[pid] = pg if prev is None else prev + pg
            deps[pid] -= 1
            if deps[pid] == 0:
                if p.is_leaf:
                    pg_total = grads.pop(pid, None)
                    if pg_total is not None:
                        p._finalize_leaf(pg_total, handed)
                elif p._backward is _freed_backward and pid in grads:
                    _freed_backward(None)
                else:
                    ready.append(p)


def from_op(data, parents, backward, name=None) -> Tensor:
    """Wrap an op's result; record the graph edge only when a gradient can flow.

    backward(g) -> one gradient array (exact parent shape) or None per parent.
    """
    if is_grad_enabled():
        for p in parents:
            if p.requires_grad:
                t = Tensor._wrap(data, True)
                t._parents = tuple(parents)
                t._backward = backward
                t._op = name
                return t
    return Tensor._wrap(data)


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Wrap a non-Tensor operand; scalars take the dtype of `like` so float32 stays float32."""
    if isinstance(x, Tensor):
        return x
    if like is not None:
        xp = get_array_module(like.data)
        if isinstance(x, (bool, int, float)) or (isinstance(x, np.generic) and x.ndim == 0):
            dt = like.dtype
            if dt.kind not in "fc" and (isinstance(x, float) or np.asarray(x).dtype.kind == "f"):
                dt = DEFAULT_FLOAT
            return Tensor._wrap(xp.asarray(x, dtype=dt))
        arr = _to_array(x)
        if arr.dtype.kind == "f" and like.dtype.kind == "f" and arr.dtype != like.dtype:
            arr = arr.astype(like.dtype)
        if get_array_module(arr) is not xp:
            arr = backend.to_device(arr, like.device)
        return Tensor._wrap(arr)
    return Tensor(x)


def tensor(data, requires_grad=False, dtype=None, device="cpu") -> Tensor:
    """Create a leaf tensor; float data defaults to float32."""
    if isinstance(data, Tensor):
        data = data.data.copy()
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def _is_dtype(x) -> bool:
    """True for a dtype spec (np.float32, "float64", np.dtype(...)) rather than a device spec."""
    if isinstance(x, str) and (x.split(":")[0].lower() in ("cpu", "cuda", "gpu")):
        return False
    try:
        np.dtype(x)
        return True
    except TypeError:
        return False
