"""Module: the container every layer derives from, plus Sequential / ModuleList / ModuleDict and
ParameterList / ParameterDict.

The bookkeeping follows torch.nn.Module on purpose: parameters, buffers and
sub-modules live in three ordered dicts filled by attribute assignment, and
state_dict() walks them in registration order with dotted prefixes.  That order
and those names are what make a PyTorch state_dict (converted to numpy) load here
unchanged, and what DistributedDataParallel relies on to pair gradients across
ranks.
"""
from __future__ import annotations

import itertools
import operator
from collections import OrderedDict, namedtuple

import numpy as np

from .. import backend
from ..tensor import Tensor
from .parameter import Parameter


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What load_state_dict(strict=False) could not match (same fields as torch's)."""

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()


class StateDictError(RuntimeError):
    """load_state_dict could not apply a state dict; the message lists every problem."""


class _HookHandle:
    """Returned by register_forward_hook / register_forward_pre_hook; remove() unregisters."""

    def __init__(self, table, key):
        self._table, self._key = table, key

    def remove(self):
        self._table.pop(self._key, None)


def _addindent(s, n):
    lines = s.split("\n")
    if len(lines) == 1:
        return s
    return lines[0] + "\n" + "\n".join(" " * n + line for line in lines[1:])


def _parse_to_args(args, kwargs):
    """Module.to(device) / to(dtype) / to(device, dtype) / to(tensor) -> (device, dtype)."""
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    if kwargs:
        raise TypeError(f"to() got unexpected arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, Tensor):
            device, dtype = a.device, a.dtype
        elif isinstance(a, (int,)) and not isinstance(a, bool):
            device = a
        elif isinstance(a, str) and (a.split(":")[0].lower() in ("cpu", "cuda", "gpu")):
            device = a
        elif a is not None:
            dtype = a
    return device, (np.dtype(dtype) if dtype is not None else None)


class Module:
    """Base class of layers and models: owns parameters, buffers and sub-modules."""

    training: bool

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() got unexpected arguments")
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent_buffers"] = set()
        d["_modules"] = OrderedDict()
        d["_forward_hooks"] = OrderedDict()
        d["_forward_pre_hooks"] = OrderedDict()

    # ------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward(); define forward(self, ...)")

    def __call__(self, *args, **kwargs):
        if self._forward_pre_hooks:
            for hook in list(self._forward_pre_hooks.values()):
                r = hook(self, args)
                if r is not None:
                    args = r if isinstance(r, tuple) else (r,)
        out = self.forward(*args, **kwargs)
        if self._forward_hooks:
            for hook in list(self._forward_hooks.values()):
                r = hook(self, args, out)
                if r is not None:
                    out = r
        return out

    _hook_ids = itertools.count()

    def register_forward_hook(self, hook):
        """hook(module, inputs, output) runs after forward; a non-None return replaces the output."""
        return self._add_hook(self._forward_hooks, hook)

    def register_forward_pre_hook(self, hook):
        """hook(module, inputs) runs before forward; a non-None return replaces the inputs."""
        return self._add_hook(self._forward_pre_hooks, hook)

    def _add_hook(self, table, hook):
        key = next(Module._hook_ids)
        table[key] = hook
        return _HookHandle(table, key)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        d = self.__dict__
        params = d.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            self._discard(name)
            params[name] = value
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter '{name}' "
                                "(an engine.nn.Parameter or None is required)")
            params[name] = None
        elif isinstance(value, Module):
            mods = d.get("_modules")
            if mods is None:
                raise AttributeError("cannot assign modules before Module.__init__() call")
            self._discard(name)
            mods[name] = value
        elif d.get("_modules") is not None and name in d["_modules"]:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module '{name}' "
                                "(a Module or None is required)")
            d["_modules"][name] = None
        elif d.get("_buffers") is not None and name in d["_buffers"]:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer '{name}' "
                                "(a Tensor or None is required)")
            d["_buffers"][name] = value
        else:
            object.__setattr__(self, name, value)

    def _discard(self, name):
        d = self.__dict__
        d.pop(name, None)
        for table in ("_parameters", "_buffers", "_modules"):
            t = d.get(table)
            if t is not None and name in t:
                del t[name]
        d["_non_persistent_buffers"].discard(name)

    def __getattr__(self, name):
        # Only called when normal lookup fails: parameters, buffers and modules live in their dicts.
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            t = d.get(table)
            if t is not None and name in t:
                return t[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if name in d.get(table, ()):
                del d[table][name]
                d["_non_persistent_buffers"].discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    def register_parameter(self, name: str, param):
        if "." in name or not name:
            raise KeyError(f"parameter name must be a non-empty string without '.', got {name!r}")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot register {type(param).__name__} as parameter '{name}' "
                            "(wrap it in engine.nn.Parameter)")
        self._discard(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor, persistent: bool = True):
        """State that is saved and moved with the module but not trained (running stats ...)."""
        if "." in name or not name:
            raise KeyError(f"buffer name must be a non-empty string without '.', got {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor)
        self._discard(name)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        if "." in name or not name:
            raise KeyError(f"module name must be a non-empty string without '.', got {name!r}")
        self._discard(name)
        self._modules[name] = module

    register_module = add_module

    def get_submodule(self, target: str) -> "Module":
        mod = self
        if target == "":
            return mod
        for item in target.split("."):
            if item not in mod._modules or mod._modules[item] is None:
                raise AttributeError(f"{type(mod).__name__} has no submodule '{item}' (looking up '{target}')")
            mod = mod._modules[item]
        return mod

    def get_parameter(self, target: str) -> Parameter:
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._parameters:
            raise AttributeError(f"{type(mod).__name__} has no parameter '{name}'")
        return mod._parameters[name]

    # ------------------------------------------------------------ iteration
    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            sub = prefix + ("." if prefix else "") + name
            yield from m.named_modules(memo, sub, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, get_members, prefix="", recurse=True, remove_duplicate=True):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse \
            else [(prefix, self)]
        for mod_prefix, mod in mods:
            for k, v in get_members(mod):
                if v is None:
                    continue
                if remove_duplicate:
                    if id(v) in seen:
                        continue
                    seen.add(id(v))
                yield mod_prefix + ("." if mod_prefix else "") + k, v

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """(dotted name, Parameter) pairs, each shared parameter once, in registration order."""
        yield from self._named_members(lambda m: m._parameters.items(), prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from self._named_members(lambda m: m._buffers.items(), prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ------------------------------------------------------------ state
    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        """OrderedDict name -> Tensor: each module's parameters then persistent buffers, then its
        children, recursively (PyTorch's order and names).  Values share memory with the module."""
        if destination is None:
            destination = OrderedDict()
        for name, p in self._parameters.items():
            if p is not None:
                destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers:
                destination[prefix + name] = b if keep_vars else b.detach()
        for name, m in self._modules.items():
            if m is not None:
                m.state_dict(destination=destination, prefix=prefix + name + ".", keep_vars=keep_vars)
        return destination

    def _state_slots(self):
        """name -> (owning module, table, key) for every entry state_dict() would produce."""
        slots = OrderedDict()
        for mod_prefix, mod in self.named_modules(remove_duplicate=False):
            pre = mod_prefix + "." if mod_prefix else ""
            for k, p in mod._parameters.items():
                if p is not None:
                    slots[pre + k] = (mod, "_parameters", k)
            for k, b in mod._buffers.items():
                if b is not None and k not in mod._non_persistent_buffers:
                    slots[pre + k] = (mod, "_buffers", k)
        return slots

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Copy values (Tensors, numpy arrays, anything np.asarray accepts, e.g. CPU torch tensors) into
        this module's parameters and buffers, in place.

        Shape mismatches always fail; with strict=True missing and unexpected keys fail too.  One error
        lists every problem.  Returns (missing_keys, unexpected_keys).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict expects a mapping of name -> array, got {type(state_dict).__name__}")
        slots = self._state_slots()
        missing = [k for k in slots if k not in state_dict]
        unexpected = [k for k in state_dict if k not in slots]
        mismatched, converted = [], {}
        for key, value in state_dict.items():
            if key not in slots:
                continue
            mod, table, name = slots[key]
            target = getattr(mod, table)[name]
            arr = _to_numpy_like(value)
            if tuple(arr.shape) != target.shape:
                mismatched.append((key, target.shape, tuple(arr.shape)))
                continue
            converted[key] = arr
        problems = []
        if mismatched:
            problems.append("size mismatch:\n" + "\n".join(
                f"    {k}: expected shape {exp}, got {got}" for k, exp, got in mismatched))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(repr(k) for k in missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(repr(k) for k in unexpected))
        if problems:
            hint = ("" if not (missing or unexpected) or not strict else
                    "\n  (pass strict=False to load the matching keys only)")
            raise StateDictError(f"Error(s) in loading state_dict for {type(self).__name__}:\n  "
                                 + "\n  ".join(problems) + hint)
        for key, arr in converted.items():
            mod, table, name = slots[key]
            target = getattr(mod, table)[name]
            arr = backend.to_device(arr, target.device)        # CPU <-> GPU as the target needs
            if assign:
                target.data = arr.astype(target.dtype, copy=True)
            else:
                target.data[...] = arr.astype(target.dtype, copy=False)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ modes and devices
    def train(self, mode: bool = True):
        if not isinstance(mode, bool):
            raise ValueError("train(mode) expects a bool")
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True):
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def _apply_arrays(self, fn):
        """Replace the array of every parameter, gradient and buffer in place (identity preserved)."""
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = fn(p.data)
                    if p.grad is not None:
                        p.grad.data = fn(p.grad.data)
            for b in m._buffers.values():
                if b is not None:
                    b.data = fn(b.data)
        return self

    def to(self, *args, **kwargs):
        """to(device), to(dtype), to(device, dtype): moves/casts parameters and buffers in place
        (integer buffers such as num_batches_tracked keep their dtype)."""
        device, dtype = _parse_to_args(args, kwargs)
        if dtype is not None and dtype.kind != "f":
            raise TypeError(f"Module.to only accepts floating point dtypes, got {dtype}")

        def convert(a):
            if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
                a = a.astype(dtype)
            if device is not None:
                a = backend.to_device(a, backend.parse_device(device))
            return a
        return self._apply_arrays(convert)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=0):
        return self.to(f"cuda:{device}" if isinstance(device, int) else device)

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def half(self):
        return self.to(np.float16)

    # ------------------------------------------------------------ repr
    def extra_repr(self) -> str:
        return ""

    def _get_name(self):
        return type(self).__name__

    def __repr__(self):
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        for name, m in self._modules.items():
            lines.append(f"({name}): " + _addindent(repr(m), 2))
        main = self._get_name() + "("
        if lines:
            if len(lines) == 1 and not self._modules:
                main += lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"


def _to_numpy_like(value):
    """A state_dict value as an array (numpy or cupy kept as-is); torch tensors go through numpy."""
    if isinstance(value, Tensor):
        return value.data
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):     # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _fusable_conv_relu_pool(a, b, c, x) -> bool:
    """Conv2d -> ReLU -> MaxPool2d(2) without hooks on numpy data: run as one fused op.

    The fused op computes exactly what the three modules compute (values and gradients); it
    only skips materialising the two large intermediate activations.  Hooks, other pooling
    settings, subclasses or GPU arrays fall back to calling the modules one by one.
    """
    from .activation import ReLU
    from .conv import Conv2d
    from .pooling import MaxPool2d
    if type(a) is not Conv2d or type(b) is not ReLU or type(c) is not MaxPool2d:
        return False
    if a.groups != 1 or a.padding_mode != "zeros":
        return False
    two = (2, 2)
    if _as_pair(c.kernel_size) != two or _as_pair(c.stride) != two or _as_pair(c.padding) != (0, 0) \
            or _as_pair(c.dilation) != (1, 1) or c.ceil_mode or c.return_indices:
        return False
    for m in (a, b, c):
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    data = getattr(x, "data", None)
    return isinstance(data, np.ndarray) and isinstance(a.weight.data, np.ndarray)


