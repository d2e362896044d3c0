"""Optimizer base class: param groups, per-parameter state, state_dict, scratch buffers.

Subclasses implement `_update(p, g, state, group, scratch)` for one parameter
(arrays, updated in place) and may implement `_fused_group(...)` for a
multi-tensor GPU kernel (see engine/optim/_fused.py).  Everything follows
torch.optim's conventions so PyTorch training code ports unchanged:
`param_groups` is a list of dicts with "params" plus hyper-parameters (change
group["lr"] to change the learning rate), `state[p]` is a dict per parameter,
and `state_dict()` refers to parameters by their position across all groups.

Hot path: the update runs on raw arrays of the parameter's own array module
(numpy or cupy) with in-place ops and `out=`; the only temporaries are one or
two scratch buffers per optimizer, sized for the largest parameter and reused
by every parameter and step (no allocation per step). Python float
hyper-parameters keep float32 parameters float32.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module

__all__ = ["Optimizer", "required"]


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


class _ParamState:
    """Mapping Parameter -> state dict, keyed by identity (Tensor __eq__ is elementwise)."""

    def __init__(self):
        self._d: dict[int, tuple] = {}

    def __getitem__(self, p):
        return self._d[id(p)][1]

    def __setitem__(self, p, value):
        self._d[id(p)] = (p, value)

    def __contains__(self, p):
        return id(p) in self._d

    def __delitem__(self, p):
        del self._d[id(p)]

    def get(self, p, default=None):
        e = self._d.get(id(p))
        return default if e is None else e[1]

    def setdefault(self, p, default):
        if id(p) not in self._d:
            self._d[id(p)] = (p, default)
        return self._d[id(p)][1]

    def items(self):
        return [(p, s) for p, s in self._d.values()]

    def values(self):
        return [s for _, s in self._d.values()]

    def __len__(self):
        return len(self._d)

    def clear(self):
        self._d.clear()


def _host(x):
    """State value -> something engine.save can store: numpy arrays, Python scalars."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, np.generic):
        return x.item()
    return x


# per-parameter state that is one number here but a 0-d tensor in torch's state dicts
_SCALAR_STATE = {"step": int, "mu_product": float}


