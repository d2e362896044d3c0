"""torch.cuda's everyday calls, so `device = "cuda" if torch.cuda.is_available() else "cpu"` and
seeding boilerplate port unchanged.

Availability means what the engine needs to run on a GPU: cupy imports and sees a CUDA device.
"""
from __future__ import annotations

from . import backend

__all__ = ["is_available", "device_count", "current_device", "synchronize", "manual_seed",
           "manual_seed_all"]


def is_available() -> bool:
    return backend.gpu_available()


def device_count() -> int:
    return backend.gpu_count()


def current_device() -> int:
    if not is_available():
        raise RuntimeError("engine.cuda.current_device(): no CUDA device is usable (cupy missing or no GPU)")
    return int(backend.cupy_module().cuda.runtime.getDevice())


def synchronize(device=None) -> None:
    """Wait for the GPU's queued work (timing code calls it); nothing to do without a GPU."""
    if is_available():
        cp = backend.cupy_module()
        if device is None:
            cp.cuda.Device().synchronize()
        else:
            cp.cuda.Device(backend.Device(device).index or 0).synchronize()


def manual_seed(seed: int) -> None:
    """Accepted and ignored: the engine draws random numbers on the CPU from the one generator
    that `engine.manual_seed` seeds, then moves them, so GPU runs need no seed of their own."""


manual_seed_all = manual_seed