def _as_pair(v):
    if isinstance(v, int):
        return (v, v)
    try:
        t = tuple(int(e) for e in v)
    except TypeError:
        return None
    return t * 2 if len(t) == 1 else t


class _ModuleSequence(Module):
    """List behaviour shared by Sequential and ModuleList: children named 0, 1, ... in order."""

    def _idx(self, idx):
        n = len(self._modules)
        idx = operator.index(idx)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for {type(self).__name__} of length {n}")
        return idx % n

    def _renumber(self, items):
        self._modules.clear()
        for i, m in enumerate(items):
            self.add_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        items = list(self._modules.values())
        items.insert(index, module)
        self._renumber(items)
        return self


class Sequential(_ModuleSequence):
    """Sequential(*modules) or Sequential(OrderedDict): applies the modules in order."""

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, m in args[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)

    def forward(self, x):
        mods = list(self._modules.values())
        i, n = 0, len(mods)
        while i < n:
            if i + 2 < n and _fusable_conv_relu_pool(mods[i], mods[i + 1], mods[i + 2], x):
                x = mods[i].forward_relu_max_pool2d(x)
                i += 3
                continue
            x = mods[i](x)
            i += 1
        return x

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(OrderedDict(list(self._modules.items())[idx]))
        if isinstance(idx, str):
            return self._modules[idx]
        return list(self._modules.values())[self._idx(idx)]

    def __setitem__(self, idx, module):
        key = list(self._modules.keys())[self._idx(idx)]
        self.add_module(key, module)

    def __delitem__(self, idx):
        keys = list(self._modules.keys())
        if isinstance(idx, slice):
            for k in keys[idx]:
                del self._modules[k]
        else:
            del self._modules[keys[self._idx(idx)]]
        # re-number so indices stay 0..n-1, as torch does
        self._renumber(list(self._modules.values()))



