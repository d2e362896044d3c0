"""Keras Layer on top of engine.nn.Module, and the channels-last/first bookkeeping.

A Keras layer is an engine.nn.Module (so parameters(), state_dict(), .to(device),
DistributedDataParallel and engine.optim all work on Keras models), plus what
Keras adds: a name (`dense_1`), lazy `build(input_shape)` that creates weights
from the first input shape, `get_weights()/set_weights()` in Keras layouts, and
input-shape checking with an error that names the layer and both shapes.

Layout.  Keras image tensors are channels-last (N, H, W, C); the engine's conv
and pooling kernels are NCHW.  Inside a Sequential model the activation tensor
carries a layout tag: spatial layers take either layout and return NCHW,
elementwise layers keep whatever they get, and everything else (Flatten, Dense,
softmax, user layers) receives channels-last.  So a Conv-Pool-Conv-Pool stack
transposes once on the way in and once at Flatten, and Flatten still flattens
in Keras' (H, W, C) order, so weights are interchangeable with Keras'.

Masking (Keras 3's protocol).  A mask is a boolean array (batch, timesteps) that travels beside
the activations: Embedding(mask_zero=True) and Masking create one, call() receives it when its
signature names `mask`, a layer with `supports_masking` hands on compute_mask()'s result, and
any other layer drops it with Keras' warning.  Sequential and functional models carry the masks
along their graph; an eagerly called layer finds its input's mask on the tensor (`_keras_mask`)
and leaves its output's there, which is also where fit() finds the mask for the loss.
"""
from __future__ import annotations

import contextlib
import re
import threading
import warnings
import weakref

import numpy as np

from ...backend import get_array_module
from ...tensor import Tensor, from_op
from ... import nn
from .. import initializers

__all__ = ["Layer", "CL", "CF", "to_channels_last", "to_channels_first", "InputShapeError"]

CL, CF = "channels_last", "channels_first"

_name_counts: dict[str, int] = {}


def clear_session():
    """Reset automatic layer names (dense, dense_1, ...), as keras.backend.clear_session()."""
    _name_counts.clear()


