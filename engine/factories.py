"""Tensor constructors; random ones take `seed=` or `generator=` for reproducibility."""
from __future__ import annotations

import numpy as np

from . import backend
from .random import resolve
from .tensor import DEFAULT_FLOAT, Tensor


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(int(s) for s in shape)


def _make(arr, dtype, device, requires_grad):
    if dtype is not None:
        arr = arr.astype(np.dtype(dtype), copy=False)
    t = Tensor(arr, requires_grad=requires_grad, device=device if device not in (None, "cpu") else None)
    return t


def zeros(*shape, dtype=None, device="cpu", requires_grad=False):
    return _make(np.zeros(_shape(shape), dtype=dtype or DEFAULT_FLOAT), None, device, requires_grad)


def ones(*shape, dtype=None, device="cpu", requires_grad=False):
    return _make(np.ones(_shape(shape), dtype=dtype or DEFAULT_FLOAT), None, device, requires_grad)


def empty(*shape, dtype=None, device="cpu", requires_grad=False):
    return _make(np.empty(_shape(shape), dtype=dtype or DEFAULT_FLOAT), None, device, requires_grad)


def full(shape, fill_value, dtype=None, device="cpu", requires_grad=False):
    if isinstance(shape, int):
        shape = (shape,)
    if dtype is None:
        dtype = DEFAULT_FLOAT if isinstance(fill_value, float) else np.asarray(fill_value).dtype
    return _make(np.full(tuple(shape), fill_value, dtype=dtype), None, device, requires_grad)


def zeros_like(t, dtype=None, requires_grad=False, device=None):
    return zeros(*t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False, device=None):
    return ones(*t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def empty_like(t, dtype=None, requires_grad=False, device=None):
    return empty(*t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad=False, device=None):
    """Keeps t's dtype (an int tensor gets an int fill), as torch does."""
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=device or t.device,
                requires_grad=requires_grad)


def rand_like(t, dtype=None, requires_grad=False, device=None, seed=None, generator=None):
    return rand(*t.shape, dtype=dtype or t.dtype, device=device or t.device,
                requires_grad=requires_grad, seed=seed, generator=generator)


def randn_like(t, dtype=None, requires_grad=False, device=None, seed=None, generator=None):
    return randn(*t.shape, dtype=dtype or t.dtype, device=device or t.device,
                 requires_grad=requires_grad, seed=seed, generator=generator)


def eye(n, m=None, dtype=None, device="cpu", requires_grad=False):
    return _make(np.eye(n, m, dtype=dtype or DEFAULT_FLOAT), None, device, requires_grad)


def linspace(start, end, steps, dtype=None, device="cpu", requires_grad=False):
    """`steps` evenly spaced values from start to end inclusive (float32 unless dtype says)."""
    arr = np.linspace(start, end, int(steps)).astype(dtype or DEFAULT_FLOAT)
    return _make(arr, None, device, requires_grad)


def randperm(n, dtype=np.int64, device="cpu", requires_grad=False, seed=None, generator=None):
    """A random permutation of 0..n-1 from the global generator (engine.manual_seed) unless a
    seed= or numpy generator= is given, so every rank draws the same one."""
    rng = resolve(seed, generator)
    return _make(rng.permutation(int(n)).astype(dtype), None, device, requires_grad)


def arange(start, stop=None, step=1, dtype=None, device="cpu", requires_grad=False):
    if stop is None:
        start, stop = 0, start
    arr = np.arange(start, stop, step)
    if dtype is None and arr.dtype == np.float64:
        arr = arr.astype(DEFAULT_FLOAT)
    return _make(arr, dtype, device, requires_grad)


def randn(*shape, dtype=None, device="cpu", requires_grad=False, seed=None, generator=None):
    rng = resolve(seed, generator)
    arr = rng.standard_normal(_shape(shape), dtype=np.float64).astype(dtype or DEFAULT_FLOAT)
    return _make(arr, None, device, requires_grad)


def rand(*shape, dtype=None, device="cpu", requires_grad=False, seed=None, generator=None):
    rng = resolve(seed, generator)
    arr = rng.random(_shape(shape)).astype(dtype or DEFAULT_FLOAT)
    return _make(arr, None, device, requires_grad)


def randint(low, high=None, size=(), dtype=np.int64, device="cpu", seed=None, generator=None):
    if high is None:
        low, high = 0, low
    rng = resolve(seed, generator)
    return _make(rng.integers(low, high, size=size).astype(dtype), None, device, False)


def from_numpy(arr):
    """Wrap a numpy array without copying (float64 stays float64, as in PyTorch)."""
    return Tensor(arr, dtype=arr.dtype)
