"""torch.accelerator (PyTorch 2.6+): the device-generic calls newer examples select their device
with (`device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else
torch.device("cpu")`).  The engine's only accelerator is CUDA through cupy."""
from __future__ import annotations

from . import backend, cuda

__all__ = ["is_available", "current_accelerator", "device_count", "current_device_index",
           "synchronize"]


def is_available() -> bool:
    return cuda.is_available()


def device_count() -> int:
    return cuda.device_count()


def current_accelerator(check_available: bool = False):
    """`engine.device("cuda")` when a GPU is usable, else None (torch's answer without one)."""
    if not is_available():
        return None
    return backend.Device("cuda")


def current_device_index() -> int:
    return cuda.current_device() if is_available() else -1


def synchronize(device=None) -> None:
    cuda.synchronize(device)