def to_snake_case(name: str) -> str:
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def unique_name(base: str) -> str:
    n = _name_counts.get(base, 0)
    _name_counts[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def to_channels_first(x: Tensor) -> Tensor:
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def to_channels_last(x: Tensor) -> Tensor:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def shape_str(shape) -> str:
    """(None, 28, 28, 1); a list of shapes (a layer with several outputs) as [(None, 8), (None, 4)]."""
    if is_shape_list(shape):
        return "[" + ", ".join(shape_str(s) for s in shape) + "]"
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def is_shape_list(shape) -> bool:
    """Several output shapes (Keras: a list of tuples) rather than one shape."""
    return isinstance(shape, list) and bool(shape) and all(isinstance(s, (tuple, list)) for s in shape)


def output_shape_of(shape):
    """compute_output_shape()'s result normalised: a tuple, or a list of tuples for several outputs."""
    return [tuple(s) for s in shape] if is_shape_list(shape) else tuple(shape)


class InputShapeError(ValueError):
    """Data of the wrong shape reached a layer: the message names the layer and both shapes."""


def shapes_compatible(expected, shape) -> bool:
    """Same rank, and equal on every axis where both are known (None matches anything)."""
    return len(expected) == len(shape) and all(e is None or s is None or e == s for e, s in zip(expected, shape))


def _as_shape(shape):
    if shape is None:
        return None
    if isinstance(shape, int):
        return (shape,)
    return tuple(None if s is None else int(s) for s in shape)


def as_tensor_input(x, device=None) -> Tensor:
    """numpy (uint8, float64, ...) / lists / Tensors -> float32 Tensor, as Keras casts its inputs."""
    if isinstance(x, Tensor):
        if x.dtype.kind == "f" and x.dtype != np.float32:
            x = x.astype(np.float32)
        elif x.dtype.kind != "f":
            x = Tensor(x.data.astype(np.float32))
        # a DataLoader's batches are on the CPU: Keras moves inputs to the model's device
        return x.to(device) if device is not None and x.device != device else x
    arr = np.asarray(x) if not hasattr(x, "__cuda_array_interface__") else x
    if arr.dtype.kind in "USO":
        raise TypeError(f"a layer got {'strings' if arr.dtype.kind in 'US' else 'Python objects'} (array of "
                        f"dtype {arr.dtype}, shape {arr.shape}) where it needs numbers; turn text into token ids "
                        "first (layers.TextVectorization / StringLookup on the data, outside the model)")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return Tensor(arr, device=device if device not in (None, "cpu") else None)


_TAKES_TRAINING: dict = {}


def _takes_training(fn) -> bool:
    ok = _TAKES_TRAINING.get(fn)
    if ok is None:
        import inspect
        try:
            params = inspect.signature(fn).parameters
            ok = "training" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            ok = True
        _TAKES_TRAINING[fn] = ok
    return ok


_TAKES_MASK: dict = {}


def _takes_mask(fn) -> bool:
    """Keras passes the mask only to call() signatures that name `mask`."""
    ok = _TAKES_MASK.get(fn)
    if ok is None:
        import inspect
        try:
            ok = "mask" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            ok = False
        _TAKES_MASK[fn] = ok
    return ok


def as_mask(mask, like: Tensor):
    """A mask (numpy, list, Tensor) as a boolean array on the device of `like`, or None."""
    if mask is None:
        return None
    xp = get_array_module(like.data)
    return xp.asarray(mask.data if isinstance(mask, Tensor) else mask).astype(bool, copy=False)


def mask_of(xs):
    """The masks Keras keeps on a list of tensors (`_keras_mask`), or None when none has one."""
    masks = [getattr(t, "_keras_mask", None) for t in xs]
    return masks if any(m is not None for m in masks) else None


def attach_mask(y, mask, inputs=None):
    """Leave `mask` on the output tensor as Keras does, so an eagerly called next layer (or a loss)
    finds it.  An output that is the input tensor itself (an identity layer) becomes a new node
    first, so the caller's tensor keeps its own mask."""
    if not isinstance(y, Tensor):
        return y
    old = getattr(y, "_keras_mask", None)
    if old is mask:
        return y
    if old is not None or y is inputs:
        y = from_op(y.data, (y,), lambda g: (g,), "identity")
    y._keras_mask = mask
    return y


def warn_mask_dropped(layer):
    """Keras 3's warning (keras.src.layers.layer) when a layer without masking support gets a mask."""
    warnings.warn(f"Layer '{layer.name}' (of type {type(layer).__name__}) was passed an input with a mask "
                  "attached to it. However, this layer does not support masking and will therefore destroy "
                  "the mask information. Downstream layers will not see the mask.", UserWarning, stacklevel=3)


def _plain_json(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain_json(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain_json(x) for k, x in v.items())
    return False


def _unique_weights(items):
    """items ((path, weight) pairs or weights) without repeats of the same weight object."""
    seen, out = set(), []
    for item in items:
        w = item[1] if isinstance(item, tuple) else item
        if id(w) not in seen:
            seen.add(id(w))
            out.append(item)
    return out


_forward_state = threading.local()


@contextlib.contextmanager
def name_scope(name):
    """Weights created inside get `name/` in front of their path (a model building its layers:
    Keras 3's "sequential/dense/kernel")."""
    stack = getattr(_forward_state, "scope", None)
    if stack is None:
        stack = _forward_state.scope = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


@contextlib.contextmanager
def training_scope(training):
    """The training flag calls nested inside this one inherit (Keras 3's call context)."""
    prev = getattr(_forward_state, "training", None)
    _forward_state.training = training
    try:
        yield
    finally:
        _forward_state.training = prev


def resolve_training(layer, training) -> bool:
    """Keras 3's order (Layer.__call__, step 5): the `training` argument of this call when given,
    else that of the call it is nested in, else a non-None default of the layer's call() signature
    (True for the random augmentation layers), else False: a layer called on its own, outside fit,
    runs in inference mode (BatchNormalization uses its moving statistics, Dropout passes through)."""
    if training is not None:
        return bool(training)
    outer = getattr(_forward_state, "training", None)
    if outer is not None:
        return outer
    default = layer._training_default
    if default is None and not type(layer).__module__.startswith("engine.keras"):
        default = _signature_training_default(type(layer).call)
    return bool(default)


_SIGNATURE_DEFAULTS: dict = {}


def _signature_training_default(fn):
    if fn not in _SIGNATURE_DEFAULTS:
        import inspect
        try:
            p = inspect.signature(fn).parameters.get("training")
            _SIGNATURE_DEFAULTS[fn] = None if p is None or p.default is inspect.Parameter.empty else p.default
        except (TypeError, ValueError):
            _SIGNATURE_DEFAULTS[fn] = None
    return _SIGNATURE_DEFAULTS[fn]


@contextlib.contextmanager
def forward_pass(layer):
    """Marks one forward pass.  The outermost one clears the add_loss() terms of `layer` and the layers
    inside it (Keras 3's Layer.__call__ does so at its entry call), so `losses` holds the terms of the
    latest pass only; calls nested inside it (sublayers, a layer used twice) add to them."""
    depth = getattr(_forward_state, "depth", 0)
    if depth == 0:
        layer._clear_losses()
    _forward_state.depth = depth + 1
    try:
        yield
    finally:
        _forward_state.depth = depth


class Layer(nn.Module):
    """Base of every Keras layer.  Subclasses define build(), call() and compute_output_shape()."""

    #: rank of the input including the batch axis, when the layer needs a fixed one
    input_ndim: int | None = None
    #: True when the layer's computation is elementwise (layout does not matter)
    layout_agnostic: bool = False
    #: the training flag of a call given none, outside fit (None: Keras' default, inference)
    _training_default = None

    @property
    def supports_masking(self) -> bool:
        """Keras' flag: the layer takes a mask and hands compute_mask()'s result on.  Unless set,
        True exactly when compute_mask() is overridden (Keras 3's default)."""
        s = self.__dict__.get("_supports_masking")
        return self._computes_masks() if s is None else s

    @supports_masking.setter
    def supports_masking(self, value):
        self.__dict__["_supports_masking"] = bool(value)

    def compute_mask(self, inputs, mask=None):
        """The mask of the output (Keras' default: the input's, unchanged)."""
        return mask

    def _computes_masks(self) -> bool:
        """compute_mask() is overridden: the layer may make a mask even when none comes in."""
        return type(self).compute_mask is not Layer.compute_mask

    def __new__(cls, *args, **kwargs):
        # Keras 3's automatic get_config for user layers: remember the constructor arguments
        obj = super().__new__(cls)
        if not cls.__module__.startswith("engine.keras"):
            obj.__dict__["_init_args"] = (args, kwargs)
        return obj

    def __init__(self, trainable=True, name=None, dtype=None, input_shape=None, batch_input_shape=None,
                 input_dim=None, batch_size=None, **kwargs):
        super().__init__()
        kind = type(self).__name__
        # kernel_regularizer=, recurrent_constraint=, activity_regularizer=, ...: kept as attributes
        # of those names (Keras' own); the weights they act on are found by name (_penalty_prefix)
        from .. import constraints, regularizers
        penalties = sorted(k for k in kwargs if k.endswith(("_regularizer", "_constraint")))
        for k in penalties:
            value = kwargs.pop(k)
            getter = regularizers.get if k.endswith("_regularizer") else constraints.get
            try:
                value = getter(value)
            except ValueError as e:
                raise ValueError(f"{kind}: {k}: {e}") from None
            object.__setattr__(self, k, value)
            if value is not None:
                self.__dict__.setdefault("_penalty_args", []).append(k)
        if kwargs:
            raise TypeError(f"{kind}: unexpected keyword argument(s) {', '.join(sorted(kwargs))}")
        if dtype not in (None, "float32", np.float32):
            raise ValueError(f"{type(self).__name__}: only float32 layers are supported, got dtype={dtype!r}")
        self.name = name or unique_name(to_snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        self.built = False
        self._weight_names: list[str] = []
        self._trainable_names: set[str] = set()
        if input_dim is not None and input_shape is None:
            input_shape = (int(input_dim),)
        if batch_input_shape is not None:
            self._batch_input_shape = _as_shape(batch_input_shape)
        elif input_shape is not None:
            self._batch_input_shape = (batch_size,) + _as_shape(input_shape)
        else:
            self._batch_input_shape = None
        self.input_shape_built = None      # (None, ...) shape the layer was built for
        self.output_shape_built = None

    # ------------------------------------------------------------------ weights
    def add_weight(self, name=None, shape=None, initializer=None, trainable=True, dtype=None,
                   regularizer=None, constraint=None, **kwargs):
        """Keras 2 (`add_weight(name, shape, ...)`) and Keras 3 (`add_weight(shape=..., initializer=...,
        name=None)`, shape first when positional) spellings; the default initializer is Keras'
        glorot_uniform.  A weight added without a name takes the attribute it is assigned to
        (`self.w = self.add_weight(shape=...)` is the weight "w")."""
        if name is not None and not isinstance(name, str):        # Keras 3: add_weight((in, out), ...)
            if shape is not None and initializer is None:
                initializer = shape
            name, shape = None, name
        if shape is None:
            raise ValueError(f'layer "{self.name}": add_weight needs shape=(...)')
        from .. import constraints, regularizers
        regularizer, constraint = regularizers.get(regularizer), constraints.get(constraint)
        if dtype not in (None, "float32", np.float32):
            raise ValueError(f'layer "{self.name}": only float32 weights are supported, got dtype={dtype!r}')
        kwargs.pop("autocast", None)
        kwargs.pop("aggregation", None)
        kwargs.pop("synchronization", None)
        kwargs.pop("use_resource", None)
        if kwargs:
            raise TypeError(f"add_weight: unexpected keyword argument(s) {', '.join(sorted(kwargs))}")
        auto = name is None
        if auto:
            name = "variable" if "variable" not in self._weight_names else \
                next(f"variable_{i}" for i in range(1, 10 ** 6) if f"variable_{i}" not in self._weight_names)
        if name in self._weight_names:
            raise ValueError(f'layer "{self.name}": a weight named "{name}" exists already')
        init = initializers.get(initializer if initializer is not None else "glorot_uniform")
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        arr = np.asarray(init(shape, "float32"), dtype=np.float32)
        from ..backend import default_device
        device = default_device()
        if device != "cpu":          # Keras trains on the GPU when there is one (see backend.default_device)
            arr = Tensor(arr, device=device).data
        if trainable:
            t = nn.Parameter(Tensor(arr))
            t.requires_grad = self.trainable
            setattr(self, name, t)
            self._trainable_names.add(name)
        else:
            t = Tensor(arr)
            self.register_buffer(name, t)
        self._weight_names.append(name)
        if auto:
            self.__dict__.setdefault("_auto_weight_names", set()).add(name)
        if regularizer is not None or constraint is not None:      # add_weight(regularizer=, constraint=)
            self.__dict__.setdefault("_weight_penalties", {})[name] = (regularizer, constraint)
        # the optimizer finds the weight's constraint through its layer (keras.constraints.apply_to)
        t.__dict__["_keras_owner"] = (weakref.ref(self), name)
        self._name_weight(t, name)
        return t

    def _name_weight(self, t, name):
        """Keras 3's variable.name ("kernel") and .path ("sequential/dense/kernel")."""
        scope = getattr(_forward_state, "scope", None) or []
        t.__dict__["name"] = name
        t.__dict__["path"] = "/".join([*scope, self.name, name])

    # ------------------------------------------------------------------ regularizers / constraints
    def _penalty_prefix(self, weight_name):
        """Which constructor arguments act on a weight: "kernel" -> kernel_regularizer /
        kernel_constraint, "recurrent_kernel" -> recurrent_*, "depthwise_kernel" -> depthwise_*,
        "embeddings", "gamma", "beta", "bias" -> their own (Keras' names)."""
        if weight_name in ("kernel", "bias", "embeddings", "gamma", "beta"):
            return weight_name
        if weight_name.endswith("_kernel"):
            return weight_name[:-len("_kernel")]
        return None

    def _penalties_of(self, weight_name):
        """(regularizer, constraint) of one of this layer's own weights (either may be None)."""
        own = self.__dict__.get("_weight_penalties", {}).get(weight_name)
        if own is not None:
            return own
        prefix = self._penalty_prefix(weight_name)
        if prefix is None:
            return None, None
        return (self.__dict__.get(f"{prefix}_regularizer"), self.__dict__.get(f"{prefix}_constraint"))

    def _own_penalised_weights(self):
        """(weight, regularizer, constraint) of this layer's trainable weights that have either."""
        out = []
        for name in self._weight_names:
            if name not in self._trainable_names:
                continue
            reg, con = self._penalties_of(name)
            if reg is not None or con is not None:
                out.append((getattr(self, name), reg, con))
        return out

    def apply_constraints(self):
        """Project every constrained weight of this layer and the layers inside it (Keras applies
        the constraints right after each optimizer update; fit does this after every step)."""
        from ..constraints import apply_to
        apply_to(self.trainable_weights)

    def _adopt_weight_name(self, key, value):
        """`self.w = self.add_weight(shape=...)`: rename the unnamed weight to "w"."""
        autos = self.__dict__.get("_auto_weight_names")
        if not autos or key in self._weight_names or not isinstance(value, Tensor):
            return False
        for n in list(autos):
            if getattr(self, n, None) is value:
                autos.discard(n)
                i = self._weight_names.index(n)
                self._weight_names[i] = key
                value.__dict__["_keras_owner"] = (weakref.ref(self), key)
                self._name_weight(value, key)
                pen = self.__dict__.get("_weight_penalties")
                if pen and n in pen:
                    pen[key] = pen.pop(n)
                if n in self._trainable_names:
                    self._trainable_names.discard(n)
                    self._trainable_names.add(key)
                    del self._parameters[n]
                    return False                      # Module.__setattr__ registers the Parameter as key
                del self._buffers[n]
                self.register_buffer(key, value)
                return True
        return False

    # A layer's weights are its own (add_weight) and then those of the layers it holds as attributes
    # (a user layer composed of Dense, MultiHeadAttention, a Sequential ...), as in Keras 3, so
    # count_params(), summary(), fit() and save() see the weights of such a composite layer.
    def _sublayers(self):
        """(attribute, layer) of the layers this layer holds, in assignment order."""
        return [(k, m) for k, m in self._modules.items() if isinstance(m, Layer)]

    def _weight_paths(self):
        """(path, weight) in Keras' weight order: the own weights by name, then each held layer's under
        its attribute name ("att/query_kernel"; a model's layers by position, "ffn/0/kernel"), so the
        paths, which key the saved weights, do not depend on automatic layer names.  A weight reached
        twice (one layer held under two names) counts once."""
        out = [(n, getattr(self, n)) for n in self._weight_names]
        for attr, sub in self._sublayers():
            out += [(f"{attr}/{p}", w) for p, w in sub._weight_paths()]
        return _unique_weights(out)

    @property
    def weights(self):
        return [w for _, w in self._weight_paths()]

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        own = [getattr(self, n) for n in self._weight_names if n in self._trainable_names]
        return _unique_weights(own + [w for _, sub in self._sublayers() for w in sub.trainable_weights])

    @property
    def non_trainable_weights(self):
        if not self.trainable:
            return self.weights
        own = [getattr(self, n) for n in self._weight_names if n not in self._trainable_names]
        return _unique_weights(own + [w for _, sub in self._sublayers() for w in sub.non_trainable_weights])

    # Keras 3 names for the same lists
    @property
    def variables(self):
        return self.weights

    @property
    def trainable_variables(self):
        return self.trainable_weights

    @property
    def non_trainable_variables(self):
        return self.non_trainable_weights

    def __setattr__(self, key, value):
        if key == "trainable" and "_trainable_names" in self.__dict__:
            for n in self._trainable_names:
                getattr(self, n).requires_grad = bool(value)
            for _, sub in self._sublayers():          # Keras 3: freezing a layer freezes what it holds
                sub.trainable = value
        if "_weight_names" in self.__dict__ and self._adopt_weight_name(key, value):
            return
        super().__setattr__(key, value)

    def get_weights(self):
        """The weights as numpy arrays, in Keras' order and layouts (Dense kernel (in, out))."""
        return [np.array(w.numpy(), copy=True) for w in self.weights]

    def set_weights(self, weights):
        weights = list(weights)
        paths = self._weight_paths()
        if len(weights) != len(paths):
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}) has {len(paths)} weights '
                             f"({', '.join(n for n, _ in paths) or 'none'}), got {len(weights)} arrays")
        for (n, w), new in zip(paths, weights):
            new = np.asarray(new)
            if tuple(new.shape) != w.shape:
                raise ValueError(f'layer "{self.name}": weight "{n}" has shape {w.shape}, '
                                 f"got an array of shape {tuple(new.shape)}")
            xp = get_array_module(w.data)
            w.data[...] = xp.asarray(new, dtype=w.dtype)

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f'layer "{self.name}" is not built yet, so it has no weights; call it on '
                             "data or build(input_shape) first")
        return int(sum(w.size for w in self.weights))

    def add_loss(self, loss):
        """Keras 3's add_loss: a scalar (or any) Tensor computed in call(), e.g. an activity
        regularizer.  It stays on the layer until the next outermost call starts (Keras clears the
        losses of the called layer and everything below it at that point); `layer.losses` /
        `model.losses` list the terms of the last forward pass, and fit / evaluate add their sums to
        the compiled loss (training.Model._total_loss), so gradients flow through them."""
        values = list(loss) if isinstance(loss, (list, tuple)) else [loss]
        for v in values:
            if not isinstance(v, Tensor):
                raise ValueError("`add_loss()` can only be called from inside `build()` or `call()`, on a tensor "
                                 f"input. Received invalid value: {v!r}")
        self.__dict__.setdefault("_added_losses", []).extend(values)

    @property
    def losses(self):
        """The add_loss() terms (activity regularizers among them) of this layer and of every layer
        inside it (each layer once), then the weight regularizers' penalties, computed from the
        current weights at each access (so they carry gradients), as Keras 3's Layer.losses."""
        out = []
        for m in self.modules():
            out.extend(m.__dict__.get("_added_losses", ()))
        for m in self.modules():
            if isinstance(m, Layer):
                for w, reg, _ in m._own_penalised_weights():
                    if reg is not None and w.requires_grad:
                        term = reg(w)
                        out.append(term if isinstance(term, Tensor) else Tensor(np.float32(term)))
        return out

    def _clear_losses(self):
        for m in self.modules():
            if m.__dict__.get("_added_losses"):
                m.__dict__["_added_losses"] = []

    def add_metric(self, value, name=None, aggregation=None):
        raise NotImplementedError(
            f'layer "{self.name}": add_metric() is not supported (it was removed in Keras 3); compute the value in '
            "a keras.metrics.Metric subclass passed to compile(metrics=[...]) or in a callback")

    # ------------------------------------------------------------------ build / shapes
    def build(self, input_shape):
        """Create weights for inputs of `input_shape` (batch axis first, may be None)."""

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def expected_input_shape(self):
        """(None, ...) with None for free axes, once built; used for the shape check."""
        if self.input_shape_built is None:
            return None
        return (None,) + (None,) * (len(self.input_shape_built) - 1)

    def _build_for(self, input_shape):
        self.check_input_shape(tuple(input_shape), built=False)
        input_shape = (None,) + tuple(input_shape[1:])
        if not self.built:
            self.build(input_shape)
            self.built = True
            self.input_shape_built = input_shape
        if type(self).compute_output_shape is Layer.compute_output_shape and \
                not type(self).__module__.startswith("engine.keras"):
            out = self._infer_output_shape(input_shape)       # a user layer: run call() as Keras does
        else:
            out = output_shape_of(self.compute_output_shape(input_shape))
        self.output_shape_built = out
        return out

    def _infer_output_shape(self, input_shape):
        """Output shape of a user-defined layer without compute_output_shape(): call it on a batch
        of 2 zero samples (unknown axes as 1), as Keras traces call() symbolically."""
        from ...tensor import no_grad
        probe = np.zeros((2,) + tuple(1 if s is None else s for s in input_shape[1:]), dtype=np.float32)
        with no_grad():
            y = self._call_user(Tensor(probe, device=self._device()), False)
        self._clear_losses()                # the probe's add_loss() terms are no forward pass's
        if not isinstance(y, Tensor):
            raise TypeError(f'layer "{self.name}" ({type(self).__name__}): call() must return one tensor, got '
                            f"{type(y).__name__}")
        unknown = [i for i, s in enumerate(input_shape) if s is None and i > 0]
        out = (None,) + tuple(y.shape[1:])
        if unknown and len(out) == len(input_shape):          # e.g. a free time axis stays free
            out = tuple(None if i in unknown and out[i] == 1 else d for i, d in enumerate(out))
        return out

    def check_input_shape(self, shape, built=True):
        """Raise InputShapeError naming this layer, the expected and the received shape."""
        shape = tuple(shape)
        if self.input_ndim is not None and len(shape) != self.input_ndim:
            expected = self.expected_input_shape() if built and self.built else None
            exp = shape_str(expected) if expected else f"ndim={self.input_ndim} (batch axis included)"
            raise InputShapeError(
                f'Input 0 of layer "{self.name}" ({type(self).__name__}) is incompatible with the layer: '
                f"expected shape={exp}, found shape={shape_str(shape)}{self._shape_hint(shape)}")
        if built and self.built:
            expected = self.expected_input_shape()
            if expected is not None and not shapes_compatible(expected, shape):
                raise InputShapeError(
                    f'Input 0 of layer "{self.name}" ({type(self).__name__}) is incompatible with the '
                    f"layer: expected shape={shape_str(expected)}, found shape={shape_str(shape)}"
                    f"{self._shape_hint(shape)}")

    def _shape_hint(self, shape):
        if self.input_ndim == 4 and len(shape) == 3:
            return (f"; images need a channel axis: reshape x to {shape_str((-1,) + tuple(shape[1:]) + (1,))}"
                    " (channels last)")
        if self.input_ndim == 3 and len(shape) == 4 and shape[-1] == 1:
            return "; sequences are (batch, timesteps, features): drop the trailing channel axis"
        return ""

    # ------------------------------------------------------------------ calling
    def call(self, inputs, training=False):
        raise NotImplementedError(f"{type(self).__name__}.call")

    def forward(self, inputs, training=None):
        return self(inputs, training=training)

    def __call__(self, inputs, training=None, mask=None, **kwargs):
        """Keras semantics: channels-last in and out, numpy accepted, builds on first use; the mask
        is `mask=` or the one on the input tensor, and the output's mask is left on the output.
        On a KerasTensor (functional API) it builds for that shape and returns a KerasTensor."""
        from ..functional import KerasTensor, call_symbolic
        if isinstance(inputs, KerasTensor):
            return call_symbolic(self, inputs)
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], KerasTensor):
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}) takes one input; merge a list of '
                             "tensors with layers.Add / layers.Concatenate first")
        return self._eager_call(inputs, training, mask)

    def _eager_call(self, inputs, training, mask, **call_kwargs):
        """An eager call with the mask found on the input and left on the output(s); call_kwargs
        (a recurrent layer's initial_state) go on to call()."""
        if mask is None:
            mask = getattr(inputs, "_keras_mask", None)
        with forward_pass(self):
            y, out_mask = self._call_masked(inputs, training, mask, **call_kwargs)
        if isinstance(y, list):                     # several outputs (return_state): a mask each
            masks = out_mask if isinstance(out_mask, list) else [out_mask] * len(y)
            return [attach_mask(t, m, inputs) for t, m in zip(y, masks)]
        return attach_mask(y, out_mask, inputs)

    def _call_masked(self, inputs, training, mask, **call_kwargs):
        """One eager call: (inputs, mask) -> (channels-last output, its mask); with several outputs
        a list of each."""
        device = self._device()
        x = inputs if isinstance(inputs, Tensor) else as_tensor_input(inputs, device)
        if x.device != device:          # Keras moves inputs to where the layer's weights are
            x = x.to(device)
        training = resolve_training(self, training)
        if not self.built:
            self._build_for(x.shape)
        else:
            self.check_input_shape(tuple(x.shape))
        with training_scope(training):
            y, layout, out_mask = self.call_internal_masked(x, as_mask(mask, x), CL, training, **call_kwargs)
        return (to_channels_last(y) if layout == CF else y), out_mask

    def call_internal_masked(self, x, mask, layout, training, final_logits=False, **call_kwargs):
        """call_internal under Keras' mask protocol: (x, mask) -> (y, layout, output mask).  Without a
        mask and a compute_mask() of its own, a layer runs exactly as call_internal.  call_kwargs
        (initial_state) go to call() itself.  An activity_regularizer adds its penalty of the output
        here (divided by the batch size, Keras 3)."""
        y, out_layout, out_mask = self._call_internal_masked(x, mask, layout, training, final_logits, **call_kwargs)
        reg = self.__dict__.get("activity_regularizer")
        if reg is not None:
            self._add_activity_loss(reg, y, out_layout, final_logits)
        return y, out_layout, out_mask

    def _add_activity_loss(self, reg, y, layout, final_logits):
        for t in (y if isinstance(y, (list, tuple)) else [y]):
            if not isinstance(t, Tensor):
                continue
            if layout == CF:
                t = to_channels_last(t)
            if final_logits:        # the loss fused this layer's softmax/sigmoid: penalise what Keras sees
                from .. import activations
                t = activations.get(self.output_activation())(t)
            loss = reg(t)
            loss = loss if isinstance(loss, Tensor) else Tensor(np.float32(loss))
            if t.ndim > 0 and t.shape[0]:
                loss = loss / float(t.shape[0])
            self.add_loss(loss)

    def _call_internal_masked(self, x, mask, layout, training, final_logits=False, **call_kwargs):
        if mask is None and not self._computes_masks() and not call_kwargs:
            y, layout = self.call_internal(x, layout, training, final_logits)
            return y, layout, None
        if layout == CF:
            x, layout = to_channels_last(x), CL       # masks index (batch, steps) of the Keras layout
        if (mask is not None and _takes_mask(type(self).call)) or call_kwargs:
            extra = {"final_logits": True} if final_logits else {}
            if mask is not None:
                extra["mask"] = mask
            y, out_layout = self._call_user(x, training, **extra, **call_kwargs), CL
        else:
            y, out_layout = self.call_internal(x, layout, training, final_logits)
        if self.supports_masking:
            out_mask = self.compute_mask(x, mask)
            if isinstance(out_mask, list):          # one per output (return_state)
                return y, out_layout, [as_mask(m, x) for m in out_mask]
            return y, out_layout, as_mask(out_mask, x)
        if mask is not None:
            warn_mask_dropped(self)
        return y, out_layout, None

    def call_internal(self, x, layout, training, final_logits=False):
        """(tensor, layout) -> (tensor, layout). The default converts to channels-last and calls
        `call`; spatial and elementwise layers override this to skip transposes."""
        if layout == CF and not self.layout_agnostic:
            x, layout = to_channels_last(x), CL
        return self._call_user(x, training), layout

    def _call_user(self, x, training, **kwargs):
        """self.call(x, training=...), leaving `training` out when call() does not take it (Keras
        passes it only to call() signatures that have it)."""
        if _takes_training(type(self).call):
            return self.call(x, training=training, **kwargs)
        return self.call(x, **kwargs)

    def output_activation(self):
        """Name of the activation that produces this layer's output, if any (for the fused loss)."""
        return None

    def _device(self):
        """Where this layer's weights are, or will be created (keras.backend.default_device)."""
        for w in self.weights:
            return w.device
        from ..backend import default_device
        return default_device()

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        cfg = {"name": self.name, "trainable": self.trainable}
        if self._batch_input_shape is not None:
            cfg["batch_input_shape"] = list(self._batch_input_shape)
        from .. import constraints, regularizers
        for k in self.__dict__.get("_penalty_args", ()):
            value = self.__dict__.get(k)
            if value is not None:
                cfg[k] = (regularizers.serialize if k.endswith("_regularizer") else constraints.serialize)(value)
        auto = self._auto_config()
        return cfg if auto is None else {**cfg, **auto}

    def _auto_config(self):
        """Keras 3's automatic config of a user layer that does not define get_config(): the arguments
        its constructor was called with, when they are plain JSON values (numbers, strings, lists ...),
        so `TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)` saves and loads unchanged."""
        init_args = self.__dict__.get("_init_args")
        if init_args is None or type(self).get_config is not Layer.get_config:
            return None
        import inspect
        try:
            sig = inspect.signature(type(self).__init__)
            bound = sig.bind(None, *init_args[0], **init_args[1])
        except (TypeError, ValueError):
            return None
        out = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                return None
            items = value.items() if kind is inspect.Parameter.VAR_KEYWORD else [(name, value)]
            for k, v in items:
                if not _plain_json(v):
                    return None
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "batch_input_shape" in config and config["batch_input_shape"] is not None:
            config["batch_input_shape"] = tuple(config["batch_input_shape"])
        import inspect
        try:
            params = inspect.signature(cls.__init__).parameters
        except (TypeError, ValueError):
            params = {}
        if params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            # a user layer whose constructor takes only its own arguments (the Keras tutorials'
            # `def __init__(self, maxlen, vocab_size, embed_dim)`): the base entries are set afterwards
            base = {k: config.pop(k) for k in ("name", "trainable", "batch_input_shape")
                    if k in config and k not in params}
            layer = cls._rebuild(config)
            if "name" in base:
                layer.name = base["name"]
            if "trainable" in base:
                layer.trainable = bool(base["trainable"])
            return layer
        return cls._rebuild(config)

    @classmethod
    def _rebuild(cls, config):
        try:
            return cls(**config)
        except TypeError as e:
            raise TypeError(f"{cls.__name__}.from_config: cannot rebuild the layer from its config {config} ({e}); "
                            "give the class a get_config() that returns its constructor arguments (a layer "
                            "argument as keras.layers.serialize(layer)) and a from_config() that rebuilds them "
                            "(keras.layers.deserialize(...))") from None

    def extra_repr(self):
        return f"name={self.name!r}"

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"
