"""Keras weight initializers (names, defaults and fan computation as in Keras).

Keras' defaults differ from PyTorch's (glorot_uniform kernels and zero biases
instead of kaiming-uniform weights and uniform biases); matching them is part of
reproducing Keras' training curves, so the facade never uses the nn defaults.
Kernels are drawn in the Keras layout ((in, out) for Dense, (kh, kw, in, out)
for Conv2D) from the engine's global generator (`keras.utils.set_random_seed`).
"""
from __future__ import annotations

import math

import numpy as np

from ..random import resolve

__all__ = ["Initializer", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "LecunUniform",
           "LecunNormal", "RandomUniform", "RandomNormal", "TruncatedNormal", "Zeros", "Ones",
           "Constant", "Orthogonal", "Identity", "IdentityInitializer", "get", "serialize"]


def compute_fans(shape):
    """(fan_in, fan_out) the way Keras computes them: receptive field x channels."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """Callable: initializer(shape, dtype) -> numpy array."""

    name = "initializer"

    def __init__(self, seed=None):
        self.seed = seed

    def _rng(self):
        return resolve(seed=self.seed)

    def __call__(self, shape, dtype="float32"):
        raise NotImplementedError

    def get_config(self):
        return {"seed": self.seed}

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class Zeros(Initializer):
    name = "zeros"

    def __init__(self):
        super().__init__(None)

    def __call__(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)

    def get_config(self):
        return {}


class Ones(Zeros):
    name = "ones"

    def __call__(self, shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)


class Constant(Initializer):
    name = "constant"

    def __init__(self, value=0.0):
        super().__init__(None)
        self.value = float(value)

    def __call__(self, shape, dtype="float32"):
        return np.full(shape, self.value, dtype=dtype)

    def get_config(self):
        return {"value": self.value}


class RandomUniform(Initializer):
    name = "random_uniform"

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)

    def __call__(self, shape, dtype="float32"):
        return self._rng().uniform(self.minval, self.maxval, size=shape).astype(dtype)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class RandomNormal(Initializer):
    name = "random_normal"

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def __call__(self, shape, dtype="float32"):
        return self._rng().normal(self.mean, self.stddev, size=shape).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


def _truncated_normal(rng, shape, stddev):
    """Normal(0, stddev) redrawn outside two standard deviations (as Keras/TF do)."""
    size = int(np.prod(shape)) if len(shape) else 1
    out = rng.standard_normal(size)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return (out * stddev).reshape(shape)


class TruncatedNormal(RandomNormal):
    name = "truncated_normal"

    def __call__(self, shape, dtype="float32"):
        return (self.mean + _truncated_normal(self._rng(), tuple(shape), self.stddev)).astype(dtype)


class VarianceScaling(Initializer):
    """The family behind glorot_*, he_* and lecun_* (Keras semantics, including the
    0.8796... correction that keeps a truncated normal's variance at `scale / n`)."""

    name = "variance_scaling"

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"VarianceScaling: mode must be fan_in, fan_out or fan_avg, got {mode!r}")
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform", "normal"):
            raise ValueError(f"VarianceScaling: unknown distribution {distribution!r}")
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        rng = self._rng()
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * scale)
            return rng.uniform(-limit, limit, size=shape).astype(dtype)
        if self.distribution in ("untruncated_normal", "normal"):
            return rng.normal(0.0, math.sqrt(scale), size=shape).astype(dtype)
        stddev = math.sqrt(scale) / 0.87962566103423978
        return _truncated_normal(rng, tuple(shape), stddev).astype(dtype)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                "seed": self.seed}


def _preset(cls_name, scale, mode, distribution, keras_name):
    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return {"seed": self.seed}
    return type(cls_name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config,
                                               "name": keras_name,
                                               "__doc__": f"Keras '{keras_name}'."})


GlorotUniform = _preset("GlorotUniform", 1.0, "fan_avg", "uniform", "glorot_uniform")
GlorotNormal = _preset("GlorotNormal", 1.0, "fan_avg", "truncated_normal", "glorot_normal")
HeUniform = _preset("HeUniform", 2.0, "fan_in", "uniform", "he_uniform")
HeNormal = _preset("HeNormal", 2.0, "fan_in", "truncated_normal", "he_normal")
LecunUniform = _preset("LecunUniform", 1.0, "fan_in", "uniform", "lecun_uniform")
LecunNormal = _preset("LecunNormal", 1.0, "fan_in", "truncated_normal", "lecun_normal")


class Orthogonal(Initializer):
    """Keras 'orthogonal' (LSTM recurrent kernels): QR of a normal matrix, sign-fixed."""

    name = "orthogonal"

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = float(gain)

    def __call__(self, shape, dtype="float32"):
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"orthogonal initializer needs a shape of rank >= 2, got {shape}")
        rows = int(np.prod(shape[:-1]))
        cols = shape[-1]
        a = self._rng().normal(0.0, 1.0, size=(max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q[:rows, :cols]).reshape(shape).astype(dtype)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


class Identity(Initializer):
    """Keras 'identity' (IdentityInitializer): gain * the identity matrix, for 2-D weights."""

    name = "identity"

    def __init__(self, gain=1.0):
        super().__init__(None)
        self.gain = float(gain)

    def __call__(self, shape, dtype="float32"):
        shape = tuple(shape)
        if len(shape) != 2:
            raise ValueError(f"Identity matrix initializer can only be used for 2D matrices. Received: shape={shape}")
        return (self.gain * np.eye(*shape)).astype(dtype)

    def get_config(self):
        return {"gain": self.gain}


IdentityInitializer = Identity

_BY_NAME = {c.name: c for c in (Zeros, Ones, Constant, RandomUniform, RandomNormal, TruncatedNormal,
                                VarianceScaling, GlorotUniform, GlorotNormal, HeUniform, HeNormal,
                                LecunUniform, LecunNormal, Orthogonal, Identity)}
_ALIASES = {"zero": "zeros", "one": "ones", "uniform": "random_uniform", "normal": "random_normal"}


def get(identifier):
    """'glorot_uniform' | Initializer | {'class_name': ..., 'config': ...} -> Initializer."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, dict):
        name = identifier.get("class_name", "")
        cls = _BY_NAME.get(name) or next((c for c in _BY_NAME.values() if c.__name__ == name), None)
        if cls is None:
            raise ValueError(f"unknown initializer {name!r}; known: {sorted(_BY_NAME)}")
        return cls(**identifier.get("config", {}))
    if isinstance(identifier, str):
        key = _ALIASES.get(identifier.lower(), identifier.lower())
        if key not in _BY_NAME:
            camel = next((c for c in _BY_NAME.values() if c.__name__ == identifier), None)
            if camel is not None:
                return camel()
            raise ValueError(f"unknown initializer {identifier!r}; known: {sorted(_BY_NAME)}")
        return _BY_NAME[key]()
    if callable(identifier):
        return identifier
    raise TypeError(f"cannot interpret {identifier!r} as an initializer")


def serialize(init):
    """JSON form of an initializer (for model configs)."""
    if isinstance(init, Initializer):
        return {"class_name": init.name, "config": init.get_config()}
    raise TypeError(f"cannot save a model whose initializer is the plain callable {init!r}; "
                    "use a keras.initializers.* object or name")
