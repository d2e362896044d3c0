"""keras.backend: the few helpers Keras programs call, and where Keras models keep their weights."""
from __future__ import annotations

import os

from .layers.base import clear_session

__all__ = ["clear_session", "backend", "floatx", "epsilon", "default_device", "set_device"]

_device_override: str | None = None


def default_device() -> str:
    """Where new Keras weights (and so training) go.  Keras uses the first GPU whenever one is
    usable, so a program written for Keras trains on the GPU without a device argument; here the
    same, with `CUDA_VISIBLE_DEVICES=""` or `set_device("cpu")` to keep it on the CPU.  A worker
    started by dptrain's launcher uses the GPU the launcher assigned it (`DPTRAIN_GPU`), or the CPU
    when it was assigned none."""
    if _device_override is not None:
        return _device_override
    from .. import backend as engine_backend
    gpu = os.environ.get("DPTRAIN_GPU")
    if gpu is not None:
        return f"cuda:{int(gpu)}" if gpu.isdigit() and engine_backend.gpu_available() else "cpu"
    return "cuda:0" if engine_backend.gpu_available() else "cpu"


def set_device(device: str | None) -> None:
    """Put the weights of Keras layers created from now on on `device` ("cpu", "cuda:1"); None
    returns to the default (the first GPU when there is one).  Existing models move with
    `model.to(device)`."""
    global _device_override
    if device is not None:
        from .. import backend as engine_backend
        device = str(engine_backend.parse_device(device))
    _device_override = device


def backend():
    return "dptrain"


def floatx():
    return "float32"


def epsilon():
    return 1e-7
