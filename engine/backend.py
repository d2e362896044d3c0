"""Array-module dispatch: the one place that knows numpy from cupy.

Every engine op asks `get_array_module(x)` for the module that owns its data, so
the same op code runs on numpy (CPU) and cupy (GPU) arrays.  cupy is optional and
imported lazily: a CPU-only install never pays for it.
"""
from __future__ import annotations

import re

import numpy

_cupy = None
_cupy_checked = False


def cupy_module():
    """Return the cupy module, or None when it is not installed."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: F401
            _cupy = cupy
        except Exception:  # ImportError, or a broken CUDA install
            _cupy = None
    return _cupy


def gpu_available() -> bool:
    cp = cupy_module()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_cupy_array(x) -> bool:
    # Checked by module name so that numpy-only installs never import cupy.
    return type(x).__module__.startswith("cupy")


def get_array_module(*arrays):
    """numpy, or cupy if any argument is a cupy array (Tensors are unwrapped)."""
    for a in arrays:
        a = getattr(a, "data", a) if not isinstance(a, numpy.ndarray) else a
        if is_cupy_array(a):
            return cupy_module()
    return numpy


_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device) -> str:
    """Normalise a device spec to "cpu" or "cuda:N" (accepts None, "cuda", "gpu", ints)."""
    if device is None:
        return "cpu"
    if isinstance(device, int):
        return f"cuda:{device}"
    d = str(device).strip().lower()
    if d == "gpu":
        d = "cuda"
    m = _DEVICE_RE.match(d)
    if not m:
        raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda:N'")
    if m.group(1) == "cpu":
        if m.group(2) is not None:
            raise ValueError(f"unknown device {device!r}: the CPU device is plain 'cpu'")
        return "cpu"
    return f"cuda:{int(m.group(2) or 0)}"


def device_of(array) -> str:
    if is_cupy_array(array):
        return f"cuda:{array.device.id}"
    return "cpu"


def to_device(array, device: str):
    """Move an array to `device` (a parsed device string); no copy when already there."""
    device = parse_device(device)
    if device == "cpu":
        if is_cupy_array(array):
            return array.get()
        return array
    cp = cupy_module()
    if cp is None:
        raise RuntimeError(
            f"device {device!r} needs cupy, which is not installed: pip install -e '.[gpu]' in the "
            f"dptrain checkout (cupy-cuda12x)")
    dev_id = int(device.split(":")[1])
    if is_cupy_array(array) and array.device.id == dev_id:
        return array
    with cp.cuda.Device(dev_id):
        return cp.asarray(array)


def scatter_add(xp, target, index, values):
    """target[index] += values with repeated indices accumulated (np.add.at / cupyx.scatter_add)."""
    if xp is numpy:
        numpy.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)
    return target
