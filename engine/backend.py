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


def gpu_count() -> int:
    """CUDA devices cupy can use (0 without cupy, a driver, or a device)."""
    cp = cupy_module()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def gpu_available() -> bool:
    return gpu_count() > 0


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


class Device(str):
    """torch.device for ported code: `Device("cuda")`, `Device("cuda", 1)`, `.type`, `.index`.

    It *is* the engine's device string ("cpu" or "cuda:N", "cuda" meaning "cuda:0"), so
    `x.to(device)`, `x.device == device`, `device == "cpu"`, f-strings and JSON all keep working."""

    def __new__(cls, type, index=None):
        if isinstance(type, Device) and index is None:
            return type
        return super().__new__(cls, parse_device(type if index is None else f"{type}:{index}"))

    @property
    def type(self) -> str:
        return self.partition(":")[0]

    @property
    def index(self):
        return int(self.partition(":")[2]) if ":" in self else None


_devices: dict = {}


def device_of(array) -> Device:
    name = f"cuda:{array.device.id}" if is_cupy_array(array) else "cpu"
    dev = _devices.get(name)
    if dev is None:
        dev = _devices[name] = Device(name)
    return dev


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