class ModuleList(_ModuleSequence):
    """A list of modules whose parameters are registered (named 0, 1, ...)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[str(self._idx(idx))]

    def __setitem__(self, idx, module):
        self.add_module(str(self._idx(idx)), module)

    def __delitem__(self, idx):
        items = list(self._modules.values())
        if isinstance(idx, slice):
            del items[idx]
        else:
            del items[self._idx(idx)]
        self._renumber(items)

    def __iadd__(self, modules):
        return self.extend(modules)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList is a container: iterate over it and call its modules")


class ModuleDict(Module):
    """A dict of modules whose parameters are registered under their keys."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def update(self, modules):
        items = modules.items() if hasattr(modules, "items") else modules
        for k, m in items:
            self.add_module(k, m)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleDict is a container: look modules up by key and call them")


def _as_parameter(value, owner):
    """Tensors and arrays put into a ParameterList/Dict become Parameters (sharing the array), as in torch."""
    if isinstance(value, Parameter):
        return value
    if isinstance(value, Tensor):
        return Parameter(value)
    if isinstance(value, np.ndarray) or backend.is_cupy_array(value):
        return Parameter(Tensor(value))
    raise TypeError(f"{owner} holds parameters (Parameter, Tensor or array), got {type(value).__name__}")


class ParameterList(Module):
    """A list of Parameters registered under '0', '1', ... (state_dict keys 'name.0', ...), as torch's."""

    def __init__(self, values=None):
        super().__init__()
        if values is not None:
            self.extend(values)

    def _idx(self, idx):
        n = len(self._parameters)
        idx = operator.index(idx)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for ParameterList of length {n}")
        return idx % n

    def __len__(self):
        return len(self._parameters)

    def __iter__(self):
        return iter(self._parameters.values())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return ParameterList(list(self._parameters.values())[idx])
        return self._parameters[str(self._idx(idx))]

    def __setitem__(self, idx, param):
        self.register_parameter(str(self._idx(idx)), _as_parameter(param, "ParameterList"))

    def append(self, value):
        self.register_parameter(str(len(self)), _as_parameter(value, "ParameterList"))
        return self

    def extend(self, values):
        for v in values:
            self.append(v)
        return self

    def __iadd__(self, values):
        return self.extend(values)

    def extra_repr(self):
        return "\n".join(f"({i}): Parameter containing: [{p.dtype} of size {'x'.join(map(str, p.shape))}]"
                         for i, p in enumerate(self))

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ParameterList is a container: index it to get its parameters")


class ParameterDict(Module):
    """A dict of Parameters registered under their keys (state_dict keys 'name.key'), as torch's."""

    def __init__(self, parameters=None):
        super().__init__()
        if parameters is not None:
            self.update(parameters)

    def __getitem__(self, key):
        return self._parameters[key]

    def __setitem__(self, key, value):
        self.register_parameter(key, _as_parameter(value, "ParameterDict"))

    def __delitem__(self, key):
        del self._parameters[key]

    def __len__(self):
        return len(self._parameters)

    def __iter__(self):
        return iter(self._parameters)

    def __contains__(self, key):
        return key in self._parameters

    def keys(self):
        return self._parameters.keys()

    def values(self):
        return self._parameters.values()

    def items(self):
        return self._parameters.items()

    def get(self, key, default=None):
        return self._parameters.get(key, default)

    def pop(self, key):
        return self._parameters.pop(key)

    def update(self, parameters):
        items = parameters.items() if hasattr(parameters, "items") else parameters
        for k, v in items:
            self[k] = v

    def extra_repr(self):
        return "\n".join(f"({k}): Parameter containing: [{p.dtype} of size {'x'.join(map(str, p.shape))}]"
                         for k, p in self.items())

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ParameterDict is a container: look parameters up by key")