class Optimizer:
    fused_name: str | None = None      # name looked up in engine.kernels (see _fused.py)

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state = _ParamState()
        self.param_groups: list[dict] = []
        self._scratch: dict = {}
        if hasattr(params, "data") and hasattr(params, "grad"):
            raise TypeError("params must be an iterable of Tensors or of dicts (param groups), "
                            "got a single Tensor; wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, group: dict) -> None:
        if not isinstance(group, dict):
            raise TypeError(f"param group must be a dict, got {type(group).__name__}")
        group = dict(group)
        ps = group["params"]
        ps = [ps] if hasattr(ps, "grad") else list(ps)
        for p in ps:
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__}")
            if not getattr(p, "requires_grad", False):
                raise ValueError("optimizer got a tensor with requires_grad=False; only trainable "
                                 "parameters can be optimized (filter with p.requires_grad)")
            if getattr(p, "_parents", ()):
                raise ValueError("can't optimize a non-leaf Tensor (it was computed from other tensors)")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in ps) or len({id(p) for p in ps}) != len(ps):
            raise ValueError("some parameters appear in more than one parameter group (or twice in one)")
        group["params"] = ps
        for k, v in self.defaults.items():
            if v is required and k not in group:
                raise ValueError(f"parameter group didn't specify a value of required argument {k!r}")
            group.setdefault(k, v)
        self._validate(group)
        self.param_groups.append(group)

    def _validate(self, group: dict) -> None:
        lr = group.get("lr")
        if not isinstance(lr, (int, float)) or lr < 0:
            raise ValueError(f"invalid learning rate: {lr!r} (must be a number >= 0)")
        if group.get("weight_decay", 0) < 0:
            raise ValueError(f"invalid weight_decay value: {group['weight_decay']}")

    @staticmethod
    def _nonnegative(group: dict, *names: str) -> None:
        """PyTorch's argument checks: each named hyper-parameter must be >= 0."""
        for name in names:
            if group[name] < 0:
                raise ValueError(f"invalid {'epsilon' if name == 'eps' else name} value: {group[name]}")

    def _l2_grad(self, p, g, wd: float):
        """(g + wd * p, one scratch array): PyTorch's coupled weight decay, computed in scratch
        memory so p.grad is never modified; the scratch array is free for the update's own use."""
        if wd == 0.0:
            (tmp,) = self._tmp(p)
            return g, tmp
        tmp, tmp2 = self._tmp(p, 2)
        get_array_module(p).multiply(p, wd, out=tmp2)
        tmp2 += g
        return tmp2, tmp

    # ------------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop gradients (set_to_none=True, the default and cheapest) or zero them in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.data.fill(0)

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure() if given."""
        loss = None
        if closure is not None:
            from ..tensor import enable_grad
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if self.fused_name is not None and group.get("fused") is not False and self._try_fused(group, params):
                continue
            for p in params:
                st = self.state.get(p)
                if st is None:
                    st = self._init_state(p, group)
                    self.state[p] = st
                self._update(p.data, p.grad.data, st, group)
        return loss

    def _try_fused(self, group, params) -> bool:
        """Hand the group to engine.kernels' multi-tensor update when allowed (see _fused.py)."""
        from . import _fused
        mode = group.get("fused")
        if mode is None and not _fused.is_gpu(params[0].data):
            return False
        kernel = _fused.lookup(self.fused_name)
        why = None if kernel is not None else "engine.kernels has no fused kernel for it"
        why = why or self._fused_unsupported(group)
        if why is None and not all(p.data.flags.c_contiguous for p in params):
            why = "a parameter is a non-contiguous view (the kernel updates flat memory in place)"
        if why is not None:
            if mode is True:
                raise RuntimeError(f"{type(self).__name__}(fused=True) cannot run fused: {why}; "
                                   "use fused=None (automatic) or fused=False")
            return False
        states = []
        for p in params:
            st = self.state.get(p)
            if st is None:
                st = self._init_state(p, group)
                self.state[p] = st
            states.append(st)
        self._fused_group(kernel, group, params, states)
        return True

    def _fused_unsupported(self, group):
        """None if the fused kernel implements this group's settings, else the reason."""
        return None

    def _fused_group(self, kernel, group, params, states):
        raise NotImplementedError

    @staticmethod
    def _buckets(params, states, key):
        """Group (param, state) pairs by key(param, state): one kernel call per bucket."""
        out = {}
        for p, st in zip(params, states):
            out.setdefault(key(p, st), []).append((p, st))
        return out.items()

    def _init_state(self, p, group) -> dict:
        raise NotImplementedError

    def _update(self, p, g, state, group) -> None:
        raise NotImplementedError

    def _tmp(self, like, n: int = 1):
        """n scratch arrays shaped/typed like `like`, shared across parameters (never returned)."""
        xp = get_array_module(like)
        dev = getattr(getattr(like, "device", None), "id", None)
        key = (xp.__name__, like.dtype.str, dev)
        bufs = self._scratch.get(key)
        if bufs is None or len(bufs) < n or bufs[0].size < like.size:
            size = max(like.size, bufs[0].size if bufs else 0)
            bufs = [xp.empty(size, dtype=like.dtype) for _ in range(max(n, len(bufs) if bufs else 0))]
            self._scratch[key] = bufs
        return [b[:like.size].reshape(like.shape) for b in bufs[:n]]

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> dict:
        """{"state": {index: {name: numpy array or number}}, "param_groups": [{..., "params": [indices]}]}

        Arrays are host copies, so the result can go straight to engine.save and is not
        changed by later steps."""
        index, groups, next_i = {}, [], 0
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index[id(p)] = next_i
                ids.append(next_i)
                next_i += 1
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for p, st in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = {k: _host(v) for k, v in st.items() if v is not None}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and per-parameter state saved by state_dict()."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        params = []
        for i, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"parameter group {i}: loaded state dict has {len(sg['params'])} "
                                 f"parameters, this optimizer has {len(g['params'])}")
            params += list(zip(sg["params"], g["params"]))
        by_index = {int(k): p for k, p in params}
        new_state = _ParamState()
        for k, st in state_dict["state"].items():
            k = int(k)
            if k not in by_index:
                raise ValueError(f"loaded optimizer state refers to parameter index {k}, which no group has")
            p = by_index[k]
            new_state[p] = {name: self._restore_value(p, name, v) for name, v in st.items()}
        for g, sg in zip(self.param_groups, saved_groups):
            for key, v in sg.items():
                if key != "params":
                    g[key] = tuple(v) if isinstance(v, list) and key == "betas" else v
        self.state = new_state

    @staticmethod
    def _restore_value(p, name, v):
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (int, float, bool)) or v is None:
            return v
        xp = get_array_module(p.data)
        arr = v.data if hasattr(v, "grad") else v          # engine Tensor -> array
        if name in _SCALAR_STATE:                            # torch keeps these as 0-d float tensors
            return _SCALAR_STATE[name](np.asarray(arr.get() if hasattr(arr, "get") else arr).item())
        if get_array_module(arr) is not np and xp is np:
            arr = arr.get()
        if tuple(arr.shape) != tuple(p.data.shape):
            raise ValueError(f"optimizer state {name!r} has shape {tuple(arr.shape)}, but its parameter "
                             f"has shape {tuple(p.data.shape)}: the state dict belongs to another model")
        dtype = p.data.dtype if np.dtype(arr.dtype).kind == "f" else arr.dtype
        if xp is np:
            return np.array(arr, dtype=dtype, copy=True)
        from ..backend import to_device
        return to_device(np.asarray(arr), p.device).astype(dtype, copy=True)

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def _check_betas(betas):
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"invalid betas {betas!r}: need two values in [0, 1)")


class MomentsOptimizer(Optimizer):
    """The checks every Adam-style optimizer (two betas, an epsilon) makes on a param group, and
    the first/second moment update they share."""

    @staticmethod
    def _update_moments(xp, g, m, v, beta1: float, beta2: float, tmp) -> None:
        """m += (1 - beta1) (g - m);  v = beta2 v + (1 - beta2) g^2, in place (tmp is scratch)."""
        xp.subtract(g, m, out=tmp)
        tmp *= 1.0 - beta1
        m += tmp
        v *= beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - beta2
        v += tmp

    def _validate(self, group):
        super()._validate(group)
        group["betas"] = tuple(group["betas"])
        _check_betas(group["betas"])
        self._nonnegative(group, "eps")


def _bias_corrections(beta1, beta2, step):
    return 1.0 - beta1 ** step, math.sqrt(1.0 - beta2 ** step)
